//! Bounded resources and abuse: slowloris, session and connection caps, runaway tools, and a
//! shutdown that ends whatever plugin threads are doing. Each test starts its own host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use myagent_tests::{plugin_lib, Client, FakeLlm, Host, TempDir};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket request to the host that says it was forwarded for `ip`.
fn forwarded_for(
    host: &Host,
    ip: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = host.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    req
}

async fn connected(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> Client {
    let mut c = Client::connect_req(req).await.expect("websocket connect");
    assert_eq!(c.recv().await["event"], "system.connected");
    c
}

/// Asks for a session; returns its id, or the error event.
async fn try_create(c: &mut Client) -> Result<String, Value> {
    c.send(json!({"event": "user.create_session", "timestamp": 0}))
        .await;
    let v = c.until_any(&["agent.session_created", "agent.error"]).await;
    match v["event"].as_str() {
        Some("agent.session_created") => Ok(v["session_id"].as_str().unwrap().to_owned()),
        _ => Err(v),
    }
}

#[tokio::test]
async fn slowloris_connections_are_closed_and_free_their_slots() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--header-read-timeout", "1", "--max-connections", "24"],
    );
    let addr = format!("127.0.0.1:{}", host.port);
    // Fill every slot: half a request line, a complete line with half the headers, nothing at
    // all, and a finished request left idle on keep-alive.
    let mut socks = Vec::new();
    for i in 0..24 {
        let mut s = TcpStream::connect(&addr).unwrap();
        match i % 4 {
            0 => s.write_all(b"GET /he").unwrap(),
            1 => s
                .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
                .unwrap(),
            2 => {}
            _ => {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            }
        }
        socks.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    // The cap is full: a newcomer is turned away.
    let refused = tokio_tungstenite::connect_async(host.ws_url()).await;
    assert!(refused.is_err(), "the cap should be full");

    // Within the header timeout (+ slack) every one of them is closed by the server...
    let t0 = Instant::now();
    for s in &mut socks {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // e.g. a 408 before the close
            }
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        t0.elapsed()
    );
    // ...and their slots are free again.
    let mut c = Client::connect(&host.ws_url()).await;
    assert_eq!(c.recv().await["event"], "system.connected");
    assert!(host.metric("myagent_header_timeouts_total") >= 24);
}

#[tokio::test]
async fn session_caps_refuse_with_too_many_sessions_and_free_on_close() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--max-sessions",
            "3",
            "--max-sessions-per-ip",
            "2",
            "--trusted-proxy",
            "127.0.0.1",
            "--resume-window",
            "1",
        ],
    );
    let mut a = connected(forwarded_for(&host, "203.0.113.1")).await;
    let a1 = try_create(&mut a).await.unwrap();
    try_create(&mut a).await.unwrap();
    let e = try_create(&mut a).await.unwrap_err();
    assert_eq!(e["code"], "too_many_sessions", "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("your address (limit 2)"),
        "{e}"
    );

    // Another address (also through the proxy) gets the one session left on the server.
    let mut b = connected(forwarded_for(&host, "203.0.113.2")).await;
    try_create(&mut b).await.unwrap();
    let e = try_create(&mut b).await.unwrap_err();
    assert_eq!(e["code"], "too_many_sessions", "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("this server (limit 3)"),
        "{e}"
    );
    assert_eq!(host.metric("myagent_sessions_refused_total"), 2);

    // Closing a session makes room.
    a.send(json!({"event": "user.close_session", "session_id": a1}))
        .await;
    a.until("agent.session_closed").await;
    try_create(&mut b).await.unwrap();

    // A client that vanishes keeps its sessions for the resume window only.
    drop(a);
    let mut c = connected(forwarded_for(&host, "203.0.113.3")).await;
    assert!(try_create(&mut c).await.is_err());
    tokio::time::sleep(Duration::from_millis(1800)).await;
    try_create(&mut c).await.unwrap();
}

