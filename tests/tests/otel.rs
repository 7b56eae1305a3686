//! OpenTelemetry: a tool-calling turn exported over OTLP — both `http/protobuf` and `http/json`,
//! to the tests' own receiver — as the GenAI conventions' span tree under the client's trace,
//! with the fake model's exact token counts; the `traceparent` the model, and the plugin's tool,
//! were given; no user text in spans unless `--otel-capture-content`; every span out on
//! SIGTERM; trace context passed on with export off (message metadata, AG-UI); a dead collector
//! counted and logged once. Real host, real testkit plugin, the fake model over HTTP.

use std::path::Path;
use std::time::Duration;

use myagent_tests::otlp::{Otlp, SpanRec};
use myagent_tests::{plugin_lib, Client, FakeLlm, Host};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const SECRET: &str = "what is the secret number 4711";

fn client_traceparent() -> String {
    format!("00-{TRACE}-{CLIENT_SPAN}-01")
}

/// A tool call (to `trace_context`, which answers with the traceparent it was given), then an
/// answer, each with its own exact usage.
fn script_turn(llm: &FakeLlm) {
    llm.script(json!([
        {"tool_calls": [{"name": "trace_context", "arguments": "{}"}],
         "usage": {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38}},
        {"text": "The answer is forty-two.",
         "usage": {"prompt_tokens": 45, "completion_tokens": 3, "total_tokens": 48}}
    ]));
}

/// Connects with `traceparent` on the upgrade request and runs one scripted turn; returns the
/// session id and what the tool returned.
async fn traced_turn(host: &Host) -> (String, String) {
    let mut req = host.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("traceparent", client_traceparent().parse().unwrap());
    let mut c = Client::connect_req(req).await.unwrap();
    c.until("system.connected").await;
    let (sid, _) = c.create_session().await;
    c.ask(&sid, SECRET).await;
    let result = c.until("agent.tool_result").await;
    c.until_any(&["agent.final_answer", "agent.error"]).await;
    (sid, result["content"].as_str().unwrap().to_owned())
}

fn one<'a>(spans: &'a [SpanRec], name: &str) -> &'a SpanRec {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} in {spans:#?}");
    found[0]
}

/// Starts a host exporting to `otlp` in `protocol`, runs the turn, stops the host with SIGTERM
/// (spans are batched for 5 s: only the flush at a graceful stop gets them out this soon).
async fn exported_turn(protocol: &str, capture: bool) -> (Vec<SpanRec>, String, String, FakeLlm) {
    exported(protocol, capture, script_turn).await
}

/// [`exported_turn`] with another script (whose turn calls one tool).
async fn exported(
    protocol: &str,
    capture: bool,
    script: fn(&FakeLlm),
) -> (Vec<SpanRec>, String, String, FakeLlm) {
    let otlp = Otlp::start();
    let llm = FakeLlm::start();
    script(&llm);
    let endpoint = otlp.endpoint();
    let extra: &[&str] = if capture {
        &["--otel-capture-content"]
    } else {
        &[]
    };
    let mut host = Host::start_with_env(
        &plugin_lib("testkit_agent"),
        &llm,
        extra,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", Path::new(&endpoint)),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", Path::new(protocol)),
            ("OTEL_SERVICE_NAME", Path::new("otel-test")),
        ],
    );
    let (sid, tool_said) = traced_turn(&host).await;
    host.terminate();
    host.proc.exit_stderr();
    (otlp.spans(), sid, tool_said, llm)
}

