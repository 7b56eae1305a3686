//! Several agents on one host (`myagent-host serve a.so b.so`): each plugin an agent of its own,
//! picked by `user.create_session.agent`, listed in `system.connected.agents`, `/health` and
//! `/metrics`, isolated in its own worker (one crashing leaves the other's sessions streaming),
//! and remembered with the session (resumed after kill -9 on the same agent). Real hosts, real
//! plugins built by cargo, the fake model over HTTP.

use std::path::Path;
use std::time::Duration;

use myagent_tests::{plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};

/// Weather first (the default), then the testkit.
fn two(llm: &FakeLlm, store: &Path) -> Host {
    let url = format!("sqlite:{}", store.display());
    Host::with_testkit(llm, &["--store", &url])
}

async fn create(c: &mut Client, agent: Option<&str>) -> Value {
    let mut ask = json!({"event": "user.create_session"});
    if let Some(a) = agent {
        ask["agent"] = a.into();
    }
    c.send(ask).await;
    c.until_any(&["agent.session_created", "agent.error"]).await
}

#[tokio::test]
async fn sessions_pick_their_agent_and_the_host_lists_every_one() {
    let dir = TempDir::new("agents");
    let llm = FakeLlm::start();
    let host = two(&llm, &dir.path().join("s.db"));
    let started = host.proc.stdout_text();
    assert!(
        started.contains("Loaded agent weather-assistant")
            && started.contains("Loaded agent testkit"),
        "{started}"
    );
    let mut c = Client::connect(&host.ws_url()).await;
    let hello = c.until("system.connected").await;
    let names: Vec<&str> = hello["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weather-assistant", "testkit"]);
    assert_eq!(
        hello["agents"][1]["description"],
        "Tools for testing the host."
    );
    assert_eq!(
        hello["agent"]["name"], "weather-assistant",
        "the default stays where it was"
    );

    let default = create(&mut c, None).await;
    assert_eq!(default["agent"]["name"], "weather-assistant", "{default}");
    let kit = create(&mut c, Some("testkit")).await;
    assert_eq!(kit["agent"]["name"], "testkit", "{kit}");
    let sid = kit["session_id"].as_str().unwrap();
    c.ask(sid, r#"call:echo {"text": "from the testkit"}"#)
        .await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["content"], "from the testkit");
    c.until("agent.final_answer").await;
    // The weather session has no `echo`: each session is its own agent's.
    let wsid = default["session_id"].as_str().unwrap();
    c.ask(wsid, r#"call:echo {"text": "x"}"#).await;
    let r = c.until("agent.tool_result").await;
    assert!(
        r["content"]
            .as_str()
            .unwrap()
            .contains("no tool named `echo`"),
        "{r}"
    );

    let unknown = create(&mut c, Some("billing")).await;
    assert_eq!(unknown["code"], "invalid_field");
    let text = unknown["error"].as_str().unwrap();
    assert!(
        text.contains("`billing`") && text.contains("`weather-assistant`, `testkit`"),
        "{text}"
    );

    let health: Value = serde_json::from_str(&host.http("/health")).unwrap();
    let listed: Vec<&str> = health["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["weather-assistant", "testkit"]);
    let metrics = host.http("/metrics");
    for a in ["weather-assistant", "testkit"] {
        assert!(
            metrics.contains(&format!("myagent_agent_generation{{agent=\"{a}\"}} 1")),
            "{metrics}"
        );
    }
}

/// A weather session streaming a slow answer (its first piece seen), and a testkit session on
/// a connection of its own: the client and the id.
async fn weather_streams_beside_the_testkit(
    host: &Host,
    llm: &FakeLlm,
) -> (Client, Client, String) {
    let mut w = Client::connect(&host.ws_url()).await;
    let weather = create(&mut w, None).await;
    let wsid = weather["session_id"].as_str().unwrap().to_owned();
    let mut k = Client::connect(&host.ws_url()).await;
    let kit = create(&mut k, Some("testkit")).await;
    let ksid = kit["session_id"].as_str().unwrap().to_owned();
    llm.script(json!([{"text": "steady ".repeat(60), "chunk_chars": 7, "delay_ms": 20}]));
    w.ask(&wsid, "stream please").await;
    w.until("agent.partial_answer").await;
    (w, k, ksid)
}

/// The weather session's answer arrived whole, every piece in order, with no error.
async fn streamed_whole(w: &mut Client) {
    let done = w.until_any(&["agent.final_answer", "agent.error"]).await;
    assert_eq!(done["event"], "agent.final_answer", "{done}");
    assert_eq!(done["content"], "steady ".repeat(60));
    assert!(w.named("agent.error").is_empty());
    let pieces: String = w
        .named("agent.partial_answer")
        .iter()
        .map(|p| p["content"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, "steady ".repeat(60));
}

#[tokio::test]
async fn one_agents_worker_crashing_leaves_the_others_sessions_streaming() {
    let dir = TempDir::new("agents-crash");
    let llm = FakeLlm::start();
    let host = two(&llm, &dir.path().join("s.db"));
    // A slow stream on the weather agent while the testkit's worker aborts.
    let (mut w, mut k, ksid) = weather_streams_beside_the_testkit(&host, &llm).await;
    k.ask(&ksid, r#"call:native_crash {"how": "abort"}"#).await;
    let crashed = k.until("system.plugin_crashed").await;
    assert_eq!(crashed["agent"]["name"], "testkit");
    streamed_whole(&mut w).await;
    let health: Value = serde_json::from_str(&host.http("/health")).unwrap();
    assert_eq!(health["agents"][0]["name"], "weather-assistant");
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 1);
}

#[tokio::test]
async fn reloading_one_agent_leaves_the_others_sessions_streaming() {
    // The testkit is served from a copy we replace with a real rebuild (v2); the weather
    // agent streams meanwhile.
    let dir = TempDir::new("agents-reload");
    let served = dir.path().join("libtestkit_agent.so");
    std::fs::copy(plugin_lib("testkit_agent"), &served).unwrap();
    myagent_tests::cargo_fixture(&["-p", "testkit_agent"], &[("TESTKIT_TAG", "v2")]);
    let v2 = myagent_tests::target_dir().join("fixtures/debug/libtestkit_agent.so");
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[served.to_str().unwrap(), "--reload-debounce-ms", "100"],
    );
    let (mut w, mut k, ksid) = weather_streams_beside_the_testkit(&host, &llm).await;
    let tmp = dir.path().join(".tmp-new.so");
    std::fs::copy(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &served).unwrap();
    let notice = k.until("system.plugin_reloaded").await;
    assert_eq!(notice["agent"]["name"], "testkit");
    assert_eq!(notice["agent"]["version"], "0.1.0-v2");
    // The weather run streams on to its end, untouched.
    streamed_whole(&mut w).await;
    // The testkit session runs on its new build; the weather agent is still its first.
    k.ask(&ksid, "call:tag_v2 {}").await;
    let r = k.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "success", "{r}");
    let metrics = host.http("/metrics");
    assert!(
        metrics.contains("myagent_agent_generation{agent=\"weather-assistant\"} 1")
            && metrics.contains("myagent_agent_generation{agent=\"testkit\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_session_keeps_its_agent_across_kill_9() {
    let dir = TempDir::new("agents-durable");
    let store = dir.path().join("s.db");
    let llm = FakeLlm::start();
    let host = two(&llm, &store);
    let mut c = Client::connect(&host.ws_url()).await;
    let kit = create(&mut c, Some("testkit")).await;
    let (sid, token) = (
        kit["session_id"].as_str().unwrap().to_owned(),
        kit["resume_token"].as_str().unwrap().to_owned(),
    );
    c.ask(&sid, r#"call:echo {"text": "before"}"#).await;
    let ready = c.until("agent.ready").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill9();
    drop((c, host));

    let host = two(&llm, &store);
    let (mut c, resumed) =
        Client::resume(&host.ws_url(), &sid, &token, ready["seq"].as_u64().unwrap()).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    assert_eq!(resumed["agent"]["name"], "testkit", "{resumed}");
    c.ask(&sid, r#"call:echo {"text": "after"}"#).await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["content"], "after", "still the testkit's session: {r}");
    let ready = c.until("agent.ready").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill9();
    drop((c, host));

    // A row stored before sessions named their agent (the column's default, '') is the default
    // agent's; a row of an agent no longer served cannot be resumed here, and says so.
    let set_agent = |agent: &str| {
        let db = rusqlite::Connection::open(&store).unwrap();
        db.execute(
            "UPDATE sessions SET agent = ?1 WHERE id = ?2",
            (agent, &sid),
        )
        .unwrap();
    };
    set_agent("");
    let host = two(&llm, &store);
    let seq = ready["seq"].as_u64().unwrap();
    let (mut c, resumed) = Client::resume(&host.ws_url(), &sid, &token, seq).await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    assert_eq!(resumed["agent"]["name"], "weather-assistant", "{resumed}");
    c.ask(&sid, r#"call:echo {"text": "whose?"}"#).await;
    let r = c.until("agent.tool_result").await;
    assert!(
        r["content"]
            .as_str()
            .unwrap()
            .contains("no tool named `echo`"),
        "the weather agent's now: {r}"
    );
    host.kill9();
    drop((c, host));
    set_agent("billing");
    let host = two(&llm, &store);
    let (_c, refused) = Client::resume(&host.ws_url(), &sid, &token, seq).await;
    assert_eq!(refused["code"], "session_not_found", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("`billing` is not served here"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_http_doors_name_the_agent_in_their_path() {
    let dir = TempDir::new("agents-doors");
    let llm = FakeLlm::start();
    let host = two(&llm, &dir.path().join("s.db"));
    let base = format!("http://127.0.0.1:{}", host.port);
    // A2A: a card per agent at `/a2a/{agent}`; the bare card is the first agent's.
    let card: Value =
        serde_json::from_str(&host.http("/a2a/testkit/.well-known/agent-card.json")).unwrap();
    assert_eq!(card["name"], "testkit");
    let card: Value = serde_json::from_str(&host.http("/.well-known/agent-card.json")).unwrap();
    assert_eq!(card["name"], "weather-assistant");
    let missing =
        myagent_tests::http_get_raw(&format!("{base}/a2a/billing/.well-known/agent-card.json"));
    assert!(
        missing.starts_with("HTTP/1.1 404") && missing.contains("weather-assistant, testkit"),
        "{missing}"
    );
    let body = json!({"jsonrpc": "2.0", "id": "1", "method": "SendMessage", "params": {"message":
        {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "call:echo {\"text\": \"via a2a\"}"}]}}});
    let resp = myagent_tests::http_post(&format!("{base}/a2a/testkit"), &body.to_string());
    assert!(
        resp.contains("TASK_STATE_COMPLETED") && resp.contains("via a2a"),
        "{resp}"
    );
    // AG-UI: `/agui/{agent}`.
    let run = json!({"threadId": "t-agents", "runId": "r1", "state": {}, "tools": [], "context": [],
        "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": "call:echo {\"text\": \"via agui\"}"}]});
    let client = reqwest::Client::new();
    let post = |path: &str| {
        client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(run.to_string())
            .send()
    };
    let stream = post("/agui/testkit").await.unwrap().text().await.unwrap();
    assert!(
        stream.contains("TOOL_CALL_RESULT") && stream.contains("via agui"),
        "{stream}"
    );
    let refused = post("/agui/billing").await.unwrap();
    assert_eq!(refused.status(), 404);
}

#[tokio::test]
async fn an_mcp_server_a_plugin_names_is_offered_to_that_agent_only() {
    let llm = FakeLlm::start();
    let testkit = plugin_lib("testkit_agent");
    let server = myagent_tests::bin("mcp-test-server");
    // The testkit asks for the stdio server `kit` (TESTKIT_MCP_SERVER); the weather agent names none.
    let host = Host::start_with_env(
        &plugin_lib("weather_agent"),
        &llm,
        &[testkit.to_str().unwrap()],
        &[("TESTKIT_MCP_SERVER", server.as_path())],
    );
    let mut c = Client::connect(&host.ws_url()).await;
    let tools = |created: &Value| -> Vec<String> {
        created["agent"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    let kit = create(&mut c, Some("testkit")).await;
    assert!(tools(&kit).contains(&"whoami".to_owned()), "{kit}");
    let weather = create(&mut c, None).await;
    assert!(
        !tools(&weather)
            .iter()
            .any(|t| t == "whoami" || t.starts_with("kit__")),
        "{weather}"
    );
    // Asked for anyway, the weather agent has no such tool.
    let wsid = weather["session_id"].as_str().unwrap();
    c.ask(wsid, "call:whoami {}").await;
    let r = c.until("agent.tool_result").await;
    assert!(
        r["content"]
            .as_str()
            .unwrap()
            .contains("no tool named `whoami`"),
        "{r}"
    );
}

#[test]
fn inspect_prints_every_agent_named() {
    let out = myagent_tests::host_command()
        .arg("inspect")
        .args([plugin_lib("weather_agent"), plugin_lib("testkit_agent")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (w, k) = (text.find("weather-assistant"), text.find("testkit"));
    assert!(w.is_some() && k.is_some() && w < k, "{text}");
}