#[tokio::test]
async fn per_address_connection_cap_answers_429_and_ignores_untrusted_forwarding() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--max-connections-per-ip",
            "2",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    );
    let c1 = connected(forwarded_for(&host, "198.51.100.7")).await;
    let _c2 = connected(forwarded_for(&host, "198.51.100.7")).await;
    match Client::connect_req(forwarded_for(&host, "198.51.100.7")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        Err(e) => panic!("expected HTTP 429, got {e}"),
        Ok(_) => panic!("a third connection from one address was accepted"),
    }
    // Other addresses are not affected; a closed connection frees its place.
    let _d = connected(forwarded_for(&host, "198.51.100.8")).await;
    drop(c1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _c3 = connected(forwarded_for(&host, "198.51.100.7")).await;
    assert_eq!(host.metric("myagent_connections_refused_per_ip_total"), 1);

    // Without --trusted-proxy the header is the client's claim and is ignored: every
    // connection from 127.0.0.1 counts as 127.0.0.1, whatever it says.
    let direct = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--max-connections-per-ip", "2"],
    );
    let _x = connected(forwarded_for(&direct, "192.0.2.1")).await;
    let _y = connected(forwarded_for(&direct, "192.0.2.2")).await;
    assert!(Client::connect_req(forwarded_for(&direct, "192.0.2.3"))
        .await
        .is_err());
}

/// Security round 3, item 6: a trusted proxy that appends its own `X-Forwarded-For` line (after
/// the one the client sent) is read right — every line, the right-most untrusted entry — and a
/// local proxy reaching a dual-stack listener as `::ffff:127.0.0.1` matches `--trusted-proxy
/// 127.0.0.0/8`: clients behind it neither choose their address nor share one budget.
#[tokio::test]
async fn a_proxys_own_header_line_and_a_dual_stack_peer_are_read_right() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--host",
            "::",
            "--max-connections-per-ip",
            "2",
            "--trusted-proxy",
            "127.0.0.0/8",
        ],
    );
    let through_proxy = |spoof: &str, real: &str| {
        let mut req = host.ws_url().into_client_request().unwrap();
        let h = req.headers_mut();
        h.append("x-forwarded-for", spoof.parse().unwrap());
        h.append("x-forwarded-for", real.parse().unwrap());
        req
    };
    let _a = connected(through_proxy("10.0.0.1", "203.0.113.9")).await;
    let _b = connected(through_proxy("10.0.0.2", "203.0.113.9")).await;
    match Client::connect_req(through_proxy("10.0.0.3", "203.0.113.9")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        Err(e) => panic!("expected HTTP 429, got {e}"),
        Ok(_) => panic!("the client chose its address with its own header line"),
    }
    // Another client behind the same proxy has its own budget.
    let _c = connected(through_proxy("10.0.0.1", "203.0.113.10")).await;
    let _d = connected(through_proxy("10.0.0.1", "203.0.113.10")).await;
    assert_eq!(host.metric("myagent_connections_refused_per_ip_total"), 1);
}

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

/// CPU the host burns over `window`, starting now.
fn cpu_over(host: &Host, window: Duration) -> Duration {
    let before = host.cpu_time();
    std::thread::sleep(window);
    host.cpu_time() - before
}

