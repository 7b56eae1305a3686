//! Rules read from each source file's text: its length and its functions', its place in
//! ARCHITECTURE.md's code map, and the server events it writes.

use std::path::Path;

use super::{library_files, rs_files, src_dir};

#[test]
fn no_source_file_is_over_500_lines() {
    // The library and the host's own tests (this one included).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = rs_files(&src_dir());
    files.extend(rs_files(&root.join("tests")));
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 500)
        .map(|(f, n)| format!("{} ({n} lines)", f.strip_prefix(root).unwrap().display()))
        .collect();
    assert!(long.is_empty(), "files over 500 lines: {long:?}");
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"))
            .unwrap();
    let root = src_dir();
    let missing: Vec<String> = library_files()
        .into_iter()
        .map(|(f, _)| {
            f.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|rel| {
            let name = rel.rsplit('/').next().unwrap();
            let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
            // Named by its path (from `host/src` or from its top-level module's directory), or
            // by its file name in its directory's section.
            let below_top = rel.split_once('/').map_or(rel.as_str(), |(_, r)| r);
            !(doc.contains(rel.as_str())
                || (below_top.contains('/') && doc.contains(below_top))
                || (doc.contains(&format!("host/src/{dir}")) && doc.contains(&format!("`{name}`")))
                || name == "lib.rs"
                || name == "mod.rs" && doc.contains(&format!("host/src/{dir}/")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in ARCHITECTURE.md's code map: {missing:?}"
    );
}

/// Functions of more than `max` lines of code (blank and comment lines aside) in `text`, outside
/// `#[cfg(test)]` modules: (name, line, lines). A function ends at the first `}` line at its
/// own indentation.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let test_mod = lines
        .iter()
        .position(|l| l.trim() == "#[cfg(test)]")
        .unwrap_or(lines.len());
    let mut out = Vec::new();
    for (i, line) in lines[..test_mod].iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let sig = trimmed
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(rest) = sig.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(len) = lines[i + 1..].iter().position(|l| *l == close) {
            // Every line from the signature to the closing brace, comments included.
            let all = len + 2;
            if all > max {
                out.push((name, i + 1, all));
            }
        }
    }
    out
}

#[test]
fn no_function_is_over_100_lines() {
    let root = src_dir();
    let long: Vec<String> = rs_files(&root)
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .flat_map(|f| {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            long_functions(&std::fs::read_to_string(f).unwrap(), 100)
                .into_iter()
                .map(move |(name, line, n)| format!("{rel}:{line} {name} ({n} lines)"))
        })
        .collect();
    assert!(long.is_empty(), "functions over 100 lines: {long:?}");
    // The checker itself.
    let f = "fn a() {\n".to_owned() + &"    x();\n".repeat(120) + "}\n";
    assert_eq!(long_functions(&f, 100), [("a".to_string(), 1, 122)]);
}

/// Places in `text` (outside its `#[cfg(test)]` module) that write a server event's JSON by
/// hand: a literal that starts an `agent.…` frame (`{"event":"agent.`), unless it is only
/// compared with (`starts_with`), or a `json!` object with an `"event": "agent.…"` member.
fn hand_written_events(text: &str) -> Vec<usize> {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    let code = &text[..end];
    let mut found = Vec::new();
    for pattern in ["{\\\"event\\\":\\\"agent.", "{\"event\":\"agent."] {
        for (at, _) in code.match_indices(pattern) {
            let before = &code[at.saturating_sub(24)..at];
            if !before.contains("starts_with(") {
                found.push(code[..at].lines().count());
            }
        }
    }
    for (at, _) in code.match_indices("\"event\"") {
        let rest = code[at + 7..].trim_start();
        if rest
            .strip_prefix(':')
            .is_some_and(|r| r.trim_start().starts_with("\"agent."))
        {
            found.push(code[..at].lines().count());
        }
    }
    found
}

/// ARCHITECTURE.md: no server event is written as JSON anywhere but `session/event.rs` and
/// `session/event/encode.rs` (a door translates frames, it does not make them).
#[test]
fn server_events_are_written_only_by_the_session_s_event_module() {
    let root = src_dir();
    let allowed = ["session/event.rs", "session/event/encode.rs"];
    let found: Vec<String> = rs_files(&root)
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .flat_map(|f| {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            let lines = hand_written_events(&std::fs::read_to_string(f).unwrap());
            lines.into_iter().map(move |n| format!("{rel}:{n}"))
        })
        .filter(|place| !allowed.iter().any(|a| place.starts_with(&format!("{a}:"))))
        .collect();
    assert!(found.is_empty(), "server events written by hand: {found:?}");
    // The check finds what it looks for, and lets a comparison be.
    let bad = "fn f() { out.push_str(\"{\\\"event\\\":\\\"agent.ready\\\"\"); }\n\
               fn g() { json!({\"event\": \"agent.error\"}) }\n\
               fn h() { frame.starts_with(\"{\\\"event\\\":\\\"agent.partial_answer\\\"\") }\n";
    assert_eq!(hand_written_events(bad), vec![1, 2]);
}
