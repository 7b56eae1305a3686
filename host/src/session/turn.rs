//! A message on its way to a run: what it says and the trace it belongs to.

use crate::llm::Content;

/// A message to run: its content, and the trace it belongs to (the client's `traceparent`).
#[derive(Debug, Clone)]
pub struct Turn {
    pub content: Content,
    pub trace: Option<crate::otel::TraceParent>,
}

impl Turn {
    /// A message without a trace context.
    pub fn untraced(content: Content) -> Turn {
        Turn {
            content,
            trace: None,
        }
    }
}
