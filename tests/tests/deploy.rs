//! Deployment files, tested for real: Debian's nginx with `deploy/nginx.conf` in front of the
//! host, a WebSocket conversation and `/health` through it.
//!
//! Needs nginx (`apt-get install nginx`; `.ci/run` installs it). Where it is missing the
//! test says so and passes, unless `MYAGENT_REQUIRE_NGINX=1` (set by `.ci/run`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use myagent_tests::{http_get, plugin_lib, workspace_root, Client, FakeLlm, Host, Proc, TempDir};

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

#[tokio::test]
async fn nginx_config_proxies_websockets_and_health() {
    let Some(nginx) = nginx_binary() else {
        if std::env::var("MYAGENT_REQUIRE_NGINX").is_ok_and(|v| v == "1") {
            panic!("nginx not found (apt-get install nginx)");
        }
        eprintln!("SKIPPED nginx_config_proxies_websockets_and_health: nginx not found");
        return;
    };
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);

    // deploy/nginx.conf as shipped, with only the two addresses changed for loopback.
    let shipped = std::fs::read_to_string(workspace_root().join("deploy/nginx.conf")).unwrap();
    assert!(shipped.contains("server agent:8080;") && shipped.contains("listen 80;"));
    let port = free_port();
    let site = shipped
        .replace(
            "server agent:8080;",
            &format!("server 127.0.0.1:{};", host.port),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    let dir = TempDir::new("nginx");
    let d = dir.path().display();
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let check = Command::new(&nginx)
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
    let mut cmd = Command::new(&nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"]);
    let nginx_proc = Proc::spawn(cmd);
    let base = format!("127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&base).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "nginx did not start listening on {base}");

    // /health and the web page through nginx.
    let health = http_get(&format!("http://{base}/health"));
    assert!(health.contains("\"status\":\"healthy\""), "{health}");
    // The access log has the path, never the query string (tokens travel there sometimes).
    http_get(&format!("http://{base}/health?token=s3cret-in-url"));
    std::thread::sleep(Duration::from_millis(300));
    let log = nginx_proc.lines.lock().unwrap().join("\n");
    assert!(log.contains("GET /health HTTP/1.1"), "nginx access log: {log}");
    assert!(!log.contains("s3cret-in-url"), "the access log records query strings: {log}");
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
}
