//! Process-wide counters and histograms, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every metric the host keeps.
#[derive(Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Counter,
    /// WebSocket upgrades refused by `max_connections_per_ip` (HTTP 429).
    pub connections_refused_per_ip: Counter,
    /// Connections closed because request headers (or the handshake) did not arrive in time.
    pub header_timeouts: Counter,
    pub sessions: Gauge,
    /// Session creations refused by `max_sessions` or `max_sessions_per_ip`.
    pub sessions_refused: Counter,
    /// Bytes held in all sessions' replay buffers (events plus per-event overhead).
    pub replay_bytes: Gauge,
    pub sessions_total: Counter,
    pub runs_started: Counter,
    pub runs_finished: Counter,
    pub runs_failed: Counter,
    pub runs_cancelled: Counter,
    pub events_sent: Counter,
    pub client_errors: Counter,
    pub slow_client_disconnects: Counter,
    pub tool_calls: Counter,
    pub tool_failures: Counter,
    pub tool_timeouts: Counter,
    /// Tool calls still running on a blocking thread after their run gave up on them
    /// (timeout, cancel, shutdown) — the tool did not stop when asked.
    pub tools_abandoned: Gauge,
    pub tools_abandoned_total: Counter,
    pub llm_calls: Counter,
    pub llm_errors: Counter,
    pub llm_prompt_tokens: Counter,
    pub llm_completion_tokens: Counter,
    pub llm_latency: Histogram,
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// Plugin worker processes running, started and crashed, over all builds.
    pub plugin_workers: Gauge,
    pub plugin_worker_starts: Counter,
    pub plugin_worker_crashes: Counter,
    /// Bytes of plugin workers' stdout/stderr lines past 8 KiB, dropped.
    pub plugin_worker_output_dropped: Counter,
    /// OTLP spans exported, lost to a failing collector, and dropped with the queue full.
    pub otel_spans_exported: Counter,
    pub otel_spans_failed: Counter,
    pub otel_spans_dropped: Counter,
    /// Model tokens per (agent, model): input, output, cached input, reasoning.
    llm_tokens: std::sync::Mutex<std::collections::BTreeMap<(String, String), [u64; 4]>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    /// Every counter and gauge: (name, kind, help, value).
    fn values(
        &self,
        plugin_generation: u64,
    ) -> [(&'static str, &'static str, &'static str, u64); 35] {
        [
            ("myagent_connections", "gauge", "Open WebSocket connections.", self.connections.get()),
            ("myagent_connections_total", "counter", "WebSocket connections accepted.", self.connections_total.get()),
            ("myagent_connections_refused_total", "counter", "Connections refused (cap, auth, origin).", self.connections_refused.get()),
            ("myagent_connections_refused_per_ip_total", "counter", "WebSocket upgrades refused by the per-address connection limit (HTTP 429).", self.connections_refused_per_ip.get()),
            ("myagent_header_timeouts_total", "counter", "Connections closed for not sending request headers or finishing the handshake in time.", self.header_timeouts.get()),
            ("myagent_sessions_refused_total", "counter", "Sessions refused by the global or per-address session limit.", self.sessions_refused.get()),
            ("myagent_replay_bytes", "gauge", "Bytes held in all sessions' replay buffers, per-event overhead included.", self.replay_bytes.get()),
            ("myagent_sessions", "gauge", "Live agent sessions.", self.sessions.get()),
            ("myagent_sessions_total", "counter", "Sessions created.", self.sessions_total.get()),
            ("myagent_runs_started_total", "counter", "Agent runs started.", self.runs_started.get()),
            ("myagent_runs_finished_total", "counter", "Agent runs that produced a final answer.", self.runs_finished.get()),
            ("myagent_runs_failed_total", "counter", "Agent runs that ended in an error.", self.runs_failed.get()),
            ("myagent_runs_cancelled_total", "counter", "Agent runs cancelled.", self.runs_cancelled.get()),
            ("myagent_events_sent_total", "counter", "Server events queued to clients.", self.events_sent.get()),
            ("myagent_client_errors_total", "counter", "Bad client messages answered with an error.", self.client_errors.get()),
            ("myagent_slow_client_disconnects_total", "counter", "Connections closed because their outbound queue was full.", self.slow_client_disconnects.get()),
            ("myagent_tool_calls_total", "counter", "Tool calls.", self.tool_calls.get()),
            ("myagent_tool_failures_total", "counter", "Tool calls that failed.", self.tool_failures.get()),
            ("myagent_tool_timeouts_total", "counter", "Tool calls that timed out.", self.tool_timeouts.get()),
            ("myagent_tools_abandoned", "gauge", "Tool calls given up on (timeout, cancel, shutdown) whose thread is still running.", self.tools_abandoned.get()),
            ("myagent_tools_abandoned_total", "counter", "Tool calls given up on while their thread was still running.", self.tools_abandoned_total.get()),
            ("myagent_llm_calls_total", "counter", "Model calls.", self.llm_calls.get()),
            ("myagent_llm_errors_total", "counter", "Model calls that failed.", self.llm_errors.get()),
            ("myagent_llm_prompt_tokens_total", "counter", "Prompt tokens reported by the model.", self.llm_prompt_tokens.get()),
            ("myagent_llm_completion_tokens_total", "counter", "Completion tokens reported by the model.", self.llm_completion_tokens.get()),
            ("myagent_plugin_reloads_total", "counter", "Successful plugin hot reloads.", self.reloads.get()),
            ("myagent_plugin_reload_failures_total", "counter", "Plugin builds refused on reload.", self.reload_failures.get()),
            ("myagent_plugin_generation", "gauge", "Generation of the serving plugin build.", plugin_generation),
            ("myagent_plugin_workers", "gauge", "Plugin worker processes running.", self.plugin_workers.get()),
            ("myagent_plugin_worker_starts_total", "counter", "Plugin worker processes started (first starts, reloads and restarts).", self.plugin_worker_starts.get()),
            ("myagent_plugin_worker_crashes_total", "counter", "Plugin worker processes that died unasked (crash, exit, or stopped because a call hung).", self.plugin_worker_crashes.get()),
            ("myagent_plugin_worker_output_dropped_bytes_total", "counter", "Bytes of plugin workers' stdout/stderr lines past 8 KiB, dropped.", self.plugin_worker_output_dropped.get()),
            ("myagent_otel_spans_exported_total", "counter", "Trace spans exported over OTLP.", self.otel_spans_exported.get()),
            ("myagent_otel_spans_failed_total", "counter", "Trace spans lost because the OTLP collector failed or refused them.", self.otel_spans_failed.get()),
            ("myagent_otel_spans_dropped_total", "counter", "Trace spans dropped because the export queue was full.", self.otel_spans_dropped.get()),
        ]
    }

    pub fn render(&self, plugin_generation: u64) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        for (name, kind, help, v) in self.values(plugin_generation) {
            one(name, kind, help, v);
        }
        if let Some(rss) = resident_memory_bytes() {
            one(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss,
            );
        }
        self.llm_latency
            .render(&mut out, "myagent_llm_call_seconds", "Model call duration.");
        self.render_tokens(&mut out);
        out
    }

    /// Adds one model call's tokens (input, output, cached input, reasoning) of `agent` on
    /// `model` (labels by agent and model only: a label per user would grow without bound).
    pub fn count_tokens(&self, agent: &str, model: &str, tokens: [u64; 4]) {
        let mut all = self.llm_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let key = (agent.to_owned(), model.to_owned());
        let row = all.entry(key).or_default();
        for (t, n) in row.iter_mut().zip(tokens) {
            *t += n;
        }
    }

    fn render_tokens(&self, out: &mut String) {
        let all = self.llm_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if all.is_empty() {
            return;
        }
        let name = "myagent_llm_tokens_total";
        let _ = writeln!(out, "# HELP {name} Model tokens by agent, model and direction (cached_input is part of input, reasoning part of output).\n# TYPE {name} counter");
        for ((agent, model), row) in all.iter() {
            let esc = |v: &str| {
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', " ")
            };
            for (dir, n) in ["input", "output", "cached_input", "reasoning"]
                .iter()
                .zip(row)
            {
                let _ = writeln!(
                    out,
                    "{name}{{agent=\"{}\",model=\"{}\",direction=\"{dir}\"}} {n}",
                    esc(agent),
                    esc(model)
                );
            }
        }
    }
}

/// This process's resident set size, from `/proc/self/status` (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
