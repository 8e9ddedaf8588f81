//! The shape of the source tree, checked: no import circles between modules, and no source file
//! longer than a newcomer can read at once.
//!
//! A module depends on another when its code names a path into it (`crate::a::b`, `super::c`),
//! in a `use` or inline. Dependencies between a module and its own ancestors or descendants are
//! how Rust nests modules and do not count; a circle among the rest means neither module can be
//! understood (or moved) without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Non-test lines a source file may hold.
const MAX_LINES: usize = 800;

/// Every module of the library, by path (`kernels::qconv`), with its source.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix("src").unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
                continue;
            }
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// The source before its test module, without comments.
fn code(source: &str) -> Vec<&str> {
    let mut lines = vec![];
    let mut it = source.lines().peekable();
    while let Some(line) = it.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]" && it.peek().is_some_and(|n| n.contains("mod tests")) {
            break;
        }
        if !t.starts_with("//") {
            lines.push(line);
        }
    }
    lines
}

fn is_ancestor(a: &str, b: &str) -> bool {
    a.is_empty() || b.starts_with(&format!("{a}::"))
}

/// The modules `module` names paths into, other than its ancestors and descendants.
fn dependencies(module: &str, source: &str, all: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for line in code(source) {
        let bytes = line.as_bytes();
        let mut at = 0;
        while at < line.len() {
            let rest = &line[at..];
            let start = ["crate::", "super::"]
                .iter()
                .filter_map(|p| rest.find(p))
                .min();
            let Some(start) = start else { break };
            let begin = at + start;
            let preceded =
                begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
            let end = line[begin..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(line.len(), |e| begin + e);
            at = end.max(begin + 1);
            if preceded {
                continue;
            }
            let mut base: Vec<&str> = if module.is_empty() {
                vec![]
            } else {
                module.split("::").collect()
            };
            let mut segments = line[begin..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .peekable();
            if segments.peek() == Some(&"crate") {
                base.clear();
                segments.next();
            }
            while segments.peek() == Some(&"super") {
                base.pop();
                segments.next();
            }
            // The longest module named by the path.
            let mut target = base.join("::");
            for s in segments {
                let next = if target.is_empty() {
                    s.to_owned()
                } else {
                    format!("{target}::{s}")
                };
                if !all.contains_key(&next) {
                    break;
                }
                target = next;
            }
            if target != module && !is_ancestor(&target, module) && !is_ancestor(module, &target) {
                deps.insert(target);
            }
        }
    }
    deps
}

#[test]
fn no_import_circles() {
    let all = modules();
    let graph: BTreeMap<&str, BTreeSet<String>> = all
        .iter()
        .map(|(m, src)| (m.as_str(), dependencies(m, src, &all)))
        .collect();
    // A module is in a circle when one of its dependencies leads back to it.
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(graph.get(m.as_str()).into_iter().flatten().cloned());
            }
        }
        false
    };
    let mut circles = vec![];
    for (m, deps) in &graph {
        for d in deps {
            if reaches(d, m) {
                circles.push(format!("{m} → {d} → … → {m}"));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_source_file_is_too_long() {
    let long: Vec<String> = modules()
        .iter()
        .filter(|(m, _)| !m.ends_with("tests"))
        .filter_map(|(m, src)| {
            let n = code(src).len();
            (n > MAX_LINES).then(|| format!("{m}: {n} lines of code"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} non-test, non-comment lines:\n{}",
        long.join("\n")
    );
}

/// The check finds a circle where there is one.
#[test]
fn a_circle_is_found() {
    let mut all = BTreeMap::new();
    all.insert("a".to_owned(), "use crate::b::X;".to_owned());
    all.insert("b".to_owned(), "fn f() { super::a::g() }".to_owned());
    all.insert("a::c".to_owned(), "use super::super::b;".to_owned());
    assert_eq!(
        dependencies("a", &all["a"], &all),
        BTreeSet::from(["b".to_owned()])
    );
    assert_eq!(
        dependencies("b", &all["b"], &all),
        BTreeSet::from(["a".to_owned()])
    );
    assert_eq!(
        dependencies("a::c", &all["a::c"], &all),
        BTreeSet::from(["b".to_owned()])
    );
}
