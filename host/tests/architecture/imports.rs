//! The import graph between the crate's modules: its own paths (`crate::`, `super::`, `self::`,
//! with `use` groups expanded) read after comments and strings are removed — how this crate
//! names its modules — and the circles and wrong-way edges among them.

use std::collections::{BTreeMap, BTreeSet};

use super::{library_files, rs_files, src_dir, ModPath};

/// The text without comments and string literals (so doc links and messages are not paths).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal like '"'
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Reads a path at `i` (`a::b::{c, d::e}`); pushes each full path onto `out`.
fn read_path(s: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                i = read_path(s, i, path.clone(), out);
            }
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if start == i {
            out.push(path);
            return i;
        }
        path.push(String::from_utf8_lossy(&s[start..i]).into_owned());
        if s.get(i) == Some(&b':') && s.get(i + 1) == Some(&b':') {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// Every `crate::…`, `super::…` and `self::…` path in `code`, as written.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let at_word = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == b':');
        let hit = ["crate::", "super::", "self::"]
            .iter()
            .find(|k| s[i..].starts_with(k.as_bytes()));
        match hit {
            Some(_) if at_word => i = read_path(s, i, Vec::new(), &mut out),
            _ => i += 1,
        }
    }
    out
}

/// `written` (from a file of module `from`) as an absolute module path.
fn absolute(from: &ModPath, written: &[String]) -> ModPath {
    let mut base: ModPath = Vec::new();
    let mut rest = written;
    match written.first().map(String::as_str) {
        Some("crate") => rest = &written[1..],
        Some("self") | Some("super") => {
            base = from.clone();
            while let Some(seg) = rest.first() {
                match seg.as_str() {
                    "self" => {}
                    "super" => {
                        base.pop();
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().cloned());
    base
}

/// The deepest known module `path` names (the rest is an item in it).
fn module_of(path: &ModPath, modules: &BTreeSet<ModPath>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// One reference between siblings: under `parent`, child `from` uses child `to` (`why`: the file
/// and the path as written).
struct Edge {
    parent: ModPath,
    from: String,
    to: String,
    why: String,
}

fn edges() -> Vec<Edge> {
    let files = library_files();
    let modules: BTreeSet<ModPath> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut out = Vec::new();
    for (file, from) in &files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for written in paths_in(&code) {
            let target = module_of(&absolute(from, &written), &modules);
            let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
            // A parent using its child, or a module using its ancestors' items: not a circle.
            if common == from.len() || common == target.len() {
                continue;
            }
            out.push(Edge {
                parent: from[..common].to_vec(),
                from: from[common].clone(),
                to: target[common].clone(),
                why: format!(
                    "{} uses {}",
                    file.strip_prefix(src_dir()).unwrap().display(),
                    written.join("::")
                ),
            });
        }
    }
    out
}

/// The cycles among each module's children, as "parent: a → b → a (a uses …)".
fn cycles(edges: &[Edge]) -> Vec<String> {
    let mut graphs: BTreeMap<&ModPath, BTreeMap<&str, BTreeMap<&str, &str>>> = BTreeMap::new();
    for e in edges {
        graphs
            .entry(&e.parent)
            .or_default()
            .entry(&e.from)
            .or_default()
            .entry(&e.to)
            .or_insert(&e.why);
    }
    let mut found = Vec::new();
    for (parent, g) in &graphs {
        // A cycle through `start`: depth-first from each node back to itself.
        for &start in g.keys() {
            let mut stack = vec![(start, vec![start])];
            let mut seen = BTreeSet::new();
            while let Some((node, trail)) = stack.pop() {
                for (&next, why) in g.get(node).into_iter().flatten() {
                    if next == start {
                        let mut t = trail.clone();
                        t.push(start);
                        // Report each cycle once: from its smallest member.
                        if trail.iter().all(|n| *n >= start) {
                            found.push(format!(
                                "crate::{}: {} (last edge: {why})",
                                parent.join("::"),
                                t.join(" → ")
                            ));
                        }
                    } else if seen.insert(next) {
                        let mut t = trail.clone();
                        t.push(next);
                        stack.push((next, t));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_import_circles_between_modules() {
    let found = cycles(&edges());
    assert!(
        found.is_empty(),
        "import circles:\n  {}",
        found.join("\n  ")
    );
}

/// The layers of the top-level modules, from the doors down: a module may use only modules
/// of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("server", 6),
    ("session", 5),
    ("store", 4),
    ("agent", 4),
    ("mcp", 3),
    ("plugin", 2),
    ("llm", 2),
    ("scaffold", 1),
    ("journal", 1),
    ("otel", 1),
    ("metrics", 0),
    ("time", 0),
    ("backoff", 0),
    ("cancel", 0),
    ("private", 0),
    ("lines", 0),
    ("secret", 0),
];

#[test]
fn the_import_direction_is_door_session_agent_then_the_rest() {
    let layer = |m: &str| {
        LAYERS
            .iter()
            .find(|(n, _)| *n == m)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("top-level module `{m}` has no layer in this test"))
    };
    let wrong: Vec<String> = edges()
        .into_iter()
        .filter(|e| e.parent.is_empty() && layer(&e.from) <= layer(&e.to))
        .map(|e| format!("{} → {} ({})", e.from, e.to, e.why))
        .collect();
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n  {}",
        wrong.join("\n  ")
    );
}

/// ARCHITECTURE.md: every door (the WebSocket, A2A) is an adapter over the session engine —
/// no door has a run loop of its own: nothing under `server/` runs the agent or calls the model.
#[test]
fn doors_run_nothing_themselves() {
    let server = src_dir().join("server");
    let mut found = Vec::new();
    for f in rs_files(&server) {
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        for forbidden in [
            "run_agent",
            "agent::run",
            ".model.",
            "llm::Model",
            "ChatRequest",
        ] {
            if code.contains(forbidden) {
                found.push(format!("{} uses {forbidden}", f.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a door reaches past the session engine:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_cycle_check_finds_circles() {
    // The checker itself: a → b → a among siblings is found; parent ↔ child is not a circle.
    let e = |parent: &[&str], from: &str, to: &str| Edge {
        parent: parent.iter().map(|s| s.to_string()).collect(),
        from: from.into(),
        to: to.into(),
        why: "test".into(),
    };
    assert_eq!(cycles(&[e(&["x"], "a", "b"), e(&["x"], "b", "a")]).len(), 1);
    assert!(cycles(&[e(&["x"], "a", "b"), e(&["x"], "b", "c")]).is_empty());
    let modules: BTreeSet<ModPath> = [vec![], vec!["x".into()], vec!["x".into(), "y".into()]]
        .into_iter()
        .collect();
    let from: ModPath = vec!["x".into(), "y".into()];
    let paths = paths_in("use super::{a, y::{b, c}}; fn f() { crate::x::y::z(); }");
    let resolved: Vec<ModPath> = paths
        .iter()
        .map(|p| module_of(&absolute(&from, p), &modules))
        .collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert_eq!(resolved[0], vec!["x".to_string()]);
    assert_eq!(resolved[1], from);
}
