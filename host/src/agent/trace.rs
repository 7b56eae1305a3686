//! Structured run traces (`enable_tracing` in a plugin): JSON lines appended to the operator's
//! `--trace-file`, one object per run step, model call and tool call.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

pub struct TraceWriter {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl TraceWriter {
    pub fn create(path: &Path) -> std::io::Result<TraceWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(TraceWriter {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Appends `record` with a timestamp.
    pub fn write(&self, mut record: Value) {
        record["ts"] = crate::now_secs().into();
        let mut line = record.to_string();
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "could not write trace");
        }
    }
}