#[tokio::test]
async fn a_runaway_query_stops_at_its_deadline_or_on_cancel_and_the_cpu_goes_idle() {
    let llm = FakeLlm::start();
    let data = TempDir::new("business");
    let host = Host::start_with_env(
        &plugin_lib("business_agent"),
        &llm,
        &["--tool-timeout", "1"],
        &[("BUSINESS_AGENT_DATA", data.path())],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    let t0 = Instant::now();
    c.ask(
        &sid,
        &format!("call:query_database {}", json!({ "query": ENDLESS })),
    )
    .await;
    let r = c.until("agent.tool_result").await;
    assert_eq!(r["metadata"]["status"], "failed");
    let text = r["content"].as_str().unwrap();
    assert!(
        text.contains("timed out") || text.contains("time limit"),
        "{r}"
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    c.until("agent.final_answer").await;
    // The query really stopped: the host is idle, and no tool thread is left behind.
    let burnt = cpu_over(&host, Duration::from_secs(2));
    assert!(
        burnt < Duration::from_millis(500),
        "host used {burnt:?} of CPU in 2 s after the timeout"
    );
    assert_eq!(host.metric("myagent_tools_abandoned"), 0);

    // The same query cancelled by the user long before its deadline.
    let slow = Host::start_with_env(
        &plugin_lib("business_agent"),
        &llm,
        &["--tool-timeout", "60"],
        &[("BUSINESS_AGENT_DATA", data.path())],
    );
    let (mut c, sid, _) = Client::with_session(&slow.ws_url()).await;
    c.ask(
        &sid,
        &format!("call:query_database {}", json!({ "query": ENDLESS })),
    )
    .await;
    c.until("agent.tool_call").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send(json!({"event": "user.cancel", "session_id": sid}))
        .await;
    c.until("agent.interrupted").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let burnt = cpu_over(&slow, Duration::from_secs(2));
    assert!(
        burnt < Duration::from_millis(500),
        "host used {burnt:?} of CPU in 2 s after the cancel"
    );
    assert_eq!(slow.metric("myagent_tools_abandoned"), 0);
    assert!(slow.metric("myagent_tools_abandoned_total") >= 1);
}

/// Waits up to `limit` for the host to exit; returns how long it took.
fn exit_within(host: &mut Host, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if host.proc.child.try_wait().unwrap().is_some() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "host still running {limit:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_exits_in_time_with_a_wedged_tool_thread() {
    let llm = FakeLlm::start();
    // A tool that ignores its context and sleeps a minute (testkit's timeout is 2 s): after
    // the timeout its thread is abandoned, still running.
    let mut host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--shutdown-timeout", "2"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, r#"call:sleep {"ms": 60000}"#).await;
    let r = c.until("agent.tool_result").await;
    assert!(r["content"].as_str().unwrap().contains("timed out"), "{r}");
    assert_eq!(host.metric("myagent_tools_abandoned"), 1);
    // A second one still inside its call when the signal comes.
    let (mut d, sid2, _) = Client::with_session(&host.ws_url()).await;
    d.ask(&sid2, r#"call:sleep {"ms": 60000}"#).await;
    d.until("agent.tool_call").await;
    host.terminate();
    let took = exit_within(&mut host, Duration::from_secs(4));
    assert!(
        took <= Duration::from_secs(3),
        "exit took {took:?} (shutdown timeout 2 s)"
    );
    assert_eq!(
        d.until("agent.interrupted").await["session_id"],
        sid2.as_str()
    );
}

#[tokio::test]
async fn a_hanging_event_hook_times_out_and_a_second_signal_exits_at_once() {
    let llm = FakeLlm::start();
    let mut host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--shutdown-timeout", "30"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    // A custom-event hook that hangs gets the tool timeout (testkit: 2 s), like a tool.
    let t0 = Instant::now();
    c.send(json!({"event": "testkit.sleep", "session_id": sid, "data": {"ms": 60000}}))
        .await;
    let e = c.until("agent.error").await;
    assert_eq!(e["code"], "custom_event_failed", "{e}");
    assert!(e["error"].as_str().unwrap().contains("timed out"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // Shutdown waits for session work (here a hook within its 2 s), but a second signal does not.
    c.send(json!({"event": "testkit.sleep", "session_id": sid, "data": {"ms": 60000}}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        host.proc.child.try_wait().unwrap().is_none(),
        "still draining after the first signal"
    );
    host.terminate();
    let took = exit_within(&mut host, Duration::from_secs(3));
    assert!(
        took < Duration::from_millis(800),
        "second signal took {took:?}"
    );
    let status = host.proc.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
}

fn threads_of(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Security round 3, item 7: custom events cannot fan out without bound — 4 per session wait
/// for the plugin's hook (more: `too_many_requests`), and one worker runs at most 64 calls
/// with 256 waiting (more: refused as busy), so its threads stay bounded and it keeps serving.
#[tokio::test]
async fn custom_events_are_bounded_per_session_and_per_worker() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let health: Value = serde_json::from_str(&host.http("/health")).unwrap();
    let worker = health["plugin"]["worker_pid"].as_u64().expect("a worker");
    let sleep =
        |sid: &str| json!({"event": "testkit.sleep", "session_id": sid, "data": {"ms": 1500}});

    // One session, 50 at once: 4 are run, 46 refused.
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    for _ in 0..50 {
        c.send(sleep(&sid)).await;
    }
    let (mut pongs, mut refused) = (0, 0);
    while pongs + refused < 50 {
        let e = c.until_any(&["testkit.pong", "agent.error"]).await;
        match e["event"].as_str() {
            Some("testkit.pong") => pongs += 1,
            _ => {
                assert_eq!(e["code"], "too_many_requests", "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((pongs, refused), (4, 46));

    // 100 sessions × 4: more than the worker's 64 places and 256 waiting.
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Client::with_session(&host.ws_url()).await);
    }
    for (c, sid, _) in clients.iter_mut() {
        for _ in 0..4 {
            c.send(sleep(sid)).await;
        }
    }
    let mut most_threads = 0;
    let (mut busy, mut answered) = (0, 0);
    for (c, _, _) in clients.iter_mut() {
        for _ in 0..4 {
            most_threads = most_threads.max(threads_of(worker));
            let e = c.until_any(&["testkit.pong", "agent.error"]).await;
            answered += 1;
            if e["event"] == "agent.error" {
                assert_eq!(e["code"], "custom_event_failed", "{e}");
                if e["error"].as_str().unwrap().contains("busy") {
                    busy += 1;
                }
            }
        }
    }
    assert_eq!(answered, 400);
    assert!(busy >= 400 - 64 - 256, "only {busy} refused as busy");
    assert!(
        most_threads <= 64 + 8,
        "the worker ran {most_threads} threads"
    );
    // The worker was never lost, and serves the next event at once.
    assert_eq!(host.metric("myagent_plugin_worker_crashes_total"), 0);
    c.send(json!({"event": "testkit.ping", "session_id": sid}))
        .await;
    c.until("testkit.pong").await;
}

/// Security round 3, item 8: a client that interrupts in a loop cannot turn each message into a
/// model request — messages are rate-limited per session (`too_many_requests` past the
/// budget), and a burst of interrupting messages settles on the last one before it calls.
#[tokio::test]
async fn an_interrupt_storm_costs_few_model_calls() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--on-busy", "interrupt", "--max-runs-per-minute", "20"],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    // The first streams for seconds; the others interrupt it, and each other.
    c.ask(&sid, "bench:200@20").await;
    c.until("agent.partial_answer").await;
    for i in 1..100 {
        c.send(json!({"event": "user.message", "session_id": sid, "content": format!("say:answer {i}")}))
            .await;
    }
    let mut refused = 0;
    let last = loop {
        let e = c.until_any(&["agent.error", "agent.final_answer"]).await;
        if e["event"] == "agent.error" {
            assert_eq!(e["code"], "too_many_requests", "{e}");
            assert!(
                e["error"]
                    .as_str()
                    .unwrap()
                    .contains("this session may send 20 a minute"),
                "{e}"
            );
            refused += 1;
            continue;
        }
        break e;
    };
    assert_eq!(refused, 80, "20 a minute: the rest refused");
    // The 20 admitted messages interrupted each other; only the last one was answered, and the
    // model was asked a handful of times, not 20.
    assert_eq!(last["content"], "answer 19", "{last}");
    let calls = llm.requests().len();
    assert!(calls <= 3, "{calls} model calls for one burst");
}
