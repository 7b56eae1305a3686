//! In-process tests of the host library, beside the end-to-end suite: the agent loop against a
//! recorded model with a recording sink, and the session registry behind `Sessions` with a
//! connection's outbox read directly. Real plugin builds (loaded with the host's loader), no
//! WebSocket, no host process.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use myagent_host::agent::{
    run_agent, AgentConfig, AgentEvent, AgentRuntime, EventSink, FinishReason, Memory, RunContext,
    RunOutcome, SessionSettings, Speaker, INTERRUPTED_NOTE,
};
use myagent_host::llm::{Model, ReplayModel};
use myagent_host::metrics::Metrics;
use myagent_host::plugin::{
    self,
    copies::CopyDir,
    reload::{Agents, PluginSlot},
    Instance, Plugin,
};
use myagent_host::server::outbox::{ConnHandle, Outbox};
use myagent_host::session::{Client, Lifecycle, SessionConfig, Sessions};
use myagent_tests::{plugin_lib, workspace_root, TempDir};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn recording() -> PathBuf {
    workspace_root().join("examples/recordings/weather-demo.jsonl")
}

fn load(name: &str, copies: &TempDir) -> Arc<Plugin> {
    let dir = CopyDir::open(copies.path()).unwrap();
    Arc::new(plugin::load(&plugin_lib(name), &dir, 1).expect("load plugin"))
}

fn agent_config() -> AgentConfig {
    AgentConfig {
        default_model: "gpt-4o-mini".into(),
        tool_timeout: Duration::from_secs(5),
        max_tool_output_chars: 8000,
        memory_budget_chars: 48_000,
        answer_holdback_chars: 80,
        require_approval: Vec::new(),
        prices: None,
        session_budget: Default::default(),
        approval_timeout: Duration::from_secs(5),
        links: Default::default(),
    }
}

/// Keeps every event a run reports.
#[derive(Default)]
struct Recorded(Mutex<Vec<AgentEvent>>);

impl EventSink for Recorded {
    fn emit(&self, event: AgentEvent, _: &Speaker<'_>) {
        self.0.lock().unwrap().push(event);
    }
}

async fn run(
    plugin: &Plugin,
    instance: &Instance,
    memory: &mut Memory,
    input: &str,
    cancel: &CancellationToken,
) -> (RunOutcome, Vec<AgentEvent>) {
    let model = Model::Replay(ReplayModel::open(&recording(), Duration::ZERO).unwrap());
    let sink = Recorded::default();
    let metrics = Arc::new(Metrics::default());
    let config = agent_config();
    // No other agent: nothing to hand over to.
    let agents = Agents::none();
    let ctx = RunContext {
        model: &model,
        manifest: &plugin.manifest,
        settings: &SessionSettings::default(),
        instance,
        mcp: &Default::default(),
        config: &config,
        sink: &sink,
        approvals: &Default::default(),
        cancel,
        tracer: None,
        telemetry: &myagent_host::otel::Telemetry::off(),
        trace_parent: None,
        metrics: &metrics,
        session_id: "test",
        agents: &agents,
        depth: 0,
        parent_step_id: None,
    };
    let outcome = run_agent(&ctx, memory, &input.into()).await;
    (outcome, sink.0.into_inner().unwrap())
}

#[tokio::test]
async fn the_agent_loop_thinks_calls_its_tool_and_answers_from_a_recording() {
    let copies = TempDir::new("inproc-copies");
    let plugin = load("weather_agent", &copies);
    let instance = plugin
        .instantiate(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let mut memory = Memory::new(48_000);
    let never = CancellationToken::new();

    let (outcome, events) = run(
        &plugin,
        &instance,
        &mut memory,
        "What's the weather in Paris?",
        &never,
    )
    .await;
    let RunOutcome::Finished {
        answer,
        reason,
        steps,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert!(answer.contains("sunny in Paris"), "{answer}");
    assert_eq!((reason, steps), (FinishReason::Answer, 2));
    // thinking → reasoning (the text before the call) → tool call → its result → thinking →
    // the answer's text.
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            AgentEvent::Thinking { .. } => "thinking",
            AgentEvent::Reasoning { .. } => "reasoning",
            AgentEvent::Answer { .. } => "answer",
            AgentEvent::AnswerReset { .. } => "reset",
            AgentEvent::ToolCall { .. } => "call",
            AgentEvent::ToolResult { .. } => "result",
            AgentEvent::Handoff { .. } => "handoff",
            AgentEvent::ApprovalRequired { .. } => "approval",
        })
        .collect();
    let mut squashed = kinds.clone();
    squashed.dedup();
    assert_eq!(
        squashed,
        [
            "thinking",
            "reasoning",
            "call",
            "result",
            "thinking",
            "answer"
        ]
    );
    let call = events.iter().find_map(|e| match e {
        AgentEvent::ToolCall {
            tool,
            args,
            step_id,
            ..
        } => Some((tool, args, step_id)),
        _ => None,
    });
    let (tool, args, call_id) = call.unwrap();
    assert_eq!(
        (tool.as_str(), args["city"].as_str()),
        ("get_weather", Some("Paris"))
    );
    let result = events.iter().find_map(|e| match e {
        AgentEvent::ToolResult {
            content,
            success,
            step_id,
            ..
        } => Some((content, success, step_id)),
        _ => None,
    });
    assert_eq!(
        result.unwrap(),
        (&"Paris: sunny, 17°C".to_owned(), &true, call_id)
    );
    let streamed: String = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Answer { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, answer);
    // user, assistant (tool call), tool, assistant (answer)
    assert_eq!(memory.len(), 4);
    assert!(memory.pairs_intact());

    // A question the recording does not know fails the run and leaves memory as it was.
    let mut fresh = Memory::new(48_000);
    let (outcome, _) = run(
        &plugin,
        &instance,
        &mut fresh,
        "Will it snow in Lima?",
        &never,
    )
    .await;
    assert!(
        matches!(&outcome, RunOutcome::Failed { message } if message.contains("recording")),
        "{outcome:?}"
    );
    assert_eq!(fresh.len(), 0);

    // A cancelled run closes its turn with a note, so the conversation stays well formed.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let mut m = Memory::new(48_000);
    let (outcome, _) = run(
        &plugin,
        &instance,
        &mut m,
        "What's the weather in Paris?",
        &cancelled,
    )
    .await;
    assert_eq!(outcome, RunOutcome::Cancelled);
    let last = m.messages().last().unwrap();
    assert_eq!(last.text().as_deref(), Some(INTERRUPTED_NOTE));
    assert!(m.pairs_intact());
}

