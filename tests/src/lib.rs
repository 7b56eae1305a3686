//! Test support for the end-to-end suite: builds the real host and plugins with cargo, starts
//! the real `myagent-host` and `fake-llm` processes on loopback, and talks to them with a real
//! WebSocket client.

pub mod client;
pub mod fake;
pub mod otlp;
mod proc;
mod redis;

pub use client::Client;
pub use fake::texts_of;
pub use proc::{signal, Proc};
pub use redis::Redis;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

/// The Python of the venv `scripts/python-env.sh` provisions (target/py, with the example
/// clients' requirements); None, after saying why `what` is skipped, where Python 3 with venv is
/// missing — a failure instead under `MYAGENT_REQUIRE_PYTHON=1` (`.ci/run`).
pub fn python_env(what: &str) -> Option<String> {
    let out = std::process::Command::new(workspace_root().join("scripts/python-env.sh"))
        .current_dir(workspace_root())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var("MYAGENT_REQUIRE_PYTHON").as_deref() == Ok("1") {
                panic!("Python with venv is required (MYAGENT_REQUIRE_PYTHON=1): {why}");
            }
            eprintln!(
                "SKIPPED: {what} needs Python 3 with venv (apt-get install python3-venv): {why}"
            );
            None
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the host, fake-llm and the plugins once per test process.
pub fn build() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .current_dir(workspace_root())
                .args([
                    "build",
                    "-q",
                    "-p",
                    "myagent-host",
                    "-p",
                    "weather_agent",
                    "-p",
                    "testkit_agent",
                    "-p",
                    "business_agent",
                    "-p",
                    "myagent-tests",
                ])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build failed");
            target_dir().join("debug")
        })
        .clone()
}

/// Builds with cargo outside the main target dir, into `target/fixtures` (a plugin rebuilt with
/// other settings, e.g. `TESTKIT_TAG=v2`, for hot reload).
pub fn cargo_fixture(args: &[&str], envs: &[(&str, &str)]) {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir().join("fixtures"))
        .envs(envs.iter().copied())
        .args(["build", "-q"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "fixture build failed: {args:?}");
}

pub fn bin(name: &str) -> PathBuf {
    build().join(name)
}

/// The `myagent-host` executable, to run as a command: with `XDG_STATE_HOME` pointed at this
/// test process's own directory, so a host started without `--store` never opens (or creates)
/// the user's `~/.local/state/myagent-host/sessions.db` — a file another build may have written.
/// Tests start hosts through this (or [`Host`]), never `Command::new(bin("myagent-host"))`.
pub fn host_command() -> Command {
    let mut cmd = Command::new(bin("myagent-host"));
    cmd.env("XDG_STATE_HOME", test_state_home());
    cmd
}

