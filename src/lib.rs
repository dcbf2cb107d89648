//! weightgate: a gated distribution portal for machine-learning model weights.
//!
//! Researchers apply for a model, reviewers decide, approved researchers
//! download checksummed files through expiring signed links, and every fetch
//! is audit-logged.

pub mod app;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
mod crypto;
pub mod db;
pub mod domain;
pub mod mail;
mod network;
pub mod storage;
mod telemetry;
pub mod types;
pub mod web;
pub mod webhooks;

#[cfg(test)]
mod architecture {
    //! The shape of the crate, checked: no two of its parts depend on each
    //! other in a circle, and each part depends only on what the design lets
    //! it. A part is a file or folder of `src/`; inside `domain/` each concept
    //! is a part of its own.

    use std::{
        collections::{BTreeMap, BTreeSet},
        path::Path,
    };

    /// The parts each part of `src/` names with `crate::` (or, inside
    /// `domain/`, with `super::`).
    fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let relative = path.strip_prefix(&src).unwrap().with_extension("");
                let segments: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let part = match segments.as_slice() {
                    [only] if only == "lib" || only == "main" => continue,
                    [domain, concept, ..] if domain == "domain" && concept != "mod" => {
                        format!("domain::{concept}")
                    }
                    [first, ..] => first.clone(),
                    [] => continue,
                };
                let text = std::fs::read_to_string(&path).unwrap();
                let mut names = crate_names(&text, "crate::");
                if part.starts_with("domain::") && segments.len() == 2 {
                    names.extend(
                        crate_names(&text, "super::")
                            .into_iter()
                            .map(|n| format!("domain::{n}")),
                    );
                }
                let named = graph.entry(part.clone()).or_default();
                for name in names {
                    if name != part {
                        named.insert(name);
                    }
                }
            }
        }
        graph
    }

    /// The parts named after every `prefix` (`crate::`), in paths and in
    /// `{…}` use trees; comments are skipped.
    fn crate_names(text: &str, prefix: &str) -> BTreeSet<String> {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut names = BTreeSet::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            parts_of(rest, &mut names);
        }
        names.retain(|n| !n.is_empty() && n != "self" && n != "domain::self");
        names
    }

    /// The part a path starting at `path` names, or the parts of each item of
    /// the `{…}` tree it starts with.
    fn parts_of(path: &str, names: &mut BTreeSet<String>) {
        for item in tree_items(path) {
            let head = ident(item);
            if head == "domain" {
                let after = item.trim_start()[head.len()..].trim_start();
                if let Some(inner) = after.strip_prefix("::") {
                    let mut concepts = BTreeSet::new();
                    parts_of(inner, &mut concepts);
                    names.extend(concepts.into_iter().map(|c| format!("domain::{c}")));
                    continue;
                }
            }
            names.insert(head);
        }
    }

    /// The top-level items of the `{…}` tree `path` starts with, or `path`
    /// itself.
    fn tree_items(path: &str) -> Vec<&str> {
        let Some(tree) = path.trim_start().strip_prefix('{') else {
            return vec![path];
        };
        let mut items = Vec::new();
        let (mut depth, mut start) = (1, 0);
        for (i, c) in tree.char_indices() {
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    items.push(&tree[start..i]);
                    start = i + 1;
                    if c == '}' {
                        break;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        items
    }

    fn ident(s: &str) -> String {
        s.chars()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    }

    /// A circle of parts, if there is one.
    fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == node) {
                let mut found = path[at..].to_vec();
                found.push(node.to_owned());
                return Some(found);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node.to_owned());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(found) = visit(next, graph, path, done) {
                    return Some(found);
                }
            }
            path.pop();
            done.insert(node.to_owned());
            None
        }
        let mut done = BTreeSet::new();
        graph
            .keys()
            .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
    }

    #[test]
    fn no_two_parts_depend_on_each_other_in_a_circle() {
        let graph = dependencies();
        assert!(
            graph.contains_key("audit") && graph["web"].contains("domain::authz"),
            "{graph:?}"
        );
        assert!(graph["domain::grants"].contains("domain::reviews"), "{graph:?}");
        assert_eq!(circle(&graph), None, "{graph:#?}");
    }

    #[test]
    fn each_part_depends_only_on_what_the_design_lets_it() {
        let graph = dependencies();
        let rules: [(&str, &[&str]); 4] = [
            ("domain::", &["web", "cli", "client"]),
            ("app", &["domain::", "web", "cli"]),
            ("db", &["domain::", "audit", "web", "cli", "crypto"]),
            ("audit", &["domain::", "web", "cli"]),
        ];
        for (part, named) in &graph {
            for (from, never) in rules {
                if part == from || (from.ends_with("::") && part.starts_with(from)) {
                    let broken: Vec<_> = named
                        .iter()
                        .filter(|n| {
                            never
                                .iter()
                                .any(|f| *n == f || (f.ends_with("::") && n.starts_with(f)))
                        })
                        .collect();
                    assert!(broken.is_empty(), "{part} depends on {broken:?}");
                }
            }
        }
    }

    #[test]
    fn the_checks_see_use_trees_and_paths() {
        let names = crate_names(
            "use crate::{a::b, c, d::{e, f}, domain::{x, y::Z}};\n\
             let x = crate::g::h(); // crate::ignored\n\
             crate::domain::w::v(); notcrate::k();\n",
            "crate::",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["a", "c", "d", "domain::w", "domain::x", "domain::y", "g"]
        );
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
            ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
        ]
        .into();
        assert_eq!(circle(&graph), Some(vec!["a".into(), "b".into(), "a".into()]));
    }
}
