//! Security: each finding of the audit rebuilt as a probe against a real host (its own process,
//! a scripted model), asserting the bound or refusal that closes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use myagent_tests::{plugin_lib, Client, FakeLlm, Host};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

fn request(host: &Host, headers: &[(&'static str, &str)]) -> Request {
    let mut req = host.ws_url().into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    req
}

async fn status_of(req: Request) -> u16 {
    match Client::connect_req(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

/// A plain HTTP GET with a chosen Host header; returns the status code.
fn get_with_host(host: &Host, path: &str, host_header: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", host.port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

#[tokio::test]
async fn cross_site_pages_and_rebound_host_names_are_refused_by_default() {
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let here = format!("127.0.0.1:{}", host.port);
    // Another site's page in the user's browser: refused (it would read the agent's answers).
    assert_eq!(
        status_of(request(&host, &[("origin", "https://evil.example")])).await,
        403
    );
    // The page this host serves, a localhost dev page, and non-browser clients: accepted.
    assert_eq!(
        status_of(request(&host, &[("origin", &format!("http://{here}"))])).await,
        101
    );
    assert_eq!(
        status_of(request(&host, &[("origin", "http://localhost:3000")])).await,
        101
    );
    assert_eq!(status_of(request(&host, &[])).await, 101);
    // DNS rebinding: evil.example resolving to this machine; the browser sends its own name.
    let rebound = format!("evil.example:{}", host.port);
    let req = request(
        &host,
        &[("host", &rebound), ("origin", &format!("http://{rebound}"))],
    );
    assert_eq!(status_of(req).await, 421);
    assert_eq!(get_with_host(&host, "/health", &rebound), 421);
    assert_eq!(get_with_host(&host, "/health", &here), 200);

    // The operator opens it up explicitly.
    let open = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--allowed-origin", "*", "--allowed-host", "agent.example"],
    );
    assert_eq!(
        status_of(request(&open, &[("origin", "https://evil.example")])).await,
        101
    );
    assert_eq!(get_with_host(&open, "/health", "agent.example"), 200);
    assert_eq!(get_with_host(&open, "/health", "evil.example"), 421);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let llm = FakeLlm::start();
    // A queue too big to overflow: only the write timeout can notice this client.
    let mut host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--outbound-queue",
            "10000000",
            "--write-timeout",
            "2",
            "--shutdown-timeout",
            "5",
        ],
    );
    // A tiny receive buffer so the server's writes block soon after the client stops reading.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock
        .connect(([127, 0, 0, 1], host.port).into())
        .await
        .unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(host.ws_url(), stream)
        .await
        .unwrap();
    let mut c = Client {
        ws,
        seen: Vec::new(),
    };
    c.recv().await;
    let (sid, _) = c.create_session().await;
    c.ask(&sid, "stream:100000").await;
    // Stop reading. The server fills the socket, then its write waits: within the write
    // timeout (plus the time to fill the buffers) the connection is dropped.
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if host.metric("myagent_connections") == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the wedged connection is still open"
        );
    }
    assert!(host.metric("myagent_slow_client_disconnects_total") >= 1);
    // Its session is detached, not lost: it waits for a resume.
    assert_eq!(host.metric("myagent_sessions"), 1);
    // And shutdown is not held up by it.
    host.terminate();
    let t0 = Instant::now();
    while host.proc.child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "shutdown waited on a wedged writer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
}

