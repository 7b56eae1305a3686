//! Deployment files, tested for real: Debian's nginx with `deploy/nginx.conf` in front of the
//! host, a WebSocket conversation and `/health` through it.
//!
//! Needs nginx (`apt-get install nginx`; `.ci/run` installs it). Where it is missing the
//! test says so and passes, unless `MYAGENT_REQUIRE_NGINX=1` (set by `.ci/run`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use myagent_tests::{http_get, plugin_lib, workspace_root, Client, FakeLlm, Host, Proc, TempDir};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn nginx_binary() -> Option<String> {
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .find(|p| Path::new(p).exists())
    .map(|p| p.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real nginx serving deploy/nginx.conf (and deploy/nginx-tls.conf when given a certificate)
/// as shipped, with only addresses, ports and file paths changed for loopback.
struct Nginx {
    proc: Proc,
    addr: String,
    tls_addr: Option<String>,
    _dir: TempDir,
}

impl Drop for Nginx {
    /// nginx's master stops its workers on SIGTERM; killed outright, it would leave them running
    /// (as user nobody, holding the test's port) after the test.
    fn drop(&mut self) {
        if !self.proc.terminate(Duration::from_secs(5)) {
            eprintln!(
                "nginx (pid {}) did not stop on SIGTERM within 5 s",
                self.proc.pid()
            );
        }
    }
}

impl Nginx {
    fn start(nginx: &str, upstream_port: u16, tls: Option<(&Path, &Path)>) -> Nginx {
        Self::start_conf(nginx, "nginx.conf", &[("agent:8080", upstream_port)], tls)
    }

    /// `conf` from deploy/, its upstream servers (`name:port` as shipped) pointed at `ports`.
    fn start_conf(
        nginx: &str,
        conf: &str,
        upstreams: &[(&str, u16)],
        tls: Option<(&Path, &Path)>,
    ) -> Nginx {
        let root = workspace_root().join("deploy");
        let dir = TempDir::new("nginx");
        let d = dir.path().display();
        let shipped = std::fs::read_to_string(root.join(conf)).unwrap();
        let snippet = "include /etc/nginx/snippets/myagent-proxy.conf;";
        assert!(shipped.contains("listen 80;") && shipped.contains(snippet));
        let port = free_port();
        let local_snippet = format!("include {d}/proxy.conf;");
        let mut site = shipped
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace(snippet, &local_snippet);
        for (name, upstream_port) in upstreams {
            let server = format!("server {name}");
            assert!(site.contains(&server), "{conf} has no `{server}`");
            site = site.replace(&server, &format!("server 127.0.0.1:{upstream_port}"));
        }
        std::fs::write(dir.path().join("site.conf"), site).unwrap();
        std::fs::copy(root.join("nginx-proxy.conf"), dir.path().join("proxy.conf")).unwrap();
        let mut includes = format!("include {d}/site.conf;");
        let mut tls_addr = None;
        if let Some((cert, key)) = tls {
            let shipped = std::fs::read_to_string(root.join("nginx-tls.conf")).unwrap();
            assert!(shipped.contains("listen 443 ssl;") && shipped.contains(snippet));
            let tls_port = free_port();
            let conf = shipped
                .replace(
                    "listen 443 ssl;",
                    &format!("listen 127.0.0.1:{tls_port} ssl;"),
                )
                .replace(
                    "/etc/nginx/certs/fullchain.pem",
                    &cert.display().to_string(),
                )
                .replace("/etc/nginx/certs/privkey.pem", &key.display().to_string())
                .replace(snippet, &local_snippet);
            std::fs::write(dir.path().join("tls.conf"), conf).unwrap();
            includes.push_str(&format!("\n  include {d}/tls.conf;"));
            tls_addr = Some(format!("localhost:{tls_port}"));
        }
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 {includes}\n}}\n"
            ),
        )
        .unwrap();
        let check = Command::new(nginx)
            .args(["-t", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"]);
        let proc = Proc::spawn(cmd);
        let addr = format!("127.0.0.1:{port}");
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(&addr).is_ok()
        });
        assert!(up, "nginx did not start listening on {addr}");
        Nginx {
            proc,
            addr,
            tls_addr,
            _dir: dir,
        }
    }
}

