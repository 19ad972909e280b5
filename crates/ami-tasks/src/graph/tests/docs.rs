//! docs/graph.md's op reference: every op has an entry, and every example graph compiles.

use super::super::ops::OP_NAMES;
use super::spec;

const GRAPH_DOC: &str = include_str!("../../../../../docs/graph.md");

/// The op reference: from its heading to the next `## ` section.
fn reference() -> &'static str {
    let start = GRAPH_DOC.find("\n## Op reference").expect("docs/graph.md has an op reference");
    let rest = &GRAPH_DOC[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_op_has_an_entry() {
    let headings: Vec<&str> = reference().lines().filter(|l| l.starts_with("### ")).collect();
    for op in OP_NAMES {
        assert!(
            headings.iter().any(|h| h.contains(&format!("`{op}`"))),
            "docs/graph.md has no entry for `{op}`"
        );
    }
}

#[test]
fn every_example_compiles() {
    let mut examples = 0;
    for block in reference().split("```json\n").skip(1) {
        let text = &block[..block.find("```").expect("a closed code block")];
        let json: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        if let Err(errors) = crate::graph::compile(&spec(json)) {
            panic!("example does not compile: {errors:?}\n{text}");
        }
        examples += 1;
    }
    let entries = reference().lines().filter(|l| l.starts_with("### ")).count();
    assert_eq!(examples, entries, "one example per entry");
}
