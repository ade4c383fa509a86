//! The module graph of `src/` is layered: each top-level module may use only
//! the modules of the layers below its own. This is the one place the order
//! is written; every module's `//!` header names its layer.
//!
//! The test reads every `crate::<module>` reference in `src/` (comments
//! aside) and fails on any that points to the same layer or one above.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom to top: the data flow from bytes and configuration up
/// to the process. Modules within one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    // What every layer may read: settings, metric handles, the loop a thread runs.
    &["config", "event_loop"],
    // Bytes: RESP requests in, replies out, the command table.
    &["protocol"],
    &["metrics"],
    // The in-memory sessions and their indexes.
    &["store"],
    // The local pub/sub broker, who caches which session (CLIENT TRACKING),
    // then the lifecycle events published on it.
    &["pubsub"],
    &["tracking"],
    &["events"],
    // The shared upstream Redis: connection, scripts, coherent cache.
    &["upstream"],
    // One interface over the standalone and write-through stores.
    &["sessions"],
    // What the node does with the sessions and the upstream.
    &["proxy", "migrate"],
    &["fleet"],
    // The node's shared state, which the commands run against.
    &["node"],
    &["commands"],
    // The operations endpoints (HTTP, metrics page, logging), started by the server.
    &["ops"],
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `src/a/b.rs` and `src/a.rs` → `a`; `lib.rs` and `main.rs` are the crate
/// root, above every layer.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
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

/// The code of a line, without its `//` comment (doc comments included).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// The top-level modules a piece of code names as `crate::x` or inside
/// `crate::{x, y::z}`.
fn references(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    found.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn every_module_uses_only_the_layers_below_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer; add it to LAYERS in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            for used in references(code(line)) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(layer) if layer < own => {}
                    Some(layer) => violations.push(format!(
                        "{}:{}: `{module}` (layer {own}) uses `{used}` (layer {layer}): \
                         a module may use only the layers below its own",
                        file.display(),
                        number + 1
                    )),
                    None => violations.push(format!(
                        "{}:{}: `crate::{used}` is in no layer",
                        file.display(),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_layer_names_existing_modules_whose_headers_state_their_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for module in LAYERS.iter().flat_map(|layer| layer.iter()) {
        let file = [
            src.join(format!("{module}.rs")),
            src.join(module).join("mod.rs"),
        ]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("LAYERS names `{module}`, which is not a module of src/"));
        let text = std::fs::read_to_string(&file).expect("readable source");
        let header: String = text
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        headers.insert(module, header);
    }
    let silent: Vec<&str> = headers
        .iter()
        .filter(|(_, header)| !header.contains("Layer"))
        .map(|(module, _)| *module)
        .collect();
    assert!(
        silent.is_empty(),
        "these modules' `//!` headers do not say which layer they are (a line with \"Layer\"): {silent:?}"
    );
}

#[test]
fn the_reference_reader_sees_paths_and_groups() {
    assert_eq!(references("use crate::store::Key;"), ["store"]);
    assert_eq!(
        references("use crate::{node::Node, protocol, self};"),
        ["node", "protocol"]
    );
    assert_eq!(
        references("let x = crate::store::now_ms() + crate::event_loop::current();"),
        ["store", "event_loop"]
    );
    assert!(references(code("//! see [`crate::server`]")).is_empty());
}
