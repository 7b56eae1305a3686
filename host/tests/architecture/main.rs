//! The invariants ARCHITECTURE.md states about the shape of the code, checked on the source:
//!
//! - no import circles between modules: among the children of any module (the top-level
//!   modules of the crate, the files of a directory), references form no cycle — a reference
//!   into a sibling's subtree counts as one to the sibling; a file using its parent's items or
//!   its own children's is not a circle;
//! - the import direction between the top-level modules: door (`server`) → `session` →
//!   (`agent`, `store`), `agent` → (`llm`, `plugin`, `mcp`), and the shared leaves below;
//!   nothing points back up;
//! - no door runs the agent or calls the model itself;
//! - no source file over 500 lines, no function over 100 (tests aside);
//! - every source file is named in ARCHITECTURE.md's code map;
//! - server events are written as JSON only by the session's event module.
//!
//! `imports.rs` holds the first three (a small parser of the crate's own module paths and the
//! circles among them), `files.rs` the rules read from each file's text.

mod files;
mod imports;

use std::path::{Path, PathBuf};

pub(crate) type ModPath = Vec<String>;

pub(crate) fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`, sorted.
pub(crate) fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rs_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every library source file (the binary's `main.rs` and `cli/` are another crate) and the
/// module it is.
pub(crate) fn library_files() -> Vec<(PathBuf, ModPath)> {
    let root = src_dir();
    rs_files(&root)
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: ModPath = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if parts[0] == "main" || parts[0] == "cli" {
                return None;
            }
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            Some((f, parts))
        })
        .collect()
}
