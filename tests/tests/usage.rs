//! Usage accounting and budgets, end to end against the fake model with fixed usage per call:
//! each run's and the session's totals (`agent.usage`, `agent.final_answer.metadata.usage`,
//! `agent.session_resumed`), kept across kill -9, priced with `--prices`, and a budget that
//! stops a run before the call that would spend past it.

use myagent_tests::{plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "prompt_tokens_details": {"cached_tokens": prompt / 2},
           "completion_tokens_details": {"reasoning_tokens": 1}})
}

fn start(llm: &FakeLlm, store: &std::path::Path, extra: &[&str]) -> Host {
    let url = format!("sqlite:{}", store.display());
    let mut args = vec!["--store", url.as_str()];
    args.extend_from_slice(extra);
    Host::start(&plugin_lib("testkit_agent"), llm, &args)
}

/// One turn: its `agent.usage` and final event.
async fn turn(c: &mut Client, sid: &str, said: &str) -> (Value, Value) {
    c.ask(sid, said).await;
    let usage = c.until("agent.usage").await;
    let last = c
        .until_any(&["agent.final_answer", "agent.error", "agent.interrupted"])
        .await;
    c.until("agent.ready").await;
    (usage, last)
}

fn totals(v: &Value) -> (u64, u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    (
        n("input_tokens"),
        n("output_tokens"),
        n("cached_input_tokens"),
        n("reasoning_tokens"),
        n("model_calls"),
    )
}

#[tokio::test]
async fn run_and_session_totals_are_exact_priced_and_survive_kill_9() {
    let dir = TempDir::new("usage");
    let store = dir.path().join("s.db");
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "[models.\"fake-model\"]\ninput = 2.0\noutput = 10.0\ncached_input = 1.0\n",
    )
    .unwrap();
    let llm = FakeLlm::start();
    let host = start(&llm, &store, &["--prices", prices.to_str().unwrap()]);
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    // A tool-calling turn: two model calls.
    llm.script(json!([
        {"tool_calls": [{"name": "echo", "arguments": "{\"text\": \"hi\"}"}], "usage": usage(100, 10)},
        {"text": "Done.", "usage": usage(150, 20)}
    ]));
    let (u, last) = turn(&mut c, &sid, "go").await;
    assert_eq!(totals(&u["run"]), (250, 30, 125, 2, 2), "{u}");
    assert_eq!(u["run"], u["session"]);
    assert_eq!(last["metadata"]["usage"], u["run"], "{last}");
    // $ per million: 125 fresh × 2 + 125 cached × 1 + 30 out × 10 = 675.
    let cost = u["run"]["cost_usd"].as_f64().unwrap();
    assert!((cost - 675e-6).abs() < 1e-12, "{cost}");
    assert!(u["run"].get("estimated").is_none());

    llm.script(json!([{"text": "Again.", "usage": usage(200, 5)}]));
    let (u, _) = turn(&mut c, &sid, "again").await;
    assert_eq!(totals(&u["run"]), (200, 5, 100, 1, 1));
    assert_eq!(totals(&u["session"]), (450, 35, 225, 3, 3));

    // The totals are stored with the session.
    let metrics = host.http("/metrics");
    assert!(
        metrics.contains("myagent_llm_tokens_total{agent=\"testkit\",model=\"fake-model\",direction=\"input\"} 450"),
        "{metrics}"
    );
    host.kill9();
    drop(host);
    let host = start(&llm, &store, &[]);
    let (_c, resumed) = Client::resume(&host.ws_url(), &sid, &token, 0).await;
    assert_eq!(totals(&resumed["usage"]), (450, 35, 225, 3, 3), "{resumed}");

    // A provider that reports no usage: counted from the text, and marked so.
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "x".repeat(400), "no_usage": true}]));
    let (u, _) = turn(&mut c, &sid, "estimate").await;
    assert_eq!(u["run"]["estimated"], true, "{u}");
    assert_eq!(u["run"]["output_tokens"], 100);
    assert!(u["run"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_budget_stops_the_run_before_the_call_that_would_spend_past_it() {
    let dir = TempDir::new("usage-budget");
    let llm = FakeLlm::start();
    let host = start(
        &llm,
        &dir.path().join("s.db"),
        &["--session-token-budget", "300"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    llm.script(json!([{"text": "one", "usage": usage(200, 80)}]));
    turn(&mut c, &sid, "first").await; // 280 of 300: below the budget
    llm.script(json!([{"text": "two", "usage": usage(100, 10)}]));
    let (_, last) = turn(&mut c, &sid, "second").await; // 390: the call was allowed, now spent
    assert_eq!(last["content"], "two");
    let calls = llm.requests().len();
    let (u, last) = turn(&mut c, &sid, "third").await;
    assert_eq!(last["event"], "agent.final_answer", "{last}");
    assert_eq!(last["metadata"]["reason"], "budget_reached", "{last}");
    assert!(
        last["content"]
            .as_str()
            .unwrap()
            .contains("budget of 300 tokens"),
        "{last}"
    );
    assert_eq!(
        llm.requests().len(),
        calls,
        "a model request was made past the budget"
    );
    assert_eq!(u["run"]["model_calls"], 0);
    // The session stays usable: history, and a session of its own tighter budget.
    c.send(json!({"event": "user.get_history", "session_id": sid}))
        .await;
    c.until("agent.history").await;
    c.send(json!({"event": "user.create_session", "agent_config": {"budget": {"tokens": 50}}}))
        .await;
    let created = c.until("agent.session_created").await;
    let tight = created["session_id"].as_str().unwrap().to_owned();
    llm.script(json!([{"text": "small", "usage": usage(40, 20)}]));
    turn(&mut c, &tight, "one").await;
    let calls = llm.requests().len();
    let (_, last) = turn(&mut c, &tight, "two").await;
    assert_eq!(last["metadata"]["reason"], "budget_reached", "{last}");
    assert_eq!(llm.requests().len(), calls);
    // A budget in a malformed shape is refused.
    c.send(json!({"event": "user.create_session", "agent_config": {"budget": {"tokens": -1}}}))
        .await;
    assert_eq!(c.until("agent.error").await["code"], "invalid_field");
}