#[tokio::test]
async fn unauthenticated_clients_hold_little_and_not_for_long() {
    use tokio_tungstenite::tungstenite::Message;
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--auth-token", "s3cret", "--auth-timeout", "2"],
    );
    // A warning about a token on the command line.
    host.proc
        .wait_stderr("visible to every user", Duration::from_secs(5));
    let big = "x".repeat(60 * 1024); // under the 64 KiB message limit, over the pre-auth frame limit
                                     // Clients that never send a token but push large frames: dropped at once.
    let mut dropped = 0;
    for _ in 0..20 {
        let mut c = Client::connect(&host.ws_url()).await;
        assert_eq!(c.recv().await["auth_required"], true);
        let _ = c.ws.send(Message::text(big.clone())).await;
        if c.recv_timeout(Duration::from_secs(3)).await.is_none() {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 20);
    // A client that only answers pings (tungstenite does) and never authenticates: closed with
    // 1008 at the deadline.
    let mut idle = Client::connect(&host.ws_url()).await;
    idle.recv().await;
    let t0 = Instant::now();
    assert_eq!(idle.close_code(Duration::from_secs(5)).await, Some(1008));
    assert!(t0.elapsed() < Duration::from_secs(4));

    // Once authenticated (header or first message), large messages are fine again.
    let mut req = host.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let mut ok = Client::connect_req(req).await.unwrap();
    ok.recv().await;
    ok.send(json!({"event": "user.message", "session_id": "nope", "content": big}))
        .await;
    assert_eq!(ok.until("agent.error").await["code"], "session_not_found");
    let mut first = Client::connect(&host.ws_url()).await;
    first.recv().await;
    first
        .send(json!({"event": "user.create_session", "token": "s3cret"}))
        .await;
    let created = first.until("agent.session_created").await;
    let sid = created["session_id"].as_str().unwrap();
    first
        .send(json!({"event": "user.cancel", "session_id": sid, "pad": big}))
        .await;
    assert_eq!(first.until("agent.interrupted").await["session_id"], sid);
}

#[tokio::test]
async fn the_session_cap_holds_on_resume_and_replay_memory_is_bounded_overall() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--max-sessions-per-connection",
            "2",
            "--replay-buffer-bytes",
            "65536",
            "--replay-budget-bytes",
            "200000",
            // The model stream below is unpaced (2,000 chunks at once): on a loaded machine the
            // run can get 1,024 events ahead of the writer, which the default queue treats as a
            // slow client (4008). That policy is tested elsewhere; here it would only add noise.
            "--outbound-queue",
            "100000",
        ],
    );
    // Two connections pass sessions back and forth: neither may end up with more than 2.
    let mut a = Client::connect(&host.ws_url()).await;
    a.recv().await;
    let mut b = Client::connect(&host.ws_url()).await;
    b.recv().await;
    let s1 = a.create_session().await;
    let s2 = a.create_session().await;
    for (sid, token) in [&s1, &s2] {
        b.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token}))
            .await;
        b.until("agent.session_resumed").await;
    }
    a.create_session().await;
    a.create_session().await;
    // `a` held s1 before, but owns two others now: taking s1 back is over its cap.
    a.send(json!({"event": "user.resume_session", "session_id": s1.0, "resume_token": s1.1}))
        .await;
    let e = a.until_any(&["agent.session_resumed", "agent.error"]).await;
    assert_eq!(e["code"], "too_many_sessions", "{e}");

    // Ten sessions streaming ~70 KB each: the per-session buffer (64 KiB) would hold ~640 KB in
    // all; the global budget keeps the total near 200 KB, event overhead counted.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&host.ws_url()).await;
        c.recv().await;
        for _ in 0..2 {
            let (sid, _) = c.create_session().await;
            c.ask(&sid, "stream:2000").await;
            c.until("agent.ready").await;
        }
        clients.push(c);
    }
    let held = host.metric("myagent_replay_bytes");
    assert!(held <= 200_000 + 4096, "replay buffers hold {held} bytes");
    assert!(held > 100_000, "the budget is used, not emptied: {held}");
}

