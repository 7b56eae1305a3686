//! The directory of unique plugin copies that are actually loaded.
//!
//! glibc matches an already-loaded library by path and inode, and overwriting a mapped file
//! crashes the process, so every build is copied to `<dir>/<stem>-<pid>-<n>.so` and loaded from
//! there. Copies stay mapped until exit (abi_stable never unloads); the directory of this
//! process's copies is emptied at start-up of the next run with the same pid-less prefix.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct CopyDir {
    dir: PathBuf,
    counter: AtomicU64,
}

impl CopyDir {
    /// Creates (or reuses) `dir` and removes copies left by earlier runs of the host.
    pub fn open(dir: &Path) -> std::io::Result<CopyDir> {
        std::fs::create_dir_all(dir)?;
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

    /// Copies `source` to a new unique path and returns it.
    pub fn copy_in(&self, source: &Path) -> std::io::Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let dest = self
            .dir
            .join(format!("{stem}-myagent{}-{n}.so", std::process::id()));
        std::fs::copy(source, &dest)?;
        Ok(dest)
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
    #[test]
    fn parses_owner_pid() {
        assert_eq!(
            super::copy_owner_pid("libweather_agent-myagent1234-7.so"),
            Some(1234)
        );
        assert_eq!(super::copy_owner_pid("libweather_agent.so"), None);
        assert_eq!(super::copy_owner_pid("notes.txt"), None);
    }
}
