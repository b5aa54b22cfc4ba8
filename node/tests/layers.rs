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
//! higher layer. It reads source text rather than asking the compiler
//! because the rule is about the shape of the code, and a text scan is
//! enough: every import in the node is written as a `crate::` path.

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
