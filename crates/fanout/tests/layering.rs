//! The fan-out crate's modules are layered: each uses only modules of a
//! lower layer, so none imports one above it and there is no import
//! circle. This reads every module's source (not its tests) and fails on a
//! `crate::` path that points up or sideways, or on a module that has no
//! layer yet (a new module must be placed: add it to `LAYERS`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

/// Lowest first; see the crate's documentation for what each layer is.
const LAYERS: &[&[&str]] = &[
    &["sync", "deadline", "codec", "config", "writer", "chain"],
    &["recent", "replays"],
    &["feed"],
    &["feeds"],
    &["subscriber", "audit", "viewers"],
    &["hub"],
    &["session"],
    &["client"],
    &["live", "live_set"],
];

/// The module a source file belongs to (a directory module's files all
/// belong to it), or `None` for the crate root and test-only files.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned());
    let first = parts.next()?;
    let rest: Vec<String> = parts.collect();
    if first == "lib.rs" {
        return None;
    }
    if let Some(last) = rest.last()
        && (last == "tests.rs" || last == "loom.rs")
    {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The source without its test modules: everything from a `#[cfg(...test`
/// attribute that opens an inline module on (a test module in a file of
/// its own is left out by `module_of`).
fn without_tests(source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut kept = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let opens_test_module = line.trim_start().starts_with("#[cfg(")
            && line.contains("test")
            && lines
                .get(index + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.contains('{'));
        if opens_test_module {
            break;
        }
        kept.push(*line);
    }
    kept.join("\n")
}

/// The crate modules a source names (`crate::name`, in code or doc links).
fn used_modules(source: &str) -> Vec<String> {
    let mut used = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // A capitalised name is a re-export at the crate root, not a module.
        if !name.is_empty() {
            used.push(name);
        }
    }
    // `use crate::{a, b}` lists modules too.
    let mut rest = source;
    while let Some(at) = rest.find("crate::{") {
        rest = &rest[at + "crate::{".len()..];
        let end = rest.find('}').unwrap_or(rest.len());
        for item in rest[..end].split(',') {
            let name = item.trim().split("::").next().unwrap_or("").trim();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                used.push(name.to_owned());
            }
        }
    }
    used
}

fn sources(dir: &Path, root: &Path, into: &mut Vec<(std::path::PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            into.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn no_module_uses_one_of_its_own_layer_or_above() {
    let layer: HashMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(level, names)| names.iter().map(move |name| (*name, level)))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 10, "the sources were found");
    let mut wrong = Vec::new();
    for (relative, source) in &files {
        let Some(module) = module_of(relative) else {
            continue;
        };
        let Some(&own) = layer.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer",
                relative.display()
            ));
            continue;
        };
        for used in used_modules(&without_tests(source)) {
            if used == module {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&level) if level < own => {}
                Some(&level) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `{used}` (layer {level})",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{}: `{module}` uses `{used}`, which has no layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_of_the_crate_has_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let placed: Vec<&str> = LAYERS
        .iter()
        .flat_map(|names| names.iter().copied())
        .collect();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().strip_prefix("mod "))
        .map(|name| name.trim_end_matches(';'))
        .collect();
    assert!(!declared.is_empty());
    for name in &declared {
        assert!(placed.contains(name), "`{name}` has no layer");
    }
    for name in &placed {
        assert!(
            declared.contains(name),
            "`{name}` is no module of the crate"
        );
    }
}

#[test]
fn the_check_sees_an_upward_use() {
    // The check itself: a module of layer 0 naming the hub is caught, and
    // a test module's uses are not the module's.
    let source = "#[cfg(test)]\nmod tests_in_a_file;\nuse crate::sync::lock;\nfn f() { crate::hub::x(); }\n#[cfg(test)]\nmod tests {\n use crate::client::Y;\n}\n";
    let used = used_modules(&without_tests(source));
    assert_eq!(used, ["sync", "hub"]);
    assert_eq!(
        used_modules("use crate::{codec::Item, feed::Feed, Hub};"),
        ["codec", "feed"]
    );
}
