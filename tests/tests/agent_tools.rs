//! Agents as tools (`ask_<agent>`): the host runs the asked agent as a child run with a fresh
//! memory inside the asking call — its events reach the client named (`metadata.agent`,
//! `metadata.parent_step_id`), its answer is the tool's result, its usage counts in the
//! session, an approval it needs reaches the client, a cancel stops it, and children nest at
//! most two deep. Real hosts, real plugins built by cargo, the fake model over HTTP.

use std::time::{Duration, Instant};

use myagent_tests::client::named;
use myagent_tests::{Client, FakeLlm, Host};
use serde_json::{json, Value};

/// The weather agent and the testkit, which the operator lets ask the weather agent.
fn host(llm: &FakeLlm, extra: &[&str]) -> Host {
    let mut args = vec!["--agent-tool", "testkit=weather-assistant"];
    args.extend_from_slice(extra);
    Host::with_testkit(llm, &args)
}

async fn testkit_session(c: &mut Client, capabilities: &[&str]) -> String {
    c.send(
        json!({"event": "user.create_session", "agent": "testkit", "capabilities": capabilities}),
    )
    .await;
    let created = c.until("agent.session_created").await;
    let tools = created["agent"]["tools"].to_string();
    assert!(
        !tools.contains("ask_"),
        "agent tools are not the plugin's own: {tools}"
    );
    created["session_id"].as_str().unwrap().to_owned()
}