#[tokio::test]
async fn a_turn_is_a_genai_span_tree_under_the_clients_trace_in_both_encodings() {
    for (protocol, encoding) in [
        ("http/protobuf", "application/x-protobuf"),
        ("http/json", "application/json"),
    ] {
        let (spans, sid, tool_said, llm) = exported_turn(protocol, false).await;
        assert_eq!(
            spans.len(),
            4,
            "{protocol}: a run, two model calls, one tool call: {spans:#?}"
        );
        for s in &spans {
            assert_eq!(
                (s.trace_id.as_str(), s.service.as_str(), s.encoding.as_str()),
                (TRACE, "otel-test", encoding)
            );
        }
        let run = one(&spans, "invoke_agent testkit");
        assert_eq!(
            run.parent_span_id, CLIENT_SPAN,
            "the run is a child of the client's span"
        );
        assert_eq!(run.kind, 1);
        for (k, v) in [
            ("gen_ai.operation.name", json!("invoke_agent")),
            ("gen_ai.provider.name", json!("openai")),
            ("gen_ai.agent.name", json!("testkit")),
            ("gen_ai.agent.version", json!("0.1.0-v1")),
            ("gen_ai.conversation.id", json!(sid)),
            ("gen_ai.request.model", json!("fake-model")),
            ("gen_ai.usage.input_tokens", json!(76)),
            ("gen_ai.usage.output_tokens", json!(10)),
            ("gen_ai.response.finish_reasons", json!(["answer"])),
        ] {
            assert_eq!(run.attr(k), &v, "{protocol}: run {k}");
        }
        let mut chats: Vec<&SpanRec> = spans
            .iter()
            .filter(|s| s.name == "chat fake-model")
            .collect();
        chats.sort_by_key(|s| s.attr("gen_ai.usage.input_tokens").as_i64());
        assert_eq!(chats.len(), 2);
        for (chat, (input, output, reason)) in
            chats.iter().zip([(31, 7, "tool_calls"), (45, 3, "stop")])
        {
            assert_eq!(
                (chat.parent_span_id.as_str(), chat.kind),
                (run.span_id.as_str(), 3)
            );
            assert_eq!(chat.attr("gen_ai.operation.name"), "chat");
            assert_eq!(chat.attr("gen_ai.request.model"), "fake-model");
            assert_eq!(chat.attr("gen_ai.usage.input_tokens"), &json!(input));
            assert_eq!(chat.attr("gen_ai.usage.output_tokens"), &json!(output));
            assert_eq!(
                chat.attr("gen_ai.response.finish_reasons"),
                &json!([reason])
            );
            assert_eq!(chat.attr("server.address"), "127.0.0.1");
            assert_eq!(chat.attr("gen_ai.conversation.id"), &json!(sid));
        }
        let tool = one(&spans, "execute_tool trace_context");
        assert_eq!(tool.parent_span_id, run.span_id);
        assert_eq!(tool.attr("gen_ai.operation.name"), "execute_tool");
        assert_eq!(tool.attr("gen_ai.tool.name"), "trace_context");
        assert_eq!(tool.attr("gen_ai.tool.type"), "function");
        assert!(tool
            .attr("gen_ai.tool.call.id")
            .as_str()
            .is_some_and(|id| !id.is_empty()));
        // What the model and the plugin were given: the trace, under their own spans.
        let sent: Vec<String> = llm.traceparents().into_iter().map(Option::unwrap).collect();
        let mut expected: Vec<String> = chats
            .iter()
            .map(|c| format!("00-{TRACE}-{}-01", c.span_id))
            .collect();
        let mut got = sent.clone();
        got.sort();
        expected.sort();
        assert_eq!(
            got, expected,
            "{protocol}: the model got each call's own span as parent"
        );
        assert_eq!(
            tool_said,
            format!("00-{TRACE}-{}-01", tool.span_id),
            "{protocol}: the tool's context"
        );
        // No user text in attributes without --otel-capture-content.
        let everything = format!("{spans:?}");
        assert!(
            !everything.contains("secret number") && !everything.contains("forty-two"),
            "{everything}"
        );
    }
}

#[tokio::test]
async fn content_is_recorded_only_when_asked() {
    let (spans, _, _, _) = exported_turn("http/protobuf", true).await;
    let run = one(&spans, "invoke_agent testkit");
    let input: Value =
        serde_json::from_str(run.attr("gen_ai.input.messages").as_str().unwrap()).unwrap();
    assert_eq!(
        input,
        json!([{"role": "user", "parts": [{"type": "text", "content": SECRET}]}])
    );
    assert!(run
        .attr("gen_ai.output.messages")
        .as_str()
        .unwrap()
        .contains("forty-two"));
    assert!(run
        .attr("gen_ai.system_instructions")
        .as_str()
        .unwrap()
        .contains("You are a test agent."));
    let tool = one(&spans, "execute_tool trace_context");
    assert!(tool
        .attr("gen_ai.tool.call.result")
        .as_str()
        .unwrap()
        .starts_with("00-"));
    let answering = spans
        .iter()
        .find(|s| s.name == "chat fake-model" && s.attr("gen_ai.usage.input_tokens") == &json!(45))
        .unwrap();
    let out = answering.attr("gen_ai.output.messages").as_str().unwrap();
    assert!(
        out.contains("forty-two") && out.contains("\"finish_reason\":\"stop\""),
        "{out}"
    );
    let sent = answering.attr("gen_ai.input.messages").as_str().unwrap();
    assert!(
        sent.contains("tool_call_response") && sent.contains(SECRET),
        "{sent}"
    );
}

