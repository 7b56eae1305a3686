//! The export path: the SDK's batch processor and OTLP exporter, with every finished span
//! counted as exported, failed (the collector unreachable or refusing) or dropped (the queue
//! full) — in `/metrics` — and repeated export failures logged once a minute, not per batch.
//!
//! The bound is kept here, before the SDK's queue: a span takes a place when it ends and gives
//! it back when its batch's export returns, so the SDK's own queue (as large) is never full
//! and every drop is one we counted. Ending a span never waits: a dead or stalled collector
//! costs the event path one failed compare-and-swap per span.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::metrics::Metrics;

/// Spans waiting for export at most; more are dropped (and counted).
pub(super) const MAX_QUEUE: usize = 2048;
/// How often a collector that keeps failing is logged.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// The batch processor, behind the bound.
#[derive(Debug)]
pub(super) struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Bounded {
    pub(super) fn new(exporter: opentelemetry_otlp::SpanExporter, metrics: Arc<Metrics>) -> Self {
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            queued: queued.clone(),
            metrics: metrics.clone(),
            failures: Mutex::new(Failures::default()),
        };
        let config = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .build();
        Bounded {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
            queued,
            metrics,
        }
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx)
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let place = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_QUEUE).then_some(n + 1)
            });
        match place {
            Ok(_) => self.inner.on_end(span),
            Err(_) => self.metrics.otel_spans_dropped.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Failures since the last log line.
#[derive(Debug, Default)]
struct Failures {
    logged_at: Option<Instant>,
    since: u64,
}

/// The OTLP exporter, counting what each batch came to.
#[derive(Debug)]
struct Counted {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    failures: Mutex<Failures>,
}

impl Counted {
    fn failed(&self, spans: usize, error: &dyn std::fmt::Display) {
        self.metrics.otel_spans_failed.add(spans as u64);
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.since += spans as u64;
        if f.logged_at.is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY) {
            return;
        }
        let first = f.logged_at.is_none();
        let lost = std::mem::take(&mut f.since);
        f.logged_at = Some(Instant::now());
        if first {
            tracing::warn!(%error, spans = lost, "OTLP export failed; spans are dropped while the collector fails (said again at most once a minute)");
        } else {
            tracing::warn!(%error, spans = lost, "OTLP export still failing: spans lost in the last minute");
        }
    }

    fn exported(&self, spans: usize) {
        self.metrics.otel_spans_exported.add(spans as u64);
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.logged_at.take().is_some() {
            tracing::info!(lost_since_last_report = f.since, "OTLP export works again");
            f.since = 0;
        }
    }
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => self.exported(n),
            Err(e) => self.failed(n, e),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig;

    /// A collector that takes the connection and never answers: every export waits for its
    /// 10 s timeout. Ending spans meanwhile must not wait, and past the bound each is dropped
    /// and counted — exactly those.
    #[test]
    fn a_stalled_collector_never_stalls_the_spans_and_drops_are_counted() {
        let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", stalled.local_addr().unwrap());
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(Bounded::new(exporter, metrics.clone()))
            .build();
        let tracer = provider.tracer("test");
        let started = Instant::now();
        let n = 5_000;
        for _ in 0..n {
            tracer.start("span").end();
        }
        let took = started.elapsed();
        assert_eq!(metrics.otel_spans_dropped.get(), (n - MAX_QUEUE) as u64);
        assert!(
            took < Duration::from_secs(5),
            "ending {n} spans took {took:?}"
        );
        // Shutting down would wait for the stalled export; the test is done.
        std::mem::forget(provider);
        drop(stalled);
    }
}