fn tool_names(req: &Value) -> Vec<String> {
    req["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_asked_agent_runs_as_a_child_whose_events_and_usage_reach_the_session() {
    let llm = FakeLlm::start();
    let host = host(&llm, &[]);
    let mut c = Client::connect(&host.ws_url()).await;
    let sid = testkit_session(&mut c, &[]).await;
    c.ask(
        &sid,
        r#"call:ask_weather_assistant {"input": "What's the weather in Paris?"}"#,
    )
    .await;
    let events = c.turn().await;
    let calls = named(&events, "agent.tool_call");
    let ask = calls[0];
    assert_eq!(ask["metadata"]["tool"], "ask_weather_assistant");
    assert_eq!(ask["metadata"]["agent"], "testkit");
    assert!(ask["metadata"].get("parent_step_id").is_none());
    let ask_id = ask["step_id"].as_str().unwrap();
    // The child's step starts, tool call and result name the child and the asking call.
    let child: Vec<&Value> = events
        .iter()
        .filter(|e| e["metadata"]["parent_step_id"] == ask_id)
        .collect();
    assert!(child
        .iter()
        .all(|e| e["metadata"]["agent"] == "weather-assistant"));
    let kinds: Vec<&str> = child.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert!(
        kinds.starts_with(&["agent.thinking"]) && kinds.contains(&"agent.tool_call"),
        "{kinds:?}"
    );
    let get = named(&events, "agent.tool_call")[1];
    assert_eq!(get["metadata"]["tool"], "get_weather");
    assert_eq!(get["metadata"]["parent_step_id"], ask_id);
    // The child's answer comes as its reasoning (never as the turn's answer pieces) and is
    // the ask's result.
    let results = named(&events, "agent.tool_result");
    let answered = results
        .iter()
        .find(|r| r["step_id"] == ask_id)
        .expect("the ask's result");
    let child_answer = answered["content"].as_str().unwrap();
    assert!(child_answer.contains("Paris"), "{answered}");
    assert_eq!(answered["metadata"]["agent"], "testkit");
    assert!(named(&events, "agent.partial_answer")
        .iter()
        .all(|p| p["metadata"].get("parent_step_id").is_none()));
    let child_said: String = named(&events, "agent.thinking")
        .iter()
        .filter(|e| e["metadata"]["delta"] == true && e["metadata"]["parent_step_id"] == ask_id)
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    // (its text before the tool call, then its answer)
    assert!(child_said.ends_with(child_answer), "{child_said}");
    let answer = named(&events, "agent.final_answer")[0];
    assert!(answer["content"].as_str().unwrap().contains(child_answer));
    // The child's two model calls count in the session with the parent's two.
    let usage = named(&events, "agent.usage")[0];
    assert_eq!(usage["run"]["model_calls"], 4, "{usage}");
    assert_eq!(usage["session"]["model_calls"], 4);
    // The child started from a fresh memory: its agent's prompt and the question, nothing of
    // the parent's conversation.
    let reqs = llm.requests();
    let child_first = &reqs[1];
    let text = child_first["messages"].to_string();
    assert!(text.contains("What's the weather in Paris?"), "{text}");
    assert!(!text.contains("ask_weather_assistant"), "{text}");
    assert!(tool_names(child_first).contains(&"get_weather".to_owned()));
}

#[tokio::test]
async fn an_approval_inside_the_child_reaches_the_client_and_a_cancel_stops_the_child() {
    let llm = FakeLlm::start();
    let host = host(&llm, &["--require-approval", "get_weather"]);
    let mut c = Client::connect(&host.ws_url()).await;
    let sid = testkit_session(&mut c, &["tool_approval"]).await;
    c.ask(
        &sid,
        r#"call:ask_weather_assistant {"input": "What's the weather in Rome?"}"#,
    )
    .await;
    let asked = c.until("agent.tool_approval_required").await;
    assert_eq!(asked["metadata"]["tool"], "get_weather");
    assert_eq!(asked["metadata"]["agent"], "weather-assistant");
    let parent = asked["metadata"]["parent_step_id"].as_str().unwrap();
    assert!(parent.starts_with("step1-0-"), "{asked}");
    let own = asked["step_id"].as_str().unwrap();
    assert!(own.starts_with(&format!("{parent}/step1-0-")), "{asked}");
    c.send(json!({"event": "user.tool_approval", "session_id": sid,
        "step_id": asked["step_id"], "approved": true}))
        .await;
    let events = c.turn().await;
    let r = named(&events, "agent.tool_result")[0];
    assert_eq!(
        (&r["metadata"]["tool"], &r["metadata"]["status"]),
        (&json!("get_weather"), &json!("success"))
    );
    assert!(named(&events, "agent.final_answer")[0]["content"]
        .as_str()
        .unwrap()
        .contains("Rome"));

    // The child's model stalls; cancelling the turn stops the child with it.
    c.ask(
        &sid,
        r#"call:ask_weather_assistant {"input": "fault:stall"}"#,
    )
    .await;
    loop {
        let e = c.recv().await;
        if e["event"] == "agent.thinking" && e["metadata"]["agent"] == "weather-assistant" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    c.until("agent.ready").await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    c.ask(&sid, "say:still here").await;
    let events = c.turn().await;
    assert_eq!(
        named(&events, "agent.final_answer")[0]["content"],
        "still here"
    );
}

#[tokio::test]
async fn children_nest_at_most_two_deep_and_cannot_hand_the_session_over() {
    let llm = FakeLlm::start();
    let host = host(
        &llm,
        &[
            "--agent-tool",
            "weather-assistant=testkit",
            "--handoff",
            "weather-assistant=testkit",
        ],
    );
    let mut c = Client::connect(&host.ws_url()).await;
    let sid = testkit_session(&mut c, &[]).await;
    // testkit asks the weather agent, which asks the testkit, which may ask no one.
    c.ask(
        &sid,
        r#"call:ask_weather_assistant {"input": "call:ask_testkit {\"input\": \"say:deep\"}"}"#,
    )
    .await;
    let events = c.turn().await;
    let answer = named(&events, "agent.final_answer")[0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(answer.ends_with("deep"), "{answer}");
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 5, "parent, child, grandchild, child, parent");
    assert!(tool_names(&reqs[0]).contains(&"ask_weather_assistant".to_owned()));
    let child = tool_names(&reqs[1]);
    assert!(child.contains(&"ask_testkit".to_owned()), "{child:?}");
    assert!(
        !child.iter().any(|t| t.starts_with("transfer_to_")),
        "a child has no session to hand over: {child:?}"
    );
    let grandchild = tool_names(&reqs[2]);
    assert!(
        !grandchild.iter().any(|t| t.starts_with("ask_")),
        "{grandchild:?}"
    );
    // The grandchild's events name the child's call as their parent.
    let inner_ask = named(&events, "agent.tool_call")
        .into_iter()
        .find(|e| e["metadata"]["tool"] == "ask_testkit")
        .unwrap();
    assert_eq!(inner_ask["metadata"]["agent"], "weather-assistant");
    let deepest = named(&events, "agent.thinking")
        .into_iter()
        .find(|e| e["metadata"]["parent_step_id"] == inner_ask["step_id"])
        .unwrap();
    assert_eq!(deepest["metadata"]["agent"], "testkit");
}