#[tokio::test]
async fn failures_carry_their_error_type_not_their_text() {
    // A failing tool, then a model call the provider refuses (HTTP 500, no retries left).
    let script = |llm: &FakeLlm| {
        let refusal = json!({"status": 500, "body": "{\"error\": {\"message\": \"quota of user zq9x exceeded\"}}"});
        llm.script(json!([
            {"tool_calls": [{"name": "fail", "arguments": "{}"}]},
            refusal, refusal, refusal
        ]));
    };
    let (spans, _, said, _) = exported("http/protobuf", false, script).await;
    assert!(said.contains("always fails"), "{said}");
    let tool = one(&spans, "execute_tool fail");
    assert_eq!(
        (tool.attr("error.type"), tool.status),
        (&json!("tool_error"), 2)
    );
    let chats: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.name == "chat fake-model")
        .collect();
    assert!(
        chats
            .iter()
            .any(|c| c.attr("error.type") == "500" && c.status == 2),
        "{chats:#?}"
    );
    let run = one(&spans, "invoke_agent testkit");
    assert_eq!((run.attr("error.type"), run.status), (&json!("500"), 2));
    let everything = format!("{spans:?}");
    assert!(
        !everything.contains("always fails") && !everything.contains("zq9x"),
        "{everything}"
    );
}

#[tokio::test]
async fn trace_context_is_passed_on_with_export_off() {
    let llm = FakeLlm::start();
    let dir = myagent_tests::TempDir::new("otel-mcp");
    let mcp = dir.path().join("mcp.json");
    let servers =
        json!({"mcpServers": {"own": {"command": myagent_tests::bin("mcp-test-server")}}});
    std::fs::write(&mcp, servers.to_string()).unwrap();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--mcp-config", mcp.to_str().unwrap()],
    );
    // The upgrade request's traceparent reaches the plugin's tool and the MCP server (`_meta`).
    let mut req = host.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("traceparent", client_traceparent().parse().unwrap());
    let mut c = Client::connect_req(req).await.unwrap();
    let (sid, _) = c.create_session().await;
    llm.script(json!([
        {"tool_calls": [{"name": "trace_context", "arguments": "{}"}, {"name": "meta_traceparent", "arguments": "{}"}]},
        {"text": "ok"}
    ]));
    c.ask(&sid, "go").await;
    let mut said = vec![
        c.until("agent.tool_result").await,
        c.until("agent.tool_result").await,
    ];
    said.sort_by_key(|r| r["metadata"]["tool"].as_str().unwrap().to_owned());
    assert_eq!(said[0]["metadata"]["tool"], "meta_traceparent");
    for r in &said {
        assert_eq!(r["content"], client_traceparent(), "{r}");
    }
    c.until("agent.final_answer").await;
    drop(c);
    assert_eq!(llm.traceparents(), vec![Some(client_traceparent()); 2]);
    // A message's own traceparent (no header on the upgrade).
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.send(
        json!({"event": "user.message", "session_id": sid, "content": "say:hello",
        "metadata": {"traceparent": tp}}),
    )
    .await;
    c.until("agent.final_answer").await;
    // Without one, no traceparent is made up.
    c.ask(&sid, "say:again").await;
    c.until("agent.final_answer").await;
    // An AG-UI request's header.
    let agui = "00-11111111111111111111111111111111-2222222222222222-01";
    let body = json!({"threadId": "t-otel", "runId": "r1", "state": {}, "tools": [], "context": [],
        "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": "say:hi"}]});
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/agui", host.port))
        .header("content-type", "application/json")
        .header("traceparent", agui)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("RUN_FINISHED"));
    let seen: Vec<Option<String>> = llm.traceparents().into_iter().skip(2).collect();
    assert_eq!(seen, vec![Some(tp.to_owned()), None, Some(agui.to_owned())]);
}