#[tokio::test]
async fn smaller_findings_events_seq_metrics_and_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let llm = FakeLlm::start();
    let dir = myagent_tests::TempDir::new("sec-files");
    let trace = dir.path().join("trace.jsonl");
    let record = dir.path().join("record.jsonl");
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &[
            "--metrics-token",
            "m3trics",
            "--resume-window",
            "1",
            "--trace-file",
            trace.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
        ],
    );
    // An event over 4 MiB (a plugin's custom event here) is replaced by an error in its place;
    // the connection stays.
    let (mut c, sid, token) = Client::with_session(&host.ws_url()).await;
    c.send(json!({"event": "testkit.big", "session_id": sid, "data": {"bytes": 5_000_000}}))
        .await;
    let e = c.until("agent.error").await;
    assert_eq!(e["code"], "event_too_large", "{e}");
    c.send(json!({"event": "testkit.big", "session_id": sid, "data": {"bytes": 10}}))
        .await;
    assert_eq!(c.until("testkit.big").await["blob"], "bbbbbbbbbb");
    c.ask(&sid, "say:hello").await;
    c.until("agent.final_answer").await;

    // Traces and recordings hold conversations: private to the user.
    for f in [&trace, &record] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    // /metrics behind its token.
    let url = format!("http://127.0.0.1:{}/metrics", host.port);
    assert!(myagent_tests::http_get_raw(&url).starts_with("HTTP/1.1 401"));
    let mut s = TcpStream::connect(("127.0.0.1", host.port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer m3trics\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("myagent_sessions 1"),
        "{out}"
    );

    // A resume from u64::MAX: no overflow, and the session is still freed after its window.
    drop(c);
    let mut b = Client::connect(&host.ws_url()).await;
    b.recv().await;
    b.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": u64::MAX})).await;
    let r = b.until("agent.session_resumed").await;
    assert_eq!(r["replayed"], 0);
    b.ask(&sid, "say:still here").await;
    assert_eq!(b.until("agent.final_answer").await["content"], "still here");
    drop(b);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(host.http_health_sessions() == 0);
}

#[tokio::test]
async fn model_output_is_bounded_and_provider_errors_stay_in_the_log() {
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &[
            // A large outbound queue: not a slow-client test (see above).
            "--outbound-queue",
            "100000",
            "--max-model-output",
            "65536",
            "--max-tokens",
            "777",
            "--llm-call-timeout",
            "2",
            "--llm-retries",
            "0",
        ],
    );
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    // A streamed answer past the output cap: a clear error, and the session goes on.
    // (In 4 KiB chunks: a loaded debug build streams the cap well inside the 2 s deadline.)
    llm.script(json!([{"text": "w".repeat(200_000), "chunk_chars": 4096}]));
    c.ask(&sid, "x").await;
    let e = c.until("agent.error").await;
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("output limit of 65536 bytes"),
        "{e}"
    );
    c.until("agent.ready").await;
    // The same as one JSON body (a server that ignores `stream`), and a giant error body.
    llm.script(json!([{"text": "y".repeat(200_000), "non_streaming": true}]));
    c.ask(&sid, "x").await;
    let e = c.until("agent.error").await;
    assert!(e["error"].as_str().unwrap().contains("output limit"), "{e}");
    c.until("agent.ready").await;
    llm.script(json!([{"status": 500, "body": "z".repeat(20_000_000)}]));
    c.ask(&sid, "x").await;
    let e = c.until("agent.error").await;
    assert!(e["error"].as_str().unwrap().contains("HTTP 500"), "{e}");
    c.until("agent.ready").await;
    // max_tokens was asked for.
    assert_eq!(llm.requests().last().unwrap()["max_tokens"], 777);
    // A stream that keeps trickling (never idle long enough to stall) is cut at the deadline.
    let t0 = Instant::now();
    c.ask(&sid, "bench:1000@10").await;
    let e = c.until("agent.error").await;
    assert!(
        e["error"].as_str().unwrap().contains("longer than 2 s"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(6));
    c.until("agent.ready").await;
    // The provider's own words (OpenAI's 401 quotes the key's end) reach the log, not the client.
    llm.script(json!([{"status": 401, "body": json!({"error": {"message": "Incorrect API key provided: sk-proj-****************WXYZ."}}).to_string()}]));
    c.ask(&sid, "x").await;
    let e = c.until("agent.error").await;
    let text = e["error"].as_str().unwrap();
    assert!(text.contains("HTTP 401") && !text.contains("WXYZ"), "{e}");
    // The detail is in the server log.
    host.proc.wait_stderr("WXYZ", Duration::from_secs(5));
}

