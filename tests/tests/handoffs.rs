//! Handoffs between the agents of one host (`transfer_to_<agent>`): the turn goes on under the
//! target — its prompt, tools and model — and the session's next messages go to it, after a
//! kill -9 and on another host too. Real hosts, real plugins built by cargo (the business
//! agent declares its handoff to the weather agent in code), the fake model over HTTP.

use std::path::Path;
use std::time::Duration;

use myagent_tests::client::named;
use myagent_tests::{plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};

/// The business agent (the default; it hands weather questions over), then the weather agent.
fn business_and_weather(llm: &FakeLlm, store: &str, extra: &[&str]) -> Host {
    let weather = plugin_lib("weather_agent");
    let mut args = vec!["--store", store, weather.to_str().unwrap()];
    args.extend_from_slice(extra);
    Host::start(&plugin_lib("business_agent"), llm, &args)
}

/// The weather agent (the default), then the testkit, with the operator's `handoffs`.
fn weather_and_testkit(llm: &FakeLlm, handoffs: &[&str]) -> Host {
    let args: Vec<&str> = handoffs
        .iter()
        .flat_map(|pair| ["--handoff", pair])
        .collect();
    Host::with_testkit(llm, &args)
}

async fn create(c: &mut Client, agent: Option<&str>) -> Value {
    let mut ask = json!({"event": "user.create_session"});
    if let Some(a) = agent {
        ask["agent"] = a.into();
    }
    c.send(ask).await;
    let created = c.until_any(&["agent.session_created", "agent.error"]).await;
    assert_eq!(created["event"], "agent.session_created", "{created}");
    created
}

/// The system prompt and tool names of a model request.
fn prompt_and_tools(req: &Value) -> (String, Vec<String>) {
    let system = req["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let tools = req["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (system, tools)
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("s.db").display())
}