/// This test process's `XDG_STATE_HOME` for the hosts [`host_command`] starts.
pub fn test_state_home() -> &'static Path {
    static STATE: OnceLock<PathBuf> = OnceLock::new();
    STATE.get_or_init(|| {
        let root = target_dir().join("test-state");
        // Directories of test processes that have ended are removed.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !Path::new("/proc").join(&pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

pub fn plugin_lib(crate_name: &str) -> PathBuf {
    build().join(format!("lib{crate_name}.so"))
}

/// A fresh temporary directory (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: Mutex<u32> = Mutex::new(0);
        let n = {
            let mut g = N.lock().unwrap();
            *g += 1;
            *g
        };
        let p = std::env::temp_dir().join(format!("myagent-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The local OpenAI-compatible test server.
pub struct FakeLlm {
    pub proc: Proc,
    pub base: String,
}

impl FakeLlm {
    pub fn start() -> FakeLlm {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> FakeLlm {
        Self::start_at(&bin("fake-llm"), args)
    }

    /// Starts the `fake-llm` executable at `exe` (e.g. a release build) with `args`.
    pub fn start_at(exe: &Path, args: &[&str]) -> FakeLlm {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        let proc = Proc::spawn(cmd);
        let line = proc.wait_line("listening on ", Duration::from_secs(10));
        let addr = line.trim_start_matches("listening on ").trim().to_owned();
        FakeLlm {
            proc,
            base: format!("http://{addr}"),
        }
    }

    /// The `--base-url` for the host.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// Queues scripted answers (see `fake::Step`).
    pub fn script(&self, steps: Value) {
        http_post(
            &format!("{}/_control/script", self.base),
            &steps.to_string(),
        );
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        serde_json::from_str(&http_get(&format!("{}/_control/requests", self.base))).unwrap()
    }

    /// Each chat request's `traceparent` header so far (None without one).
    pub fn traceparents(&self) -> Vec<Option<String>> {
        serde_json::from_str(&http_get(&format!("{}/_control/traceparents", self.base))).unwrap()
    }
}

fn http_request(method: &str, url: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A plain HTTP GET; returns the body (the status line is checked for 200).
/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

pub fn http_get(url: &str) -> String {
    let resp = http_request("GET", url, "");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {url}: {head}");
    body.to_owned()
}

pub fn http_get_raw(url: &str) -> String {
    http_request("GET", url, "")
}

pub fn http_post(url: &str, body: &str) -> String {
    let resp = http_request("POST", url, body);
    assert!(resp.starts_with("HTTP/1.1 200"), "POST {url}: {resp}");
    resp
}

/// A POST whatever its status; returns the whole response (status line, headers, body).
pub fn http_post_any(url: &str, body: &str) -> String {
    http_request("POST", url, body)
}

/// The port in the host's start-up line `Serving on ws://HOST:PORT (...)`.
pub fn serving_port(line: &str) -> Option<u16> {
    // "Serving on ws://127.0.0.1:8080 (…" or "Serving on ws://[::]:8080 (…"
    let url = line.split("ws://").nth(1)?.split_whitespace().next()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A running `myagent-host serve`.
pub struct Host {
    pub proc: Proc,
    pub port: u16,
    pub state: TempDir,
}

impl Host {
    /// Starts the host on `plugin` against `llm`, with extra CLI args.
    pub fn start(plugin: &Path, llm: &FakeLlm, extra: &[&str]) -> Host {
        Self::start_with_env(plugin, llm, extra, &[])
    }

    /// Two agents: the weather agent (the default), then the testkit — with extra CLI args
    /// (the operator's `--handoff`, `--agent-tool`, a store...).
    pub fn with_testkit(llm: &FakeLlm, extra: &[&str]) -> Host {
        let testkit = plugin_lib("testkit_agent");
        let mut args = vec![testkit.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::start(&plugin_lib("weather_agent"), llm, &args)
    }

    /// [`Host::start`] with extra environment variables (e.g. a plugin's data directory).
    pub fn start_with_env(
        plugin: &Path,
        llm: &FakeLlm,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Host {
        let mut args = vec![
            "--llm-retries",
            "2",
            "--llm-first-token-timeout",
            "5",
            "--llm-idle-timeout",
            "5",
        ];
        args.extend_from_slice(extra);
        Self::launch(&bin("myagent-host"), plugin, llm, &args, env, "info")
    }

    /// Starts the host executable at `exe` (e.g. a release build) on loopback, port 0, with its
    /// own state directory, against `llm`, plus `extra` arguments; waits until it serves.
    pub fn launch(
        exe: &Path,
        plugin: &Path,
        llm: &FakeLlm,
        extra: &[&str],
        env: &[(&str, &Path)],
        log: &str,
    ) -> Host {
        let state = TempDir::new("state");
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg(plugin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--base-url",
                &llm.base_url(),
            ])
            .args(["--model", "fake-model", "--state-dir"])
            .arg(state.path());
        // Each host its own session store (unless the test names one).
        if !extra.contains(&"--store") {
            cmd.arg("--store").arg(format!(
                "sqlite:{}",
                state.path().join("sessions.db").display()
            ));
        }
        cmd.args(extra)
            .env_remove("OPENAI_API_KEY")
            .env_remove("MYAGENT_AUTH_TOKENS")
            .env("RUST_LOG", log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd);
        let line = proc.wait_line("Serving on ws://", Duration::from_secs(30));
        let port = serving_port(&line).expect("port");
        Host { proc, port, state }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn http(&self, path: &str) -> String {
        http_get(&format!("http://127.0.0.1:{}{path}", self.port))
    }

    /// `active_sessions` from `/health`.
    pub fn http_health_sessions(&self) -> u64 {
        let v: Value = serde_json::from_str(&self.http("/health")).unwrap();
        v["active_sessions"].as_u64().unwrap()
    }

    /// The value of metric `name` in `/metrics` (panics if absent).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.http("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// CPU time (user + system) the host process has used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.proc.pid())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.proc.pid(), 15);
    }

    /// Sends SIGKILL: no clean-up code runs in the host.
    pub fn kill9(&self) {
        signal(self.proc.pid(), 9);
    }
}