#[tokio::test]
async fn the_plugin_copy_directory_is_private_and_a_swapped_copy_is_never_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let llm = FakeLlm::start();
    let base = myagent_tests::TempDir::new("sec-copies");
    // A state directory that is a symlink (someone else's planted directory): refused.
    let real = base.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = myagent_tests::host_command()
        .args([
            "serve",
            plugin_lib("weather_agent").to_str().unwrap(),
            "--port",
            "0",
            "--state-dir",
        ])
        .arg(&link)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A race: something swaps every copy in the directory for another plugin as fast as it
    // can while the host starts. The host loads what it checked, through its descriptor.
    let dir = base.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let evil = plugin_lib("testkit_agent");
    for _ in 0..3 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, e, s) = (dir.clone(), evil.clone(), stop.clone());
        let swapper = std::thread::spawn(move || {
            let mut swaps = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = entry.path();
                    if p.extension().is_some_and(|x| x == "so") {
                        let tmp = d.join(".swap");
                        if std::fs::copy(&e, &tmp).is_ok() && std::fs::rename(&tmp, &p).is_ok() {
                            swaps += 1;
                        }
                    }
                }
            }
            swaps
        });
        let host = Host::start(
            &plugin_lib("weather_agent"),
            &llm,
            &["--state-dir", dir.to_str().unwrap()],
        );
        let mut c = Client::connect(&host.ws_url()).await;
        let hello = c.recv().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert_eq!(
            hello["agent"]["name"], "weather-assistant",
            "the host serves a swapped-in library ({swaps} swaps)"
        );
        assert!(swaps > 0, "the race did not happen");
    }
    // The directory was closed to others.
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[tokio::test]
async fn the_web_page_cannot_be_framed_and_runs_only_its_own_script() {
    // Security round 3, item 13 (headers): a page any site could frame could be clicked into
    // approving a tool call.
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("testkit_agent"), &llm, &[]);
    let resp = myagent_tests::http_get_raw(&format!("http://127.0.0.1:{}/", host.port));
    let head = resp.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    for needed in [
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "content-security-policy: default-src 'none'; script-src 'sha256-",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(head.contains(needed), "{needed} missing in:\n{head}");
    }
}

#[tokio::test]
async fn with_tokens_required_health_keeps_process_details_behind_the_metrics_token() {
    // Security round 3, item 13: `/health` showed the worker's pid to anyone; `/metrics` open
    // with tokens required, and nothing said so.
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &["--auth-token", "t0k3n-for-the-test"],
    );
    let anyone: serde_json::Value = serde_json::from_str(&host.http("/health")).unwrap();
    assert_eq!(anyone["status"], "healthy");
    assert!(anyone["plugin"]["worker_pid"].is_null(), "{anyone}");
    host.proc
        .wait_stderr("/metrics is open to anyone", Duration::from_secs(5));
    let host = Host::start(
        &plugin_lib("testkit_agent"),
        &llm,
        &[
            "--auth-token",
            "t0k3n-for-the-test",
            "--metrics-token",
            "m3trics",
        ],
    );
    let port = host.port;
    let get = |auth: Option<&str>| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let extra = auth
            .map(|a| format!("Authorization: Bearer {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert!(get(None)["plugin"]["worker_pid"].is_null());
    assert!(get(Some("m3trics"))["plugin"]["worker_pid"]
        .as_u64()
        .is_some());
    assert!(!host
        .proc
        .stderr_text()
        .contains("/metrics is open to anyone"));
}