#[tokio::test]
async fn a_handoff_moves_the_turn_and_the_session_to_the_target_and_survives_kill_9() {
    let dir = TempDir::new("handoff");
    let llm = FakeLlm::start();
    let store = sqlite(dir.path());
    let host = business_and_weather(&llm, &store, &[]);
    let out = host.proc.stdout_text();
    assert!(out.contains("Hands over to: weather-assistant"), "{out}");
    let mut c = Client::connect(&host.ws_url()).await;
    c.until("system.connected").await;
    let created = create(&mut c, None).await;
    assert_eq!(created["agent"]["name"], "business-assistant");
    let tools = created["agent"]["tools"].to_string();
    assert!(tools.contains("query_database"), "{tools}");
    let sid = created["session_id"].as_str().unwrap().to_owned();
    let token = created["resume_token"].as_str().unwrap().to_owned();

    c.ask(&sid, "What's the weather in Tokyo?").await;
    let events = c.turn().await;
    let calls = named(&events, "agent.tool_call");
    assert_eq!(
        calls[0]["metadata"]["tool"],
        "transfer_to_weather_assistant"
    );
    assert_eq!(calls[0]["metadata"]["agent"], "business-assistant");
    let handoff = named(&events, "agent.handoff");
    assert_eq!(handoff.len(), 1, "{events:#?}");
    let h = handoff[0];
    assert_eq!(
        (&h["from"], &h["to"], &h["reason"]),
        (
            &json!("business-assistant"),
            &json!("weather-assistant"),
            &json!("a weather question")
        )
    );
    assert_eq!(h["step_id"], calls[0]["step_id"]);
    // The handoff is announced between its call and its result, then the target's step starts.
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    let handoff_at = at(&|e| e["event"] == "agent.handoff");
    let result_at = at(&|e| e["event"] == "agent.tool_result");
    assert!(at(&|e| e["event"] == "agent.tool_call") < handoff_at && handoff_at < result_at);
    let steps: Vec<(u64, &str)> = named(&events, "agent.thinking")
        .iter()
        .filter(|e| e["metadata"]["delta"] == false)
        .map(|e| {
            let m = &e["metadata"];
            (m["step"].as_u64().unwrap(), m["agent"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        steps,
        [
            (1, "business-assistant"),
            (2, "weather-assistant"),
            (3, "weather-assistant")
        ]
    );
    assert_eq!(calls[1]["metadata"]["tool"], "get_weather");
    assert_eq!(calls[1]["metadata"]["agent"], "weather-assistant");
    let answer = named(&events, "agent.final_answer")[0];
    assert!(
        answer["content"].as_str().unwrap().contains("Tokyo"),
        "{answer}"
    );
    assert_eq!(answer["metadata"]["steps"], 3);
    // The model saw the business prompt first, then the weather agent's prompt and tools with
    // the conversation so far.
    let reqs = llm.requests();
    let (first, first_tools) = prompt_and_tools(&reqs[0]);
    assert!(first.starts_with("You are a business assistant"), "{first}");
    assert!(first_tools.contains(&"transfer_to_weather_assistant".to_owned()));
    let (then, then_tools) = prompt_and_tools(&reqs[1]);
    assert!(then.contains("weather"), "{then}");
    assert!(!then.starts_with("You are a business assistant"));
    assert!(
        then_tools.contains(&"get_weather".to_owned()),
        "{then_tools:?}"
    );
    assert!(!then_tools.contains(&"query_database".to_owned()));
    let history = reqs[1]["messages"].to_string();
    assert!(
        history.contains("What's the weather in Tokyo?")
            && history.contains("transfer_to_weather_assistant")
    );

    // The next message goes straight to the weather agent.
    let before = llm.requests().len();
    c.ask(&sid, "And the weather in Oslo?").await;
    let events = c.turn().await;
    assert!(named(&events, "agent.handoff").is_empty());
    let (next, _) = prompt_and_tools(&llm.requests()[before]);
    assert_eq!(next, then, "the target's prompt from the first call on");
    assert!(named(&events, "agent.final_answer")[0]["content"]
        .as_str()
        .unwrap()
        .contains("Oslo"));
    let seq = events.last().unwrap()["seq"].as_u64().unwrap();

    // kill -9 and a new host: the session resumes on the agent it was handed to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.kill9();
    drop((c, host));
    let host = business_and_weather(&llm, &store, &[]);
    let (mut c, resumed) = Client::resume(&host.ws_url(), &sid, &token, seq).await;
    assert_eq!(resumed["agent"]["name"], "weather-assistant", "{resumed}");
    let before = llm.requests().len();
    c.ask(&sid, "say:still here").await;
    c.turn().await;
    let (next, _) = prompt_and_tools(&llm.requests()[before]);
    assert_eq!(next, then);
}

#[tokio::test]
async fn the_operator_links_agents_that_do_not_declare_it_and_an_unserved_target_is_a_tool_error() {
    let llm = FakeLlm::start();
    let testkit = plugin_lib("testkit_agent");
    // Neither declares a handoff; the operator adds testkit → weather-assistant.
    let host = weather_and_testkit(&llm, &["testkit=weather-assistant"]);
    let mut c = Client::connect(&host.ws_url()).await;
    let kit = create(&mut c, Some("testkit")).await;
    let sid = kit["session_id"].as_str().unwrap().to_owned();
    c.ask(
        &sid,
        r#"call:transfer_to_weather_assistant {"reason": "asked by the operator"}"#,
    )
    .await;
    let events = c.turn().await;
    let h = named(&events, "agent.handoff");
    assert_eq!(h.len(), 1, "{events:#?}");
    assert_eq!(h[0]["reason"], "asked by the operator");
    // The weather agent has no handoff back: its model is not offered one.
    let (_, tools) = prompt_and_tools(llm.requests().last().unwrap());
    assert!(
        !tools.iter().any(|t| t.starts_with("transfer_to_")),
        "{tools:?}"
    );
    drop(host);

    // Without the operator's pair there is no such tool; a declared handoff to an agent this
    // host does not serve fails as a tool result the model sees, and the turn goes on.
    let host = Host::start(
        &plugin_lib("business_agent"),
        &llm,
        &[testkit.to_str().unwrap()],
    );
    let out = host.proc.stderr_text() + &host.proc.stdout_text();
    assert!(out.contains("does not serve"), "{out}");
    let mut c = Client::connect(&host.ws_url()).await;
    let biz = create(&mut c, None).await;
    let sid = biz["session_id"].as_str().unwrap().to_owned();
    c.ask(&sid, "call:transfer_to_weather_assistant {}").await;
    let events = c.turn().await;
    assert!(named(&events, "agent.handoff").is_empty());
    let r = named(&events, "agent.tool_result")[0];
    assert_eq!(r["metadata"]["status"], "failed");
    assert!(
        r["content"]
            .as_str()
            .unwrap()
            .contains("no agent named `weather-assistant`"),
        "{r}"
    );
    assert_eq!(named(&events, "agent.final_answer").len(), 1);
    let kit = create(&mut c, Some("testkit")).await;
    let sid = kit["session_id"].as_str().unwrap().to_owned();
    c.ask(&sid, "call:transfer_to_business_assistant {}").await;
    let events = c.turn().await;
    let r = named(&events, "agent.tool_result")[0];
    assert!(
        r["content"]
            .as_str()
            .unwrap()
            .contains("no tool named `transfer_to_business_assistant`"),
        "{r}"
    );

    // An operator's pair naming an agent not served stops the start with a clear error.
    let out = myagent_tests::host_command()
        .arg("serve")
        .arg(plugin_lib("weather_agent"))
        .args(["--port", "0", "--handoff", "weather-assistant=billing"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--handoff weather-assistant=billing") && err.contains("\"billing\""),
        "{err}"
    );
}

#[tokio::test]
async fn the_active_agent_holds_on_a_second_host_through_redis() {
    let Some(redis) = myagent_tests::Redis::start() else {
        return;
    };
    let llm = FakeLlm::start();
    let a = business_and_weather(&llm, &redis.url(), &[]);
    let b = business_and_weather(&llm, &redis.url(), &[]);
    let mut c = Client::connect(&a.ws_url()).await;
    let created = create(&mut c, None).await;
    let sid = created["session_id"].as_str().unwrap().to_owned();
    let token = created["resume_token"].as_str().unwrap().to_owned();
    c.ask(&sid, "What's the weather in Lima?").await;
    let events = c.turn().await;
    assert_eq!(named(&events, "agent.handoff").len(), 1);
    let seq = events.last().unwrap()["seq"].as_u64().unwrap();
    drop(c);
    let (mut c, resumed) = Client::resume(&b.ws_url(), &sid, &token, seq).await;
    assert_eq!(resumed["agent"]["name"], "weather-assistant", "{resumed}");
    let before = llm.requests().len();
    c.ask(&sid, "And the weather in Quito?").await;
    let events = c.turn().await;
    let (prompt, tools) = prompt_and_tools(&llm.requests()[before]);
    assert!(
        !prompt.starts_with("You are a business assistant"),
        "{prompt}"
    );
    assert!(tools.contains(&"get_weather".to_owned()));
    assert_eq!(
        named(&events, "agent.tool_call")[0]["metadata"]["agent"],
        "weather-assistant"
    );
}

#[tokio::test]
async fn three_agents_route_by_name_and_hand_over_among_themselves() {
    let dir = TempDir::new("handoff-three");
    let llm = FakeLlm::start();
    let testkit = plugin_lib("testkit_agent");
    let store = sqlite(dir.path());
    // business → weather (declared), testkit → business (the operator's).
    let host = business_and_weather(
        &llm,
        &store,
        &[
            testkit.to_str().unwrap(),
            "--handoff",
            "testkit=business-assistant",
            "--auth-token",
            "t0ken-for-the-list",
        ],
    );
    let mut c = Client::connect(&format!("{}/?token=t0ken-for-the-list", host.ws_url())).await;
    let hello = c.until("system.connected").await;
    assert_eq!(hello["agents"].as_array().unwrap().len(), 3);
    let mut sessions = Vec::new();
    for agent in ["business-assistant", "weather-assistant", "testkit"] {
        let created = create(&mut c, Some(agent)).await;
        assert_eq!(created["agent"]["name"], agent);
        sessions.push(created["session_id"].as_str().unwrap().to_owned());
    }
    // Each session's model call carries its own agent's prompt.
    for (sid, starts) in sessions.iter().zip(["You are a business", "You are a", ""]) {
        let before = llm.requests().len();
        c.ask(sid, "say:hello").await;
        c.turn().await;
        let (prompt, _) = prompt_and_tools(&llm.requests()[before]);
        assert!(prompt.starts_with(starts), "{prompt}");
    }
    // testkit → business → weather in one turn: two handoffs, the weather agent answers.
    c.ask(
        &sessions[2],
        r#"call:transfer_to_business_assistant {"reason": "billing first"}"#,
    )
    .await;
    let events = c.turn().await;
    let h = named(&events, "agent.handoff");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["to"], "business-assistant");
    c.ask(&sessions[2], "What's the weather in Madrid?").await;
    let events = c.turn().await;
    let h = named(&events, "agent.handoff");
    assert_eq!((h.len(), &h[0]["from"]), (1, &json!("business-assistant")));
    let calls = named(&events, "agent.tool_call");
    assert_eq!(
        calls.last().unwrap()["metadata"]["agent"],
        "weather-assistant"
    );
    assert!(named(&events, "agent.final_answer")[0]["content"]
        .as_str()
        .unwrap()
        .contains("Madrid"));
    // The list names each session's active agent.
    c.send(json!({"event": "user.list_sessions"})).await;
    let listed = c.until_any(&["agent.sessions", "agent.error"]).await;
    let agent_of = |sid: &str| {
        listed["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"))
            .iter()
            .find(|s| s["session_id"] == sid)
            .map(|s| s["agent"].clone())
            .unwrap()
    };
    assert_eq!(agent_of(&sessions[2]), "weather-assistant");
    assert_eq!(agent_of(&sessions[0]), "business-assistant");
}

#[tokio::test]
async fn handoffs_in_one_turn_are_bounded_by_max_steps() {
    let llm = FakeLlm::start();
    // Each may hand over to the other; the model does nothing else.
    let host = weather_and_testkit(
        &llm,
        &["testkit=weather-assistant", "weather-assistant=testkit"],
    );
    let to = |name: &str| json!({"tool_calls": [{"name": name, "arguments": "{}"}]});
    let ping_pong: Vec<Value> = (0..10)
        .map(|i| to(["transfer_to_weather_assistant", "transfer_to_testkit"][i % 2]))
        .collect();
    llm.script(Value::Array(ping_pong));
    let mut c = Client::connect(&host.ws_url()).await;
    let kit = create(&mut c, Some("testkit")).await;
    let sid = kit["session_id"].as_str().unwrap().to_owned();
    c.ask(&sid, "go back and forth").await;
    let events = c.turn().await;
    // testkit (max_steps 4) → weather (5) → testkit → weather → testkit: step 5 is past the
    // testkit's limit, so the turn ends there.
    assert_eq!(named(&events, "agent.handoff").len(), 4, "{events:#?}");
    let last = named(&events, "agent.final_answer")[0];
    assert_eq!(last["metadata"]["reason"], "max_steps", "{last}");
    assert_eq!(last["metadata"]["steps"], 4);
    assert_eq!(llm.requests().len(), 4);
}

#[tokio::test]
async fn the_http_doors_show_a_handoff() {
    let dir = TempDir::new("handoff-doors");
    let llm = FakeLlm::start();
    let host = business_and_weather(&llm, &sqlite(dir.path()), &[]);
    let base = format!("http://127.0.0.1:{}", host.port);
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body.to_string())
            .send()
    };
    // AG-UI: the handoff is a CUSTOM event; the weather agent's tool and answer follow.
    let run = json!({"threadId": "t-handoff", "runId": "r1", "state": {}, "tools": [], "context": [],
        "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": "What's the weather in Paris?"}]});
    let stream = post("/agui/business-assistant", run)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let custom = stream
        .lines()
        .find(|l| l.contains("myagent.handoff"))
        .unwrap_or_else(|| panic!("{stream}"));
    assert!(custom.contains(r#""to":"weather-assistant""#), "{custom}");
    assert!(
        stream.contains("get_weather") && stream.contains("RUN_FINISHED"),
        "{stream}"
    );
    // A2A: a status message says who took over; tool messages name their agent.
    let send = json!({"jsonrpc": "2.0", "id": "1", "method": "SendStreamingMessage", "params": {"message":
        {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "What's the weather in Oslo?"}]}}});
    let stream = post("/a2a/business-assistant", send)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        stream.contains("Handed over to weather-assistant")
            && stream.contains(r#""agent":"weather-assistant""#)
            && stream.contains("TASK_STATE_COMPLETED")
            && stream.contains("Oslo"),
        "{stream}"
    );
}
