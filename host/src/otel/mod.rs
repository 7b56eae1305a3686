//! OpenTelemetry: runs, model calls and tool calls as spans in the GenAI semantic conventions,
//! exported over OTLP (http/protobuf or http/json) when an endpoint is configured, and W3C
//! trace context carried across the host — from a client's `traceparent` into the run, and
//! from the run onto model requests, MCP calls and plugin tool calls.
//!
//! Off (no endpoint), nothing is recorded or exported; a client's trace context is still
//! passed on, so a model server that traces sees the client's trace.

mod queue;
mod span;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::metrics::Metrics;
pub use span::{RunSpan, Span, ToolKind};

/// A client's W3C trace context (`traceparent`, and `tracestate` when given): the parent of
/// the runs it starts. Boxed: every connection has room for one, few carry one.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceParent(Box<SpanContext>);

impl TraceParent {
    /// A valid `traceparent` (with its `tracestate`); None for anything else — an invalid one
    /// is ignored, as the W3C recommendation says, never an error.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceParent> {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert("traceparent".to_owned(), traceparent.trim().to_owned());
        if let Some(state) = tracestate {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        let parent = cx.span().span_context().clone();
        parent.is_valid().then(|| TraceParent(Box::new(parent)))
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        header_of(&Context::new().with_remote_span_context((*self.0).clone())).unwrap_or_default()
    }
}

/// Where traces go and what they carry (`--otlp-endpoint`, the `OTEL_*` variables,
/// `--otel-capture-content`).
#[derive(Clone, Debug, Default)]
pub struct OtelConfig {
    /// The collector's base URL (`/v1/traces` is added); None: the `OTEL_*` variables decide.
    pub endpoint: Option<String>,
    /// Prompts, answers and tool arguments and results in span attributes (opt-in).
    pub capture_content: bool,
    /// The model's base URL: `gen_ai.provider.name`, `server.address` and `server.port`.
    pub model_url: String,
}

/// The host's tracing: on (a tracer exporting over OTLP) or off. Clones share the exporter.
#[derive(Clone)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    capture_content: bool,
    model: span::ModelServer,
}

impl Telemetry {
    /// Nothing recorded; trace context still passed on.
    pub fn off() -> Telemetry {
        Telemetry {
            tracer: None,
            provider: None,
            capture_content: false,
            model: span::ModelServer::of(""),
        }
    }

    /// Starts exporting when an endpoint is configured (`config.endpoint`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), unless
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Builds a blocking HTTP client:
    /// call it outside the async runtime's worker threads (or in `spawn_blocking`).
    pub fn start(config: &OtelConfig, metrics: Arc<Metrics>) -> Result<Telemetry, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let configured = config.endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let mut telemetry = Telemetry::off();
        telemetry.model = span::ModelServer::of(&config.model_url);
        if disabled || !configured {
            return Ok(telemetry);
        }
        let protocol = protocol(
            env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")),
        )?;
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_timeout(Duration::from_secs(10));
        if let Some(base) = &config.endpoint {
            builder = builder.with_endpoint(traces_url(base));
        }
        let exporter = builder
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("myagent-host");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue::Bounded::new(exporter, metrics))
            .with_resource(resource)
            .build();
        telemetry.tracer = Some(provider.tracer("myagent-host"));
        telemetry.provider = Some(provider);
        telemetry.capture_content = config.capture_content;
        Ok(telemetry)
    }

    /// True when spans are recorded and exported.
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Sends what is queued and stops the exporter (a graceful stop). Blocks: call it from
    /// `spawn_blocking`.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "OTLP exporter did not flush every span at shutdown");
            }
        }
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: http/protobuf (the default) or http/json.
fn protocol(value: Option<String>) -> Result<Protocol, String> {
    match value.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use http/protobuf or http/json"
        )),
    }
}

/// A collector's base URL as the traces endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The `traceparent` header for the span `cx` holds, if it holds a valid one.
fn header_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(tp, None).unwrap().header(), tp);
        for bad in [
            "",
            "00-0000",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz",
        ] {
            assert!(TraceParent::parse(bad, None).is_none(), "{bad}");
        }
    }

    #[test]
    fn endpoints_and_protocols() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert!(protocol(Some("grpc".into()))
            .unwrap_err()
            .contains("http/json"));
        assert!(matches!(protocol(None), Ok(Protocol::HttpBinary)));
    }
}