fn nginx_or_skip(test: &str) -> Option<String> {
    let found = nginx_binary();
    if found.is_none() {
        if std::env::var("MYAGENT_REQUIRE_NGINX").is_ok_and(|v| v == "1") {
            panic!("nginx not found (apt-get install nginx)");
        }
        eprintln!("SKIPPED {test}: nginx not found (apt-get install nginx)");
    }
    found
}

#[tokio::test]
async fn nginx_config_proxies_websockets_and_health() {
    let Some(nginx) = nginx_or_skip("nginx_config_proxies_websockets_and_health") else {
        return;
    };
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let shipped =
        std::fs::read_to_string(workspace_root().join("deploy/nginx-proxy.conf")).unwrap();
    let nginx = Nginx::start(&nginx, host.port, None);
    let (base, nginx_proc) = (nginx.addr.clone(), &nginx.proc);

    // /health and the web page through nginx.
    let health = http_get(&format!("http://{base}/health"));
    assert!(health.contains("\"status\":\"healthy\""), "{health}");
    // The access log has the path, never the query string (tokens travel there sometimes).
    http_get(&format!("http://{base}/health?token=s3cret-in-url"));
    std::thread::sleep(Duration::from_millis(300));
    let log = nginx_proc.lines.lock().unwrap().join("\n");
    assert!(
        log.contains("GET /health HTTP/1.1"),
        "nginx access log: {log}"
    );
    assert!(
        !log.contains("s3cret-in-url"),
        "the access log records query strings: {log}"
    );
    let page = http_get(&format!("http://{base}/"));
    assert!(page.contains("<title>myagent-host</title>"));

    // The document's flow over WebSocket through nginx, on `/` and on `/ws`.
    for path in ["", "/ws"] {
        let (mut c, sid, _) = Client::with_session(&format!("ws://{base}{path}")).await;
        c.ask(&sid, "What's the weather in Paris?").await;
        let call = c.until("agent.tool_call").await;
        assert_eq!(call["metadata"]["tool"], "get_weather");
        let answer = c.until("agent.final_answer").await;
        assert!(answer["content"].as_str().unwrap().contains("Paris"));
    }
    // A connection quiet for longer than nginx's default 60 s read timeout would be cut by a
    // config without the long timeouts; assert the shipped one has them.
    assert!(shipped.contains("proxy_read_timeout 3600s;"));

    // Stopped, nginx leaves nothing behind: its workers (which hold the listening socket) end
    // with the master.
    drop(nginx);
    assert!(
        std::net::TcpStream::connect(&base).is_err(),
        "something still accepts on {base} after nginx was stopped (its workers outlived it)"
    );
}

