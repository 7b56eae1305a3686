//! The plugin system end to end: `inspect`, every load failure's message, and hot reload of a
//! real rebuilt plugin while clients are connected.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use myagent_tests::{
    cargo_fixture, host_command, plugin_lib, target_dir, Client, FakeLlm, Host, TempDir,
};
use serde_json::json;

fn host_cmd(args: &[&str], plugin: &Path) -> (bool, String, String) {
    let out = host_command()
        .args(args)
        .arg(plugin)
        .env_remove("TESTKIT_VARIANT")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_shows_the_agent_and_tool_schemas() {
    let (ok, out, err) = host_cmd(&["inspect"], &plugin_lib("weather_agent"));
    assert!(ok, "{err}");
    assert!(
        out.contains("agent:            weather-assistant 0.1.0"),
        "{out}"
    );
    assert!(out.contains("plugin API:       version 1"));
    assert!(out.contains("get_weather — Get the current weather for a city."));
    assert!(out.contains("\"required\": ["));
    let (ok, out, _) = host_cmd(&["inspect", "--json"], &plugin_lib("business_agent"));
    assert!(ok);
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tools: Vec<&str> = m["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["query_database", "send_email"]);
    // Mail leaves the building: the plugin marks send_email as needing approval.
    assert_eq!(m["needs_approval"], serde_json::json!(["send_email"]));
    assert_eq!(m["handoffs"], serde_json::json!(["weather-assistant"]));
    let (ok, out, _) = host_cmd(&["inspect"], &plugin_lib("business_agent"));
    assert!(
        ok && out.contains("send_email [needs approval] — "),
        "{out}"
    );
    assert!(out.contains("hands over to:    weather-assistant"), "{out}");
}

#[test]
fn each_load_failure_is_one_clear_message_and_a_nonzero_exit() {
    let dir = TempDir::new("badplugins");
    let text = dir.path().join("notes.so");
    std::fs::write(&text, "not an ELF file").unwrap();
    let c_src = dir.path().join("x.c");
    std::fs::write(&c_src, "int answer(void) { return 42; }\n").unwrap();
    let c_lib = dir.path().join("libplain.so");
    assert!(Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&c_lib)
        .arg(&c_src)
        .status()
        .unwrap()
        .success());
    let truncated = dir.path().join("libtruncated.so");
    let bytes = std::fs::read(plugin_lib("weather_agent")).unwrap();
    std::fs::write(&truncated, &bytes[..4096]).unwrap();
    cargo_fixture(
        &["--manifest-path", "tests/fixtures/old-api/Cargo.toml"],
        &[],
    );
    let old_api = target_dir().join("fixtures/debug/libold_api_plugin.so");

    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.path().join("missing.so"), "plugin file not found"),
        (text, "not a loadable shared library"),
        (truncated, "not a loadable shared library"),
        (c_lib, "not a myagent plugin"),
        (
            old_api,
            "built against myagent-plugin-api 0.0.9, this host supports 0.1.0",
        ),
    ];
    for (path, expect) in cases {
        for cmd in [
            &["inspect"][..],
            &["serve", "--port", "0", "--no-watch"][..],
        ] {
            let (ok, _, err) = host_cmd(cmd, &path);
            assert!(!ok, "{cmd:?} {path:?} should fail");
            assert!(
                err.contains(expect),
                "{cmd:?} {path:?}: {err:?} should contain {expect:?}"
            );
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
    }
    let out = host_command()
        .args(["inspect"])
        .arg(plugin_lib("testkit_agent"))
        .env("TESTKIT_VARIANT", "panic_factory")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().last().unwrap().contains(
            "the plugin failed to start: agent factory panicked: testkit factory was told to panic"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn hot_reload_swaps_the_agent_without_disturbing_runs_and_refuses_broken_builds() {
    // The served file is a copy we control; v2 is a real cargo rebuild with another tag.
    let dir = TempDir::new("reload");
    let served = dir.path().join("libtestkit_agent.so");
    std::fs::copy(plugin_lib("testkit_agent"), &served).unwrap();
    cargo_fixture(&["-p", "testkit_agent"], &[("TESTKIT_TAG", "v2")]);
    let v2 = target_dir().join("fixtures/debug/libtestkit_agent.so");

    let llm = FakeLlm::start();
    let host = Host::start(&served, &llm, &["--reload-debounce-ms", "100"]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    let created = c.named("agent.session_created")[0].clone();
    assert!(created["agent"]["tools"]
        .as_array()
        .unwrap()
        .contains(&json!("tag_v1")));
    c.ask(&sid, "say:hello v1").await;
    c.until("agent.final_answer").await;

    // A run in flight: a tool that sleeps 1.5 s on v1.
    c.ask(&sid, r#"call:sleep {"ms": 1500} ;; call:tag_v1 {}"#)
        .await;
    c.until("agent.tool_call").await;
    // Replace the file the way cargo does: write elsewhere, rename over.
    let tmp = dir.path().join(".tmp-new.so");
    std::fs::copy(&v2, &tmp).unwrap();
    let t0 = Instant::now();
    std::fs::rename(&tmp, &served).unwrap();
    let notice = c.until("system.plugin_reloaded").await;
    let reload_ms = t0.elapsed().as_millis();
    assert_eq!(notice["agent"]["version"], "0.1.0-v2");
    assert!(notice["agent"]["tools"]
        .as_array()
        .unwrap()
        .contains(&json!("tag_v2")));
    // The run that started on v1 finishes on v1.
    let answer = c.until("agent.final_answer").await;
    assert!(
        answer["content"].as_str().unwrap().contains("tag_v1"),
        "{answer}"
    );
    assert!(c
        .named("agent.tool_result")
        .iter()
        .all(|r| r["metadata"]["status"] == "success"));
    // The session's next run uses v2, with its conversation kept.
    c.ask(&sid, "call:tag_v2 {}").await;
    let answer = c.until("agent.final_answer").await;
    assert!(
        answer["content"].as_str().unwrap().contains("tag_v2"),
        "{answer}"
    );
    let last = llm.requests().pop().unwrap();
    assert!(last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["content"] == "say:hello v1"));
    // A new session sees the new tool set.
    let (c2, _, _) = Client::with_session(&host.ws_url()).await;
    let created = c2.named("agent.session_created")[0].clone();
    assert!(created["agent"]["tools"]
        .as_array()
        .unwrap()
        .contains(&json!("tag_v2")));

    // A broken build keeps v2 serving and clients are told why.
    std::fs::write(&tmp, b"garbage, not a library").unwrap();
    std::fs::rename(&tmp, &served).unwrap();
    let failed = c.until("system.plugin_reload_failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("not a loadable shared library"),
        "{failed}"
    );
    assert_eq!(failed["serving"]["version"], "0.1.0-v2");
    c.ask(&sid, "call:tag_v2 {}").await;
    assert!(c.until("agent.final_answer").await["content"]
        .as_str()
        .unwrap()
        .contains("tag_v2"));
    let health: serde_json::Value = serde_json::from_str(&host.http("/health")).unwrap();
    assert_eq!(health["plugin"]["generation"], 2);
    println!("reload notice arrived {reload_ms} ms after the rename (debounce 100 ms)");
    assert!(reload_ms < 5000);
}

#[tokio::test]
async fn a_scaffolded_plugin_tests_builds_loads_and_answers() {
    let dir = TempDir::new("scaffold");
    let crate_dir = dir.path().join("word_agent");
    let out = host_command().arg("new").arg(&crate_dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("libword_agent.so"));
    // Refuses to overwrite.
    let again = host_command().arg("new").arg(&crate_dir).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Its own tests pass, and it builds, as generated (shared fixture target dir: deps cached).
    let fixtures = target_dir().join("fixtures");
    for args in [&["test", "-q"][..], &["build", "-q"][..]] {
        let status = Command::new(env!("CARGO"))
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &fixtures)
            .args(args)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cargo {args:?} failed in the scaffolded crate"
        );
    }
    let lib = fixtures.join("debug/libword_agent.so");
    let (ok, stdout, stderr) = host_cmd(&["inspect"], &lib);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("word-agent") && stdout.contains("word_count"),
        "{stdout}"
    );

    // And the host serves it.
    let llm = FakeLlm::start();
    let host = Host::start(&lib, &llm, &[]);
    let (mut c, sid, _) = Client::with_session(&host.ws_url()).await;
    c.ask(&sid, r#"call:word_count {"text": "one two three four"}"#)
        .await;
    assert_eq!(c.until("agent.tool_result").await["content"], "4");
    assert!(c.until("agent.final_answer").await["content"]
        .as_str()
        .unwrap()
        .contains('4'));
}