/// A connection as the registry sees it: its outbox, read directly.
fn client(ip: &str, id: u64) -> (Client, Arc<Outbox>) {
    let (handle, out): (ConnHandle, Arc<Outbox>) = Outbox::new(id, 1024);
    (
        Client::new(Arc::new(handle), ip.parse::<IpAddr>().unwrap()),
        out,
    )
}

fn drain(out: &Outbox) -> Vec<Value> {
    std::iter::from_fn(|| out.pop())
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect()
}

async fn until(out: &Outbox, name: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen.extend(drain(out));
        if seen.iter().any(|e| e["event"] == name) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {name} in {seen:#?}");
}

#[tokio::test]
async fn the_session_registry_caps_runs_expires_and_resumes() {
    let copies = TempDir::new("inproc-registry");
    let plugin = load("weather_agent", &copies);
    let runtime = Arc::new(AgentRuntime {
        agents: Agents::new(vec![PluginSlot::new(Arc::try_unwrap(plugin).ok().unwrap())]),
        model: Model::Replay(ReplayModel::open(&recording(), Duration::ZERO).unwrap()),
        mcp: Default::default(),
        config: agent_config(),
        tracer: None,
        telemetry: myagent_host::otel::Telemetry::off(),
        metrics: Arc::new(Metrics::default()),
    });
    let config = SessionConfig {
        max_sessions: 3,
        max_sessions_per_ip: 2,
        max_sessions_per_connection: 16,
        replay_buffer_bytes: 64 * 1024,
        replay_budget_bytes: 1 << 30,
        resume_window: Duration::from_millis(300),
        on_busy: myagent_host::session::event::OnBusy::Reject,
        image_urls: myagent_host::session::ImageUrls::Public,
        max_runs_per_minute: 60,
        max_runs_per_minute_per_ip: 0,
        max_stored_sessions: 0,
        max_stored_sessions_per_ip: 0,
        principals: Arc::default(),
    };
    let sessions = Sessions::new(
        config,
        None,
        runtime.clone(),
        Arc::new(Lifecycle::default()),
    );
    let (mut a, out_a) = client("192.0.2.1", 1);
    let (mut b, out_b) = client("192.0.2.2", 2);

    // Caps: two per address, three in all.
    for _ in 0..3 {
        sessions.create(&mut a, None, None).await;
    }
    let events = drain(&out_a);
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "agent.session_created")
        .collect();
    assert_eq!(created.len(), 2);
    assert_eq!(events.last().unwrap()["code"], "too_many_sessions");
    sessions.create(&mut b, None, None).await;
    sessions.create(&mut b, None, None).await;
    let events = drain(&out_b);
    assert_eq!(events[0]["event"], "agent.session_created");
    assert!(
        events[1]["error"].as_str().unwrap().contains("this server"),
        "{events:?}"
    );
    assert_eq!(sessions.count(), 3);
    assert_eq!(runtime.metrics.sessions_refused.get(), 2);

    // A turn runs and every event goes to the owner, numbered from 1.
    let sid = created[0]["session_id"].as_str().unwrap().to_owned();
    let token = created[0]["resume_token"].as_str().unwrap().to_owned();
    sessions
        .message(
            &a,
            &sid,
            "What's the weather in Paris?".into(),
            (None, None),
        )
        .await;
    let run = until(&out_a, "agent.ready").await;
    let seqs: Vec<u64> = run
        .iter()
        .filter(|e| e["session_id"] == sid.as_str())
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (2..2 + seqs.len() as u64).collect::<Vec<_>>(),
        "seq continues after session_created (1)"
    );
    assert!(run.iter().any(|e| e["event"] == "agent.final_answer"));

    // Another connection may not touch it without the token...
    sessions.cancel(&b, &sid);
    assert_eq!(drain(&out_b)[0]["code"], "session_not_found");
    // ...but with it, resumes and gets the whole log replayed.
    sessions.resume_session(&mut b, &sid, Some(&token), 0).await;
    let replay = drain(&out_b);
    assert_eq!(replay[0]["event"], "agent.session_resumed");
    assert_eq!(replay[0]["recovered"], true);
    assert_eq!(
        replay.len() as u64 - 1,
        replay[0]["last_seq"].as_u64().unwrap()
    );

    // A's connection goes: its other session expires after the resume window; the resumed one
    // belongs to B now and stays.
    sessions.release(&a);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sessions.count(), 2);
    sessions.release(&b);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sessions.count(), 0);
    assert_eq!(runtime.metrics.sessions.get(), 0);
}
