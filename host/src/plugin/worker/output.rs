//! A worker's own output: its stdout and stderr forwarded to the host's log a bounded line at
//! a time, and the tail of its stderr kept to explain its death ("stack overflow",
//! "segmentation fault (SIGSEGV) (last output: …)").

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{lock, STDERR_KEPT};
use crate::lines::each_line;
use crate::metrics::Metrics;

/// The worker's stdout and stderr to the host's log, tagged with the plugin file and pid;
/// stderr's tail also into `ring`. Returns the stderr reader's task.
pub(super) fn forward_output(
    child: &mut tokio::process::Child,
    source: &Path,
    pid: u32,
    ring: &Arc<Mutex<StderrTail>>,
    metrics: &Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let label = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(out) = child.stdout.take() {
        let (label, metrics) = (label.clone(), metrics.clone());
        tokio::spawn(each_line(out, move |line| {
            metrics
                .plugin_worker_output_dropped
                .add(line.dropped as u64);
            tracing::info!(plugin = %label, worker_pid = pid, "stdout: {}", line.text);
        }));
    }
    match child.stderr.take() {
        Some(err) => {
            let (ring, metrics) = (ring.clone(), metrics.clone());
            tokio::spawn(each_line(err, move |line| {
                metrics
                    .plugin_worker_output_dropped
                    .add(line.dropped as u64);
                tracing::warn!(plugin = %label, worker_pid = pid, "stderr: {}", line.text);
                lock(&ring).push(line.text);
            }))
        }
        None => tokio::spawn(async {}),
    }
}

/// What a worker's stderr said last, kept to explain its death: the line in which Rust's runtime
/// named how it ended the process (kept however much follows it — a backtrace can be long), and
/// the last lines that are not backtrace.
#[derive(Default)]
pub(super) struct StderrTail {
    cause: Option<&'static str>,
    lines: VecDeque<String>,
}

impl StderrTail {
    /// Rust's runtime says these on stderr before it aborts: they say more than SIGABRT.
    const CAUSES: [(&'static str, &'static str); 2] = [
        ("has overflowed its stack", "stack overflow"),
        ("memory allocation of", "out of memory"),
    ];

    fn push(&mut self, line: String) {
        if self.cause.is_none() {
            self.cause = Self::CAUSES
                .iter()
                .find(|(needle, _)| line.contains(needle))
                .map(|(_, cause)| *cause);
        }
        let t = line.trim_start();
        let backtrace = t.len() != line.len()
            || t.starts_with("stack backtrace:")
            || t.starts_with("note: ")
            || t.split_once(':')
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if backtrace {
            return;
        }
        if self.lines.len() == STDERR_KEPT {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// What a dead worker's exit status and stderr say happened: "stack overflow",
/// "segmentation fault (SIGSEGV) (last output: …)".
pub(super) fn describe_death(
    status: Option<std::process::ExitStatus>,
    stderr: &StderrTail,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(cause) = stderr.cause {
        return cause.into();
    }
    let what = match status.map(|s| (s.signal(), s.code())) {
        Some((Some(libc::SIGSEGV), _)) => "segmentation fault (SIGSEGV)".into(),
        Some((Some(libc::SIGBUS), _)) => "bus error (SIGBUS)".into(),
        Some((Some(libc::SIGABRT), _)) => "abort (SIGABRT)".into(),
        Some((Some(libc::SIGILL), _)) => "illegal instruction (SIGILL)".into(),
        Some((Some(libc::SIGFPE), _)) => "arithmetic error (SIGFPE)".into(),
        Some((Some(libc::SIGXCPU), _)) => "CPU time limit reached (SIGXCPU)".into(),
        Some((Some(libc::SIGKILL), _)) => "killed (SIGKILL)".into(),
        Some((Some(sig), _)) => format!("killed by signal {sig}"),
        Some((None, Some(code))) => format!("exit({code}) called"),
        _ => "the worker ended".into(),
    };
    match stderr.lines.back() {
        Some(last) if !last.trim().is_empty() => {
            let last: String = last.chars().take(200).collect();
            format!("{what} (last output: {last})")
        }
        _ => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_is_named_by_the_runtime_line_even_under_a_long_backtrace() {
        let mut tail = StderrTail::default();
        tail.push("memory allocation of 4294967296 bytes failed".into());
        tail.push("stack backtrace:".into());
        for i in 0..40 {
            tail.push(format!("  {i}: some::frame"));
            tail.push("             at ./src/lib.rs:1:1".into());
        }
        tail.push("note: Some details are omitted, run with `RUST_BACKTRACE=full`".into());
        assert_eq!(describe_death(None, &tail), "out of memory");

        let mut tail = StderrTail::default();
        tail.push("plugin: opening the database".into());
        tail.push("stack backtrace:".into());
        tail.push("   0: __rustc::rust_begin_unwind".into());
        let what = describe_death(None, &tail);
        assert_eq!(
            what,
            "the worker ended (last output: plugin: opening the database)"
        );
    }
}
