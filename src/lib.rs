//! weightgate: a gated distribution portal for machine-learning model weights.
//!
//! Researchers apply for a model, reviewers decide, approved researchers
//! download checksummed files through expiring signed links, and every fetch
//! is audit-logged.

pub mod accounts;
pub mod app;
pub mod applications;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod deliveries;
pub mod facts;
pub mod forms;
pub mod grants;
pub mod limits;
pub mod links;
pub mod mail;
pub mod manifests;
pub mod models;
pub mod notices;
pub mod passwords;
pub mod policy;
pub mod proxies;
pub mod questions;
pub mod renewals;
pub mod researchers;
pub mod reviews;
pub mod storage;
pub mod telemetry;
pub mod threads;
pub mod types;
pub mod web;

#[cfg(test)]
mod architecture {
    //! The shape of the crate, checked: no two of its parts depend on each
    //! other in a circle.

    use std::{
        collections::{BTreeMap, BTreeSet},
        path::Path,
    };

    /// The top-level parts each part of `src/` names with `crate::`.
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
                let relative = path.strip_prefix(&src).unwrap();
                let part = relative
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned();
                if part == "lib" || part == "main" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let named = graph.entry(part.clone()).or_default();
                for name in crate_names(&text) {
                    if name != part {
                        named.insert(name);
                    }
                }
            }
        }
        graph
    }

    /// The first name after every `crate::`, and every top-level name of a
    /// `crate::{…}` tree; comments are skipped.
    fn crate_names(text: &str) -> BTreeSet<String> {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let ident = |s: &str| -> String {
            s.chars()
                .skip_while(|c| c.is_whitespace())
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut names = BTreeSet::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(tree) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut start = 0;
                for (i, c) in tree.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' | ',' if depth == 1 => {
                            names.insert(ident(&tree[start..i]));
                            start = i + 1;
                            if c == '}' {
                                break;
                            }
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
            } else {
                names.insert(ident(rest));
            }
        }
        names.retain(|n| !n.is_empty() && n != "self");
        names
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
            graph.contains_key("audit") && graph["web"].contains("authz"),
            "{graph:?}"
        );
        assert_eq!(circle(&graph), None, "{graph:#?}");
    }

    #[test]
    fn the_circle_check_sees_use_trees_and_paths() {
        let names =
            crate_names("use crate::{a::b, c, d::{e, f}};\nlet x = crate::g::h(); // crate::ignored\n");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "g"]);
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
            ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
        ]
        .into();
        assert_eq!(circle(&graph), Some(vec!["a".into(), "b".into(), "a".into()]));
    }
}
