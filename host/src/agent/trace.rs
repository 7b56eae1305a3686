//! Structured run traces (`enable_tracing` in a plugin): JSON lines appended to the operator's
//! `--trace-file`, one object per run step, model call and tool call.

use std::path::Path;

use serde_json::Value;

use crate::journal::{Journal, WhenFull};

pub struct TraceWriter {
    journal: Journal,
}

impl TraceWriter {
    /// Opens (appends to) `path`, created 0600; past `max_bytes` it rotates to `<path>.1`.
    pub fn create(path: &Path, max_bytes: u64) -> std::io::Result<TraceWriter> {
        Ok(TraceWriter {
            journal: Journal::create(path, max_bytes, WhenFull::Rotate)?,
        })
    }

    /// Appends `record` with a timestamp (ISO-8601 in UTC, as the protocol's).
    pub fn write(&self, mut record: Value) {
        record["ts"] = crate::time::Timestamp::now().as_str().into();
        self.journal.append(&record.to_string());
    }
}

/// Writes `record` to the trace file when the plugin asked for traces.
pub(super) fn trace(ctx: &super::RunContext<'_>, record: Value) {
    if ctx.manifest.enable_tracing {
        if let Some(t) = ctx.tracer {
            t.write(record);
        }
    }
}
