//! A check that `src/`'s top-level modules import each other without cycles: each module can
//! be read, tested and replaced knowing only those below it. It reads the sources themselves
//! (every `crate::name` outside comments), so a new import that closes a cycle fails `cargo
//! test` with the files and lines that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without its comments (line comments to the end of the line; block comments).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                let end = rest[b..].find("*/").map_or(rest.len(), |e| b + e + 2);
                // Keep the comment's line breaks, so that lines are counted as in the file.
                out.extend(rest[b..end].matches('\n').map(|_| '\n'));
                rest = &rest[end..];
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules each one names, with where: `crate::name` and `use crate::{a, b::c}`.
fn imports(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let line = code[..at].matches('\n').count() + 1;
        let after = &code[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            // The first name of each item: `a`, `b::c` -> `b`, nested groups' inner names skipped.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.push((ident(&group[i..]).to_string(), line));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push((ident(after).to_string(), line));
        }
    }
    out
}

/// For each top-level module, the others it imports, each with one place that does.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let module = |path: &Path| {
        let rel = path.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module(f))
        .filter(|m| !["lib", "main", "layers"].contains(&m.as_str()))
        .collect();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> =
        modules.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for file in &files {
        let from = module(file);
        let Some(edges) = graph.get_mut(&from) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (to, line) in imports(&code(&text)) {
            if to != from && modules.contains(&to) {
                let rel = file.strip_prefix(src.parent().unwrap()).unwrap();
                edges
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", rel.display()));
            }
        }
    }
    graph
}

/// The modules `from` reaches through imports.
fn reach(graph: &BTreeMap<String, BTreeMap<String, String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for to in graph[&m].keys() {
            if seen.insert(to.clone()) {
                todo.push(to.clone());
            }
        }
    }
    seen
}

/// Sets of modules that import each other (directly or not), each with its edges and where.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<(BTreeSet<String>, Vec<String>)> {
    let reached: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reach(graph, m))).collect();
    let mut out: Vec<(BTreeSet<String>, Vec<String>)> = Vec::new();
    for m in graph.keys() {
        let set: BTreeSet<String> = reached[m]
            .iter()
            .filter(|o| reached[*o].contains(m))
            .cloned()
            .collect();
        if set.len() > 1 && !out.iter().any(|(s, _)| s.contains(m)) {
            let edges = set
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|(b, _)| set.contains(*b))
                        .map(move |(b, at)| format!("{a} -> {b} ({at})"))
                })
                .collect();
            out.push((set, edges));
        }
    }
    out
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = graph();
    assert!(
        graph.len() > 10 && graph["api"].contains_key("engine"),
        "{graph:?}"
    );
    let found = cycles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|(set, edges)| format!("modules importing each other: {set:?}\n{}", edges.join("\n")))
        .collect();
    assert!(found.is_empty(), "{}", report.join("\n\n"));
}

#[test]
fn imports_are_read_from_paths_and_groups_outside_comments() {
    let text = "use crate::a::B;\n// crate::hidden\nuse crate::{c, d::e, f::{g, h}};\nlet x = crate::i::j(); /* crate::k */";
    let names: Vec<String> = imports(&code(text)).into_iter().map(|(m, _)| m).collect();
    assert_eq!(names, ["a", "c", "d", "f", "i"]);
    let lines: Vec<usize> = imports(&code(text)).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, [1, 3, 3, 3, 4]);
}
