//! The directory of unique plugin copies that are actually loaded.
//!
//! glibc matches an already-loaded library by path and inode, and overwriting a mapped file
//! crashes the process, so every build is copied to `<dir>/<stem>-<pid>-<n>.so` and loaded from
//! there. Copies stay mapped until exit (abi_stable never unloads); copies of dead hosts are
//! removed at start-up.
//!
//! **Architecture Invariant:** what is loaded is exactly what was checked. The directory is
//! private (0700, ours, not a symlink, else refused); each copy is created new (`O_EXCL`, no
//! symlink followed) and written through the descriptor that is then loaded
//! (`/proc/self/fd/N`): swapping the file by name between the check and `dlopen` changes
//! nothing. Those descriptors stay open for the life of the process (like the libraries), so a
//! `/proc/self/fd/N` name is never reused for another build.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One build, copied and ready to load.
pub struct Copy {
    /// Where the copy lives (for messages).
    pub path: PathBuf,
    /// What to hand to `dlopen`: the open descriptor of the copy.
    pub load_path: PathBuf,
    /// The bytes written (what the ELF check reads).
    pub bytes: Vec<u8>,
    /// The copy, open (read and write, close-on-exec): what `load_path` names, and what a
    /// worker process is handed. Whoever `dlopen`s `load_path` in this process must never
    /// close it (`into_raw_fd`): glibc finds libraries by name, so the name `/proc/self/fd/N`
    /// must not come back for another build.
    pub fd: OwnedFd,
}

pub struct CopyDir {
    dir: PathBuf,
    counter: AtomicU64,
}

impl CopyDir {
    /// Creates (or reuses) `dir` — which must be private to this user — and removes copies
    /// left by earlier runs of the host.
    pub fn open(dir: &Path) -> std::io::Result<CopyDir> {
        crate::private::private_dir(dir, "plugin copy directory")?;
        let me = std::process::id();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Only our own naming scheme, and never a live process's copies.
            if let Some(pid) = copy_owner_pid(&name) {
                if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(CopyDir {
            dir: dir.to_owned(),
            counter: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies `source` to a new unique file, created and written through one descriptor that
    /// stays open (see the module docs).
    pub fn copy_in(&self, source: &Path) -> std::io::Result<Copy> {
        let bytes = std::fs::read(source)?;
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let dest = self
                .dir
                .join(format!("{stem}-myagent{}-{n}.so", std::process::id()));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o700)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&dest);
            let mut file: File = match file {
                Ok(f) => f,
                // A leftover of ours with this name: take the next number.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            file.write_all(&bytes)?;
            file.sync_data()?;
            let fd = OwnedFd::from(file);
            return Ok(Copy {
                path: dest,
                load_path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                bytes,
                fd,
            });
        }
    }
}

/// `libx-myagent1234-7.so` → Some(1234).
fn copy_owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_suffix(".so")?;
    let (before, _n) = rest.rsplit_once('-')?;
    let (_, pid) = before.rsplit_once("-myagent")?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_directory_must_be_private_and_ours() {
        let base = std::env::temp_dir().join(format!("copies-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        // Created 0700.
        let d = base.join("new");
        CopyDir::open(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Ours but world-writable: closed to 0700.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        CopyDir::open(&open).unwrap();
        assert_eq!(
            std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A symlink (to a directory someone else could have planted) is refused, as is a
        // relative path.
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(CopyDir::open(&link).is_err());
        assert!(CopyDir::open(Path::new("relative/dir")).is_err());
        // A copy is loaded through its descriptor; a file planted under the next name is
        // neither followed nor overwritten.
        let src = base.join("libx.so");
        std::fs::write(&src, b"\x7fELF...").unwrap();
        let dir = CopyDir::open(&d).unwrap();
        let planted = d.join(format!("libx-myagent{}-1.so", std::process::id()));
        std::os::unix::fs::symlink("/etc/passwd", &planted).unwrap();
        let a = dir.copy_in(&src).unwrap();
        let b = dir.copy_in(&src).unwrap();
        assert!(a.load_path.starts_with("/proc/self/fd/"));
        assert_ne!(b.path, planted);
        assert_eq!(std::fs::read(&b.load_path).unwrap(), b"\x7fELF...");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn parses_owner_pid() {
        assert_eq!(
            copy_owner_pid("libweather_agent-myagent1234-7.so"),
            Some(1234)
        );
        assert_eq!(copy_owner_pid("libweather_agent.so"), None);
        assert_eq!(copy_owner_pid("notes.txt"), None);
    }
}
