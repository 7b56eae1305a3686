//! Append-only JSON-lines files the operator asks for (run traces, model recordings): created
//! private to this user (0600, as they hold conversations), and bounded in size.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What to do when the file reaches its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Move it to `<path>.1` (replacing an older one) and start afresh: traces keep the recent.
    Rotate,
    /// Stop writing (once, with an error in the log): a recording must stay whole to replay.
    Stop,
}

pub struct Journal {
    path: PathBuf,
    max_bytes: u64,
    when_full: WhenFull,
    state: Mutex<State>,
}

struct State {
    file: Option<File>,
    written: u64,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl Journal {
    pub fn create(path: &Path, max_bytes: u64, when_full: WhenFull) -> std::io::Result<Journal> {
        let file = open(path)?;
        let written = file.metadata()?.len();
        Ok(Journal {
            path: path.to_owned(),
            max_bytes,
            when_full,
            state: Mutex::new(State {
                file: Some(file),
                written,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` (a newline is added).
    pub fn append(&self, line: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let len = line.len() as u64 + 1;
        if st.written + len > self.max_bytes && st.file.is_some() {
            match self.when_full {
                WhenFull::Rotate => {
                    let old = self.path.with_extension(match self.path.extension() {
                        Some(e) => format!("{}.1", e.to_string_lossy()),
                        None => "1".into(),
                    });
                    st.file = None;
                    let reopened =
                        std::fs::rename(&self.path, &old).and_then(|()| open(&self.path));
                    match reopened {
                        Ok(f) => {
                            st.file = Some(f);
                            st.written = 0;
                        }
                        Err(e) => {
                            tracing::error!(path = %self.path.display(), error = %e, "could not rotate; writing stops")
                        }
                    }
                }
                WhenFull::Stop => {
                    st.file = None;
                    tracing::error!(path = %self.path.display(), max_bytes = self.max_bytes,
                        "file reached its size limit; no more is written to it");
                }
            }
        }
        let Some(f) = st.file.as_mut() else {
            return;
        };
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        match f.write_all(buf.as_bytes()) {
            Ok(()) => st.written += len,
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "could not write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_and_bounded() {
        let dir = std::env::temp_dir().join(format!("journal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("trace.jsonl");
        let j = Journal::create(&p, 100, WhenFull::Rotate).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for i in 0..10 {
            j.append(&format!("{{\"line\":{i:020}}}"));
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 100);
        assert!(std::fs::metadata(dir.join("trace.jsonl.1")).unwrap().len() <= 100);
        let s = dir.join("rec.jsonl");
        let j = Journal::create(&s, 100, WhenFull::Stop).unwrap();
        for _ in 0..10 {
            j.append(&"x".repeat(30));
        }
        assert_eq!(std::fs::metadata(&s).unwrap().len(), 93);
        let _ = std::fs::remove_dir_all(dir);
    }
}
