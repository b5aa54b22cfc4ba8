//! The node's modules form layers whose imports point one way, down:
//!
//! ```text
//! app      main, config, replication (the slave's follower), backup, import, gendata
//! server   server/  — HTTP framing, routing, the one ApiError, metrics
//! engine   engine/  — request parsing, queries, rendering, the cache
//! storage  storage/ — SQLite store, the one writer, pools, blob images
//! model    model/   — catalog, series, batch types, dates
//! json     json.rs  — the leaf JSON writer
//! ```
//!
//! This test reads every file under `node/src`, assigns it to its layer by
//! its path, and fails on any `crate::…` path that names a module of a
//! higher layer. A second test fails on any import cycle between files,
//! within a layer too (unit tests, after `#[cfg(test)]`, are left out:
//! a test may use whatever it needs). It reads source text rather than asking the compiler
//! because the rule is about the shape of the code, and a text scan is
//! enough: every import in the node is written as a `crate::` path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of a module, by the first segment of its path under `src`.
fn layer_of(first: &str) -> Option<(u8, &'static str)> {
    Some(match first {
        "json" => (0, "json"),
        "model" => (1, "model"),
        "storage" => (2, "storage"),
        "engine" => (3, "engine"),
        "server" => (4, "server"),
        "main" | "config" | "replication" | "backup" | "import" | "gendata" => (5, "app"),
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<segment>` named in the text, outside `//` comments.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let seg: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, seg));
            rest = after;
        }
    }
    found
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 10,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("file under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs"))
            .expect("path segment");
        let (from, from_name) =
            layer_of(first).unwrap_or_else(|| panic!("{}: assign this module to a layer", rel.display()));
        let text = std::fs::read_to_string(file).expect("source file");
        for (line, seg) in crate_paths(&text) {
            let (to, to_name) = layer_of(&seg)
                .unwrap_or_else(|| panic!("{}:{line}: crate::{seg} is in no layer", rel.display()));
            if to > from {
                wrong.push(format!(
                    "{}:{line}: {from_name} imports crate::{seg} ({to_name}, a higher layer)",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports pointing up the layers:\n{}",
        wrong.join("\n")
    );
}

/// `storage/store.rs` → `storage::store`; `json.rs` → `json`.
fn module_name(rel: &Path) -> String {
    let s = rel.to_string_lossy().trim_end_matches(".rs").replace('/', "::");
    s.strip_suffix("::mod").map(str::to_string).unwrap_or(s)
}

#[test]
fn no_module_imports_form_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut text = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("file under src");
        let body = std::fs::read_to_string(file).expect("source file");
        let code = body.split("#[cfg(test)]").next().unwrap_or("").to_string();
        text.insert(module_name(rel), code);
    }
    let known: BTreeSet<String> = text.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &text {
        let targets = edges.entry(module.clone()).or_default();
        for line in code.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                let path: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                // The longest known module the path starts with.
                let target = (1..=segs.len())
                    .rev()
                    .map(|n| segs[..n].join("::"))
                    .find(|m| known.contains(m));
                if let Some(t) = target.filter(|t| t != module) {
                    targets.insert(t);
                }
                rest = after;
            }
        }
    }
    // Depth-first search; a module met again while still on the path
    // closes a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
    // The scan sees imports at all (a known edge), or the test proves nothing.
    assert!(
        edges
            .get("storage::store")
            .is_some_and(|t| t.contains("storage::apply")),
        "the scan found no storage::store → storage::apply import"
    );
}
