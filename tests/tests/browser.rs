//! The web client in real headless Chromium (Debian's `/usr/bin/chromium`, driven by
//! `playwright-core` from `tests/browser`), against the real host and the local model.
//!
//! Needs `npm ci` in `tests/browser` and the `chromium` package (`.ci/run` installs both). Where
//! they are missing the test says so and passes, unless `MYAGENT_REQUIRE_BROWSER=1` (set by
//! `.ci/run`), which makes it fail instead.

use std::path::Path;
use std::process::Command;

use myagent_tests::{plugin_lib, target_dir, workspace_root, FakeLlm, Host, TempDir};

fn missing_prerequisite(dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} not found (apt-get install chromium)"));
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some(format!("run `npm ci` in {}", dir.display()));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node not found".into());
    }
    None
}

fn run_page_test(host: &Host, llm: &FakeLlm, envs: &[(&str, String)]) {
    let dir = workspace_root().join("tests/browser");
    let out = Command::new("node")
        .arg("web_client.mjs")
        .current_dir(&dir)
        .env("HOST_URL", format!("http://127.0.0.1:{}", host.port))
        .env("LLM_URL", &llm.base)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\nhost log:\n{}",
        host.proc.stderr_text()
    );
}

fn skip() -> bool {
    let dir = workspace_root().join("tests/browser");
    let Some(why) = missing_prerequisite(&dir) else {
        return false;
    };
    if std::env::var("MYAGENT_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("browser test prerequisites missing: {why}");
    }
    eprintln!("SKIPPED browser test: {why}");
    true
}

/// The full page test: tool call, cancel mid-stream (screenshot), reconnect and resume, reload.
#[test]
fn web_client_in_headless_chromium() {
    if skip() {
        return;
    }
    let llm = FakeLlm::start();
    let host = Host::start(&plugin_lib("weather_agent"), &llm, &[]);
    let screenshot = target_dir().join("web-shots/streaming.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    run_page_test(
        &host,
        &llm,
        &[("SCREENSHOT", screenshot.display().to_string())],
    );
    assert!(screenshot.exists());
}

/// The page as a chat app: empty state and starters, Markdown, the folded work block, cost,
/// copy and retry, the session list, keyboard, accessible names, a phone in dark mode.
/// Screenshots of the empty state, a tool-calling turn and the phone go to target/web-shots/.
#[test]
fn web_client_reads_like_a_chat_app() {
    if skip() {
        return;
    }
    let dir = TempDir::new("web-ui");
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "[models.\"fake-model\"]\ninput = 0.15\noutput = 0.60\n",
    )
    .unwrap();
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--prices", prices.to_str().unwrap()],
    );
    let shots = target_dir().join("web-shots");
    std::fs::create_dir_all(&shots).unwrap();
    run_page_test(
        &host,
        &llm,
        &[("UI", "1".into()), ("SHOTS", shots.display().to_string())],
    );
    for shot in ["empty-state.png", "tool-turn.png", "phone-dark.png"] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}

/// What `make run` serves without an API key: the demo recording answers the page's weather
/// question with a tool call.
#[test]
fn web_client_against_the_demo_recording() {
    if skip() {
        return;
    }
    let llm = FakeLlm::start(); // not asked: the recording answers
    let recording = workspace_root().join("examples/recordings/weather-demo.jsonl");
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--replay", recording.to_str().unwrap()],
    );
    run_page_test(&host, &llm, &[("WEATHER_ONLY", "1".into())]);
    assert!(
        llm.requests().is_empty(),
        "the replayed run asked the model"
    );
}

/// With tokens required: a `#token=` link authenticates through the first message; the token
/// leaves the address bar at once and never appears in the WebSocket URL.
#[test]
fn web_client_with_a_token_in_the_fragment() {
    if skip() {
        return;
    }
    let llm = FakeLlm::start();
    let recording = workspace_root().join("examples/recordings/weather-demo.jsonl");
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--replay",
            recording.to_str().unwrap(),
            "--auth-token",
            "br0wser-t0ken",
        ],
    );
    run_page_test(
        &host,
        &llm,
        &[
            ("WEATHER_ONLY", "1".into()),
            ("PAGE_SUFFIX", "#token=br0wser-t0ken".into()),
        ],
    );
}

/// A principal's sessions in the page (`--auth-tokens-file`): listed by title, also on a second
/// device, where the session opens by id without its resume token.
#[test]
fn web_client_lists_a_principals_sessions() {
    if skip() {
        return;
    }
    let llm = FakeLlm::start();
    let dir = myagent_tests::TempDir::new("browser-principal");
    let tokens = dir.path().join("principals.toml");
    std::fs::write(
        &tokens,
        "[[principal]]\nuser = \"alice\"\ntoken = \"alice-br0wser\"\n",
    )
    .unwrap();
    let recording = workspace_root().join("examples/recordings/weather-demo.jsonl");
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &[
            "--replay",
            recording.to_str().unwrap(),
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
        ],
    );
    run_page_test(
        &host,
        &llm,
        &[
            ("PRINCIPAL", "1".into()),
            ("PAGE_SUFFIX", "#token=alice-br0wser".into()),
        ],
    );
}

/// Several agents in the page: a picker for the agent of a new session, each session's agent
/// on its button, the picked agent's tools answering; an agent asked as a tool shown inside
/// the call, each step named by its agent; a handoff shown and followed.
#[test]
fn web_client_picks_agents_and_shows_who_speaks() {
    if skip() {
        return;
    }
    let llm = FakeLlm::start();
    let host = Host::with_testkit(
        &llm,
        &[
            "--handoff",
            "testkit=weather-assistant",
            "--agent-tool",
            "testkit=weather-assistant",
        ],
    );
    run_page_test(&host, &llm, &[("AGENTS", "1".into())]);
}

/// Tool approval in the page: Approve and Deny buttons on a call that waits (the operator
/// requires approval of `get_weather`), and a call still waiting across a page reload.
#[test]
fn web_client_approves_and_denies_tool_calls() {
    if skip() {
        return;
    }
    let llm = FakeLlm::start();
    let host = Host::start(
        &plugin_lib("weather_agent"),
        &llm,
        &["--require-approval", "get_weather"],
    );
    run_page_test(&host, &llm, &[("APPROVALS", "1".into())]);
}
