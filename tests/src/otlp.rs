//! The tests' own OTLP/HTTP trace receiver: `POST /v1/traces` in `http/protobuf` or
//! `http/json`, decoded with the protocol's own message types into flat [`SpanRec`]s.
//! `GET`-free: tests read what arrived with [`Otlp::spans`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::Value;

/// One span as received.
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// 1 internal, 2 server, 3 client (OTLP's numbers).
    pub kind: i32,
    pub attributes: BTreeMap<String, Value>,
    /// 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// The service name of its resource.
    pub service: String,
    /// The request's content type (`application/x-protobuf` or `application/json`).
    pub encoding: String,
}

impl SpanRec {
    pub fn attr(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }
}

/// A running receiver.
pub struct Otlp {
    pub port: u16,
    spans: Arc<Mutex<Vec<SpanRec>>>,
}

impl Otlp {
    /// Listens on a free loopback port (a thread of its own).
    pub fn start() -> Otlp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, kept));
        });
        Otlp { port, spans }
    }

    /// The base URL (as `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<SpanRec> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until at least `n` spans arrived (or `within` passed); returns what arrived.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<SpanRec> {
        let end = Instant::now() + within;
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() > end {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn serve(listener: std::net::TcpListener, spans: Arc<Mutex<Vec<SpanRec>>>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let spans = spans.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| receive(req, spans.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: Arc<Mutex<Vec<SpanRec>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let encoding = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let decoded = match encoding.as_str() {
        "application/x-protobuf" => {
            ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
        }
        "application/json" => serde_json::from_slice(&body).map_err(|e| e.to_string()),
        other => Err(format!("unexpected content type {other:?}")),
    };
    let answer = |status: StatusCode, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        Ok(r)
    };
    if path != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, format!("no {path}"));
    }
    match decoded {
        Ok(request) => {
            spans.lock().unwrap().extend(flatten(&request, &encoding));
            answer(StatusCode::OK, "{}".into())
        }
        Err(e) => answer(StatusCode::BAD_REQUEST, e),
    }
}

fn flatten(request: &ExportTraceServiceRequest, encoding: &str) -> Vec<SpanRec> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| value_of(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(SpanRec {
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                value_of(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    service: service.clone(),
                    encoding: encoding.to_owned(),
                });
            }
        }
    }
    out
}

fn value_of(v: Option<&Any>) -> Value {
    match v {
        None => Value::Null,
        Some(Any::StringValue(s)) => Value::String(s.clone()),
        Some(Any::BoolValue(b)) => Value::Bool(*b),
        Some(Any::IntValue(i)) => Value::from(*i),
        Some(Any::DoubleValue(d)) => Value::from(*d),
        Some(Any::ArrayValue(a)) => Value::Array(
            a.values
                .iter()
                .map(|x| value_of(x.value.as_ref()))
                .collect(),
        ),
        Some(other) => Value::String(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