#[tokio::test]
async fn a_dead_collector_is_counted_and_said_once() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--otlp-endpoint", &endpoint],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    for i in 0..3 {
        c.ask(&sid, &format!("say:turn {i}")).await;
        c.until("agent.final_answer").await;
        // Each turn's spans in their own batch (the batch delay is 5 s).
        if i < 2 {
            let failed = |h: &Host| h.metric("myagent_otel_spans_failed_total");
            let before = failed(&host);
            let end = std::time::Instant::now() + Duration::from_secs(15);
            while failed(&host) == before && std::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        host.metric("myagent_otel_spans_failed_total") >= 4,
        "each turn's run and model call"
    );
    assert_eq!(host.metric("myagent_otel_spans_exported_total"), 0);
    assert_eq!(host.metric("myagent_otel_spans_dropped_total"), 0);
    let log = host.proc.stderr_text();
    assert_eq!(
        log.matches("OTLP export failed").count(),
        1,
        "said once: {log}"
    );
    assert_eq!(log.matches("OTLP export still failing").count(), 0, "{log}");
}

/// A turn where the testkit asks the weather agent as a tool, then hands the conversation over
/// to it: each agent's part is an `invoke_agent` span — the child's under the asking call's
/// `execute_tool`, the handed-to agent's beside the first (under the client's span), the first
/// ending with finish reason `handoff`.
#[tokio::test]
async fn a_child_run_and_a_handoff_are_spans_of_their_own() {
    let otlp = Otlp::start();
    let llm = FakeLlm::start();
    llm.script(json!([
        {"tool_calls": [{"name": "ask_weather_assistant", "arguments": "{\"input\": \"hi\"}"}]},
        {"text": "hello from the weather agent"},
        {"tool_calls": [{"name": "transfer_to_weather_assistant", "arguments": "{}"}]},
        {"text": "The weather agent answers."}
    ]));
    let endpoint = otlp.endpoint();
    let weather = plugin_lib("weather_agent");
    let mut host = Host::start_with_env(
        &plugin_lib("testkit_agent"),
        &llm,
        &[
            weather.to_str().unwrap(),
            "--agent-tool",
            "testkit=weather-assistant",
            "--handoff",
            "testkit=weather-assistant",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", Path::new(&endpoint))],
    );
    traced_turn(&host).await;
    host.terminate();
    host.proc.exit_stderr();
    let spans = otlp.spans();
    let first = one(&spans, "invoke_agent testkit");
    assert_eq!(first.parent_span_id, CLIENT_SPAN);
    assert_eq!(
        first.attr("gen_ai.response.finish_reasons"),
        &json!(["handoff"])
    );
    let ask = one(&spans, "execute_tool ask_weather_assistant");
    assert_eq!(ask.parent_span_id, first.span_id);
    let weather: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.name == "invoke_agent weather-assistant")
        .collect();
    assert_eq!(weather.len(), 2, "{spans:#?}");
    let child = weather.iter().find(|s| s.parent_span_id == ask.span_id);
    let handed = weather.iter().find(|s| s.parent_span_id == CLIENT_SPAN);
    assert!(child.is_some() && handed.is_some(), "{weather:#?}");
    assert_eq!(
        handed.unwrap().attr("gen_ai.response.finish_reasons"),
        &json!(["answer"])
    );
    // Every model call is under the agent whose call it was.
    let chats: Vec<&str> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .map(|s| s.parent_span_id.as_str())
        .collect();
    assert_eq!(chats.len(), 4);
    assert_eq!(
        chats.iter().filter(|p| **p == first.span_id).count(),
        2,
        "the testkit's two"
    );
    assert!(chats.contains(&child.unwrap().span_id.as_str()));
    assert!(chats.contains(&handed.unwrap().span_id.as_str()));
}
