//! Files only this user may read: the plugin copy directory, the session store. One place
//! decides what "private" means, so every file the host keeps for itself is held to it.
//!
//! A private directory is a real directory (a symlink is refused), owned by this user, with
//! no access for group or others (created 0700; an older host's 0755 is closed). A private file
//! is created 0600 without following a symlink (`O_NOFOLLOW`), must be a regular file owned by
//! this user, and is closed to group and others if it was not.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (0700, parents as needed) or checks an existing one, and closes it to group
/// and others. `what` names it in errors ("plugin copy directory").
pub fn private_dir(dir: &Path, what: &str) -> std::io::Result<()> {
    if !dir.is_absolute() {
        return Err(refuse(what, dir, "must be an absolute path"));
    }
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = owned_by_us(dir, what)?;
    if !meta.is_dir() {
        return Err(refuse(
            what,
            dir,
            "is not a directory (a symlink is refused)",
        ));
    }
    if meta.mode() & 0o1000 != 0 {
        // Sticky: a shared directory such as /tmp, never ours alone (not even for root).
        return Err(refuse(
            what,
            dir,
            "is a shared (sticky) directory such as /tmp: use a directory of your own",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `path` (0600, never through a symlink) if it is missing, or checks the file that is
/// there, and closes it to group and others.
pub fn private_file(path: &Path, what: &str) -> std::io::Result<()> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse(what, path, "is a symlink (refused)"))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(what, path, "is not a regular file"));
    }
    if meta.uid() != uid() {
        return Err(not_ours(what, path, meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// `path`'s own metadata (a symlink is not followed), which must say this user owns it.
fn owned_by_us(path: &Path, what: &str) -> std::io::Result<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(refuse(what, path, "is a symlink (refused)"));
    }
    if meta.uid() != uid() {
        return Err(not_ours(what, path, meta.uid()));
    }
    Ok(meta)
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn not_ours(what: &str, path: &Path, owner: u32) -> std::io::Error {
    refuse(
        what,
        path,
        &format!("belongs to uid {owner}, not to this user ({})", uid()),
    )
}

fn refuse(what: &str, path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("{what} {} {why}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_made_private_and_symlinks_refused() {
        let base = std::env::temp_dir().join(format!("private-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("a/b");
        private_dir(&dir, "test dir").unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir, "test dir").unwrap();
        assert_eq!(mode(&dir), 0o700, "an open directory of ours is closed");

        let file = dir.join("f.db");
        private_file(&file, "test file").unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&file, "test file").unwrap();
        assert_eq!(mode(&file), 0o600, "an open file of ours is closed");

        let link = dir.join("link.db");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let e = private_file(&link, "test file").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let dlink = base.join("dlink");
        std::os::unix::fs::symlink(&dir, &dlink).unwrap();
        let e = private_dir(&dlink, "test dir").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(private_dir(Path::new("rel"), "test dir").is_err());
        let e = private_dir(&std::env::temp_dir(), "test dir").unwrap_err();
        assert!(e.to_string().contains("shared"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