#[tokio::test]
async fn nginx_tls_config_serves_wss_with_a_certificate() {
    let Some(nginx) = nginx_or_skip("nginx_tls_config_serves_wss_with_a_certificate") else {
        return;
    };
    // A self-signed certificate for localhost, made the way deploy/nginx-tls.conf says.
    let certs = TempDir::new("certs");
    let (cert, key) = (
        certs.path().join("fullchain.pem"),
        certs.path().join("privkey.pem"),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("openssl: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) if std::env::var("MYAGENT_REQUIRE_NGINX").is_ok_and(|v| v == "1") => panic!("openssl: {e}"),
        Err(_) => return eprintln!("SKIPPED nginx_tls_config_serves_wss_with_a_certificate: no openssl (apt-get install openssl)"),
    }
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let nginx = Nginx::start(&nginx, host.port, Some((&cert, &key)));
    let tls = nginx.tls_addr.clone().unwrap();

    // A client that trusts exactly this certificate (no "accept invalid" shortcut).
    let root = native_tls::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let url = format!("wss://{tls}/");
    let (ws, resp) = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(tokio_tungstenite::Connector::NativeTls(connector.clone())),
    )
    .await
    .expect("wss through nginx");
    assert_eq!(resp.status(), 101);
    let mut c = Client {
        ws,
        seen: Vec::new(),
    };
    assert_eq!(c.recv().await["event"], "system.connected");
    let (sid, _) = c.create_session().await;
    c.ask(&sid, "What's the weather in Paris?").await;
    assert_eq!(
        c.until("agent.tool_call").await["metadata"]["tool"],
        "get_weather"
    );
    assert!(c.until("agent.final_answer").await["content"]
        .as_str()
        .unwrap()
        .contains("Paris"));

    // A browser page served over https: its Origin is https://localhost:PORT; same origin.
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("https://{tls}").parse().unwrap());
    let r = tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        false,
        Some(tokio_tungstenite::Connector::NativeTls(connector.clone())),
    )
    .await;
    assert!(r.is_ok(), "same-origin https page refused: {:?}", r.err());
    // ...and a client that does not trust the certificate is refused by TLS.
    let untrusted = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(tokio_tungstenite::Connector::NativeTls(
            native_tls::TlsConnector::new().unwrap(),
        )),
    )
    .await;
    assert!(untrusted.is_err());
    // Plain HTTP keeps working beside it.
    assert!(http_get(&format!("http://{}/health", nginx.addr)).contains("healthy"));
}

/// deploy/nginx-multi.conf in front of two hosts sharing one Redis: a client that reconnects
/// through nginx lands on the other host and its session goes on there, history and all.
#[tokio::test]
async fn nginx_in_front_of_two_hosts_sharing_sessions_through_redis() {
    let Some(nginx) = nginx_or_skip("nginx_in_front_of_two_hosts_sharing_sessions_through_redis")
    else {
        return;
    };
    let Some(redis) = myagent_tests::Redis::start() else {
        return;
    };
    let conf = std::fs::read_to_string(workspace_root().join("deploy/nginx-multi.conf")).unwrap();
    // No directive pins a client to a host.
    let directives: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for sticky in ["ip_hash", "sticky", "hash "] {
        assert!(
            !directives.iter().any(|l| l.starts_with(sticky)),
            "nginx-multi.conf pins clients ({sticky})"
        );
    }
    let llm = FakeLlm::start();
    let url = redis.url();
    let store = ["--store", url.as_str()];
    let a = Host::start(&plugin_lib("testkit_agent"), &llm, &store);
    let b = Host::start(&plugin_lib("testkit_agent"), &llm, &store);
    let nginx = Nginx::start_conf(
        &nginx,
        "nginx-multi.conf",
        &[("agent-a:8080", a.port), ("agent-b:8080", b.port)],
        None,
    );
    let ws = format!("ws://{}", nginx.addr);
    // The first client holds one host; least_conn sends the next connection to the other.
    let (mut first, sid, token) = Client::with_session(&ws).await;
    llm.script(serde_json::json!([{"text": "Noted: plum."}]));
    first.ask(&sid, "Remember plum.").await;
    let last_seq = first.until("agent.ready").await["seq"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = |h: &Host| h.metric("myagent_runs_started_total");
    let (on_a, on_b) = (runs(&a), runs(&b));
    assert_eq!(on_a + on_b, 1);

    let mut second = Client::connect(&ws).await;
    second
        .send(serde_json::json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": last_seq}))
        .await;
    let resumed = second
        .until_any(&["agent.session_resumed", "agent.error"])
        .await;
    assert_eq!(resumed["event"], "agent.session_resumed", "{resumed}");
    llm.script(serde_json::json!([{"text": "It was plum."}]));
    second.ask(&sid, "Which fruit?").await;
    assert_eq!(
        second.until("agent.final_answer").await["content"],
        "It was plum."
    );
    // That turn ran on the other host, with the first turn in its history.
    assert_eq!((runs(&a) - on_a, runs(&b) - on_b), (on_b, on_a));
    let req = llm.requests().pop().unwrap();
    assert_eq!(
        myagent_tests::texts_of(&req, "user"),
        ["Remember plum.", "Which fruit?"]
    );
}
