//! Validation: every kind of invalid graph is refused with an error naming the node.

use serde_json::{json, Value as Json};

use super::*;
use crate::graph::{default_graph, GraphError, NodeSpec};

fn errors(json: Json) -> Vec<GraphError> {
    match compile(&spec(json)) {
        Ok(_) => panic!("the graph should not compile"),
        Err(errors) => {
            assert!(!errors.is_empty());
            errors
        }
    }
}

/// Asserts that compiling `json` fails with an error on `node` whose message contains `text`.
#[track_caller]
fn refused(json: Json, node: &str, text: &str) -> Vec<GraphError> {
    let errors = errors(json);
    assert!(
        errors.iter().any(|e| e.node.as_deref() == Some(node) && e.message.contains(text)),
        "expected an error on `{node}` containing {text:?}, got {errors:#?}"
    );
    errors
}

fn energy() -> Json {
    json!({"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}})
}

fn trace(len: Option<usize>) -> Json {
    match len {
        Some(len) => json!({"id": "trace", "op": "select", "params": {"field": "trace", "kind": "waveform", "length": len}}),
        None => json!({"id": "trace", "op": "select", "params": {"field": "trace", "kind": "waveform"}}),
    }
}

fn cam() -> Json {
    json!({"id": "cam", "op": "select", "params": {"field": "cam", "kind": "image", "width": 64, "height": 32}})
}

/// A graph of energy, trace (length 100), cam (64x32) and `node`, publishing `node`.
fn one(node: Json) -> Json {
    let id = node["id"].clone();
    json!({"nodes": [energy(), trace(Some(100)), cam(), node], "results": [id]})
}

#[test]
fn unknown_op() {
    refused(
        one(json!({"id": "x", "op": "median", "inputs": ["trace"]})),
        "x",
        "unknown op `median`",
    );
}

#[test]
fn empty_and_duplicate_ids() {
    let errors = refused(
        json!({"nodes": [energy(), {"id": "", "op": "sum", "inputs": ["trace"]}, trace(None)], "results": ["energy"]}),
        "",
        "empty id",
    );
    assert!(errors[0].message.contains("node #1"), "{errors:?}");
    refused(
        json!({"nodes": [energy(), energy()], "results": ["energy"]}),
        "energy",
        "duplicate id",
    );
}

#[test]
fn inputs_that_are_not_nodes() {
    refused(
        one(json!({"id": "x", "op": "sum", "inputs": ["tarce"]})),
        "x",
        "input `tarce` is not a node",
    );
    refused(
        one(json!({"id": "x", "op": "add", "inputs": ["energy", ""]})),
        "x",
        "input `` is not a node",
    );
}

#[test]
fn wrong_input_counts() {
    refused(
        one(json!({"id": "x", "op": "sum", "inputs": ["trace", "trace"]})),
        "x",
        "takes 1 input, got 2",
    );
    refused(one(json!({"id": "x", "op": "sum"})), "x", "takes 1 input, got 0");
    refused(
        one(json!({"id": "x", "op": "select", "inputs": ["energy"], "params": {"field": "a", "kind": "scalar"}})),
        "x",
        "takes no inputs, got 1",
    );
    refused(
        one(json!({"id": "x", "op": "binned_mean", "inputs": ["energy"], "params": {"bins": 2, "low": 0, "high": 1}})),
        "x",
        "takes 2 inputs [value, scan], got 1",
    );
    refused(
        one(json!({"id": "x", "op": "add", "inputs": ["energy"]})),
        "x",
        "takes 2 inputs (or 1 input and a `constant` parameter), got 1",
    );
    refused(
        one(json!({"id": "x", "op": "add", "inputs": ["energy", "energy"], "params": {"constant": 1}})),
        "x",
        "takes 1 input (it has a `constant`), got 2",
    );
}

#[test]
fn cycles() {
    let errors = refused(
        json!({"nodes": [
            energy(),
            {"id": "a", "op": "add", "inputs": ["energy", "c"]},
            {"id": "b", "op": "mul", "inputs": ["a"], "params": {"constant": 2}},
            {"id": "c", "op": "sub", "inputs": ["b"], "params": {"constant": 1}},
            {"id": "after", "op": "sum", "inputs": ["c"]},
            {"id": "self", "op": "add", "inputs": ["self"], "params": {"constant": 1}},
        ], "results": ["a", "self"]}),
        "a",
        "cycle among nodes `a`, `b`, `c`",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.node.as_deref() == Some("self") && e.message.contains("its own input")),
        "{errors:#?}"
    );
    // `after` (a sum of a scalar) is downstream of the cycle: not checked, no cascade.
    assert!(!errors.iter().any(|e| e.node.as_deref() == Some("after")), "{errors:#?}");
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn type_mismatches() {
    refused(
        one(json!({"id": "x", "op": "sum", "inputs": ["energy"]})),
        "x",
        "`sum` needs a waveform or an image, but input `energy` is a scalar",
    );
    refused(
        one(json!({"id": "x", "op": "projection", "inputs": ["trace"], "params": {"axis": 0}})),
        "x",
        "needs an image, but input `trace` is a waveform",
    );
    refused(
        one(json!({"id": "x", "op": "histogram", "inputs": ["cam"], "params": {"bins": 2, "low": 0, "high": 1}})),
        "x",
        "`histogram` needs a scalar, but input `cam` is an image",
    );
    refused(
        one(json!({"id": "x", "op": "strip_chart", "inputs": ["trace"]})),
        "x",
        "needs a scalar",
    );
    refused(
        one(json!({"id": "x", "op": "filter", "inputs": ["trace"], "params": {"min": 0}})),
        "x",
        "needs a scalar",
    );
    refused(
        one(json!({"id": "x", "op": "threshold", "inputs": ["energy"], "params": {"level": 0}})),
        "x",
        "needs a waveform or an image",
    );
    refused(
        one(json!({"id": "x", "op": "peaks", "inputs": ["energy"], "params": {"threshold": 0}})),
        "x",
        "needs a waveform or an image",
    );
    refused(
        one(json!({"id": "x", "op": "roi", "inputs": ["energy"], "params": {"start": 0, "end": 1}})),
        "x",
        "needs a waveform or an image",
    );
    refused(
        one(json!({"id": "x", "op": "roi", "inputs": ["cam"], "params": {"start": 0, "end": 1}})),
        "x",
        "is an image: its roi needs `x0`",
    );
    refused(
        one(json!({"id": "x", "op": "roi", "inputs": ["trace"], "params": {"x0": 0, "y0": 0, "x1": 1, "y1": 1}})),
        "x",
        "is a waveform: its roi needs `start` and `end`",
    );
    refused(
        one(json!({"id": "x", "op": "add", "inputs": ["trace", "cam"]})),
        "x",
        "cannot combine input `trace`",
    );
    let errors = refused(
        one(json!({"id": "x", "op": "binned_mean", "inputs": ["trace", "cam"], "params": {"bins": 2, "low": 0, "high": 1}})),
        "x",
        "value input `trace` is a waveform",
    );
    assert!(
        errors.iter().any(|e| e.message.contains("scan input `cam` is an image")),
        "{errors:#?}"
    );
}

#[test]
fn shape_mismatches_when_shapes_are_known() {
    refused(
        one(json!({"id": "x", "op": "roi", "inputs": ["trace"], "params": {"start": 90, "end": 101}})),
        "x",
        "out of bounds of input `trace` of length 100",
    );
    let errors = refused(
        one(json!({"id": "x", "op": "roi", "inputs": ["cam"], "params": {"x0": 0, "y0": 0, "x1": 65, "y1": 33}})),
        "x",
        "x range 0..65 is out of bounds of input `cam` of width 64",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("y range 0..33 is out of bounds of input `cam` of height 32")),
        "{errors:#?}"
    );
    // Shapes propagate: an roi of an roi, and a projection.
    refused(
        json!({"nodes": [
            trace(Some(100)),
            {"id": "r", "op": "roi", "inputs": ["trace"], "params": {"start": 10, "end": 20}},
            {"id": "rr", "op": "roi", "inputs": ["r"], "params": {"start": 5, "end": 11}},
        ], "results": ["rr"]}),
        "rr",
        "of length 10",
    );
    refused(
        json!({"nodes": [
            trace(Some(100)), cam(),
            {"id": "p", "op": "projection", "inputs": ["cam"], "params": {"axis": 1}},
            {"id": "x", "op": "add", "inputs": ["p", "trace"]},
        ], "results": ["x"]}),
        "x",
        "shape mismatch: input `p` is a waveform of length 32, input `trace` is a waveform of length 100",
    );
    refused(
        json!({"nodes": [
            cam(),
            {"id": "a", "op": "roi", "inputs": ["cam"], "params": {"x0": 0, "y0": 0, "x1": 4, "y1": 4}},
            {"id": "b", "op": "roi", "inputs": ["cam"], "params": {"x0": 0, "y0": 0, "x1": 4, "y1": 5}},
            {"id": "x", "op": "mul", "inputs": ["a", "b"]},
        ], "results": ["x"]}),
        "x",
        "shape mismatch",
    );
    // Unknown shapes are accepted (and checked at run time).
    assert!(compile(&spec(json!({"nodes": [
        trace(None),
        {"id": "r", "op": "roi", "inputs": ["trace"], "params": {"start": 1000, "end": 2000}},
    ], "results": ["r"]})))
    .is_ok());
}

#[test]
fn bad_or_missing_params() {
    let h = |params: Json| one(json!({"id": "h", "op": "histogram", "inputs": ["energy"], "params": params}));
    refused(h(json!({"bins": 0, "low": 0, "high": 1})), "h", "`bins` must be at least 1");
    refused(
        h(json!({"bins": 2, "low": 1, "high": 1})),
        "h",
        "`low` (1) must be below `high` (1)",
    );
    refused(h(json!({"bins": 2, "low": 2, "high": 1})), "h", "must be below");
    refused(
        h(json!({"bins": "10", "low": 0, "high": 1})),
        "h",
        "parameter `bins` must be a non-negative integer, got a string",
    );
    refused(h(json!({"bins": 2.5, "low": 0, "high": 1})), "h", "got 2.5");
    refused(h(json!({"bins": -3, "low": 0, "high": 1})), "h", "got -3");
    refused(h(json!({"bins": 10_000_000, "low": 0, "high": 1})), "h", "at most");
    refused(
        h(json!({"bins": 2, "low": "a", "high": 1})),
        "h",
        "parameter `low` must be a number, got a string",
    );
    refused(h(json!({"bins": 2, "low": 0, "high": 1, "bin": 3})), "h", "unknown parameter `bin`");
    let errors = refused(h(json!({})), "h", "missing parameter `bins`");
    assert_eq!(errors.len(), 3, "bins, low and high are all reported: {errors:#?}");
    refused(h(json!([1, 2])), "h", "params must be a JSON object, got an array");
    // Integral floats are integers.
    assert!(compile(&spec(h(json!({"bins": 2.0, "low": 0, "high": 1})))).is_ok());

    let s = |params: Json| json!({"nodes": [{"id": "s", "op": "select", "params": params}], "results": ["s"]});
    refused(s(json!({"kind": "scalar"})), "s", "missing parameter `field`");
    refused(s(json!({"field": "a"})), "s", "missing parameter `kind`");
    refused(s(json!({"field": "", "kind": "scalar"})), "s", "`field` must not be empty");
    refused(
        s(json!({"field": "a", "kind": "vector"})),
        "s",
        "`kind` must be \"scalar\", \"waveform\" or \"image\"",
    );
    refused(s(json!({"field": 3, "kind": "scalar"})), "s", "`field` must be a string");
    refused(
        s(json!({"field": "a", "kind": "scalar", "length": 3})),
        "s",
        "`length` does not apply to a scalar",
    );
    refused(
        s(json!({"field": "a", "kind": "waveform", "width": 3})),
        "s",
        "`width` applies to images",
    );
    refused(
        s(json!({"field": "a", "kind": "image", "length": 3})),
        "s",
        "`length` applies to waveforms",
    );
    refused(
        s(json!({"field": "a", "kind": "image", "width": -1})),
        "s",
        "`width` must be a non-negative integer",
    );

    let r = |params: Json| one(json!({"id": "r", "op": "roi", "inputs": ["trace"], "params": params}));
    refused(r(json!({"start": 5, "end": 5})), "r", "empty or inverted range: start 5 >= end 5");
    refused(r(json!({"start": 6, "end": 5})), "r", "empty or inverted range");
    refused(r(json!({"start": 6})), "r", "missing parameter `end`");
    refused(r(json!({})), "r", "missing parameters");
    refused(r(json!({"start": 0, "end": 5, "x0": 1})), "r", "not both");
    let c = |params: Json| one(json!({"id": "r", "op": "roi", "inputs": ["cam"], "params": params}));
    let errors = refused(c(json!({"x0": 4, "y0": 3, "x1": 2, "y1": 3})), "r", "x0 4 >= x1 2");
    assert!(errors.iter().any(|e| e.message.contains("y0 3 >= y1 3")), "{errors:#?}");
    refused(c(json!({"x0": 0, "y0": 0, "x1": 2})), "r", "missing parameter `y1`");

    refused(
        one(json!({"id": "p", "op": "projection", "inputs": ["cam"], "params": {"axis": 2}})),
        "p",
        "`axis` must be 0",
    );
    refused(
        one(json!({"id": "p", "op": "projection", "inputs": ["cam"]})),
        "p",
        "missing parameter `axis`",
    );
    refused(
        one(json!({"id": "f", "op": "filter", "inputs": ["energy"]})),
        "f",
        "`min`, `max` or both",
    );
    refused(
        one(json!({"id": "f", "op": "filter", "inputs": ["energy"], "params": {"min": 2, "max": 1}})),
        "f",
        "empty range",
    );
    refused(
        one(json!({"id": "t", "op": "threshold", "inputs": ["trace"]})),
        "t",
        "missing parameter `level`",
    );
    refused(
        one(json!({"id": "t", "op": "peaks", "inputs": ["trace"], "params": {"threshold": true}})),
        "t",
        "must be a number, got a boolean",
    );
    refused(
        one(json!({"id": "m", "op": "mean", "inputs": ["trace"], "params": {"axis": 0}})),
        "m",
        "`mean` takes no parameters",
    );
    refused(
        one(json!({"id": "a", "op": "add", "inputs": ["energy"], "params": {"constant": "1"}})),
        "a",
        "`constant` must be a number",
    );
    refused(
        one(json!({"id": "b", "op": "binned_mean", "inputs": ["energy", "energy"], "params": {"bins": 0, "low": 0, "high": 1}})),
        "b",
        "at least 1",
    );
}

#[test]
fn results() {
    refused(
        json!({"nodes": [energy()], "results": ["energy", "enrgy"]}),
        "enrgy",
        "listed in results, but the graph has no node",
    );
    refused(
        json!({"nodes": [energy()], "results": ["energy", "energy"]}),
        "energy",
        "listed twice",
    );
    let errors = errors(json!({"nodes": [energy()], "results": []}));
    assert!(
        errors.iter().any(|e| e.node.is_none() && e.message.contains("no results")),
        "{errors:#?}"
    );
    assert!(errors[0].to_string().starts_with("the graph has no results"));
    // More results than Results keeps per bin.
    let many: Vec<Json> = (0..=crate::graph::MAX_RESULTS)
        .map(|k| json!({"id": format!("e{k}"), "op": "select", "params": {"field": "energy", "kind": "scalar"}}))
        .collect();
    let names: Vec<String> = (0..=crate::graph::MAX_RESULTS).map(|k| format!("e{k}")).collect();
    let too_many = self::errors(json!({"nodes": many, "results": names}));
    assert!(
        too_many
            .iter()
            .any(|e| e.node.is_none() && e.message.contains("publishes 65 results; at most 64")),
        "{too_many:#?}"
    );
    let within: Vec<String> = names[..crate::graph::MAX_RESULTS].to_vec();
    assert!(compile(&serde_json::from_value(json!({"nodes": many, "results": within})).unwrap()).is_ok());
}

#[test]
fn accumulating_ops_cannot_feed_other_nodes() {
    for (op, params) in [
        ("histogram", json!({"bins": 2, "low": 0, "high": 1})),
        ("strip_chart", Json::Null),
        ("binned_mean", json!({"bins": 2, "low": 0, "high": 1})),
    ] {
        let inputs = if op == "binned_mean" {
            json!(["energy", "energy"])
        } else {
            json!(["energy"])
        };
        refused(
            json!({"nodes": [
                energy(),
                {"id": "acc", "op": op, "inputs": inputs, "params": params},
                {"id": "x", "op": "add", "inputs": ["acc"], "params": {"constant": 1}},
            ], "results": ["x", "acc"]}),
            "x",
            &format!("input `acc` is a `{op}`, an accumulating op"),
        );
    }
}

#[test]
fn several_problems_are_reported_at_once() {
    let errors = errors(json!({
        "nodes": [
            energy(),
            trace(Some(8)),
            {"id": "bad_op", "op": "fft", "inputs": ["trace"]},
            {"id": "sum_scalar", "op": "sum", "inputs": ["energy"]},
            {"id": "hist", "op": "histogram", "inputs": ["energy"], "params": {"bins": 0, "low": 1, "high": 0}},
            {"id": "roi", "op": "roi", "inputs": ["trace"], "params": {"start": 4, "end": 9}},
            {"id": "orphan", "op": "mean", "inputs": ["nowhere"]},
            {"id": "energy", "op": "select", "params": {"field": "e", "kind": "scalar"}},
        ],
        "results": ["hist", "roi", "missing"],
    }));
    let expect = [
        ("bad_op", "unknown op"),
        ("sum_scalar", "is a scalar"),
        ("hist", "`bins` must be at least 1"),
        ("hist", "must be below"),
        ("roi", "out of bounds"),
        ("orphan", "not a node"),
        ("energy", "duplicate id"),
        ("missing", "listed in results"),
    ];
    for (node, text) in expect {
        assert!(
            errors.iter().any(|e| e.node.as_deref() == Some(node) && e.message.contains(text)),
            "missing error on `{node}` ({text}) in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for e in &errors {
        let node = e.node.as_deref().unwrap();
        assert_eq!(e.to_string(), format!("node `{node}`: {}", e.message));
    }
}

#[test]
fn graph_json_round_trips() {
    let text = r#"{
        "nodes": [
            {"id": "img", "op": "select", "params": {"field": "cspad", "kind": "image"}},
            {"id": "roi", "op": "roi", "inputs": ["img"], "params": {"x0": 32, "y0": 32, "x1": 96, "y1": 96}},
            {"id": "roi_mean", "op": "mean", "inputs": ["roi"]}
        ],
        "results": ["roi_mean"]
    }"#;
    let spec: GraphSpec = serde_json::from_str(text).unwrap();
    assert_eq!(spec.nodes[0].inputs, Vec::<String>::new());
    assert_eq!(spec.nodes[2].params, Json::Null);
    assert_eq!(
        spec.nodes[1],
        NodeSpec {
            id: "roi".into(),
            op: "roi".into(),
            inputs: vec!["img".into()],
            params: json!({"x0": 32, "y0": 32, "x1": 96, "y1": 96}),
        }
    );
    let back: GraphSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    let g = compile(&spec).unwrap();
    assert_eq!(g.result_names(), ["roi_mean"]);

    let default = default_graph();
    let back: GraphSpec = serde_json::from_str(&serde_json::to_string_pretty(&default).unwrap()).unwrap();
    assert_eq!(back, default);

    // Errors serialize too (they are sent back to clients).
    let e = GraphError {
        node: Some("roi".into()),
        message: "bad".into(),
    };
    assert_eq!(serde_json::from_value::<GraphError>(serde_json::to_value(&e).unwrap()).unwrap(), e);
    assert_eq!(e.to_string(), "node `roi`: bad");
}

#[test]
fn documented_module_example_matches_the_docs() {
    // Keep the JSON example in mod.rs compiling: extract it and compile it.
    let docs = include_str!("../mod.rs");
    let start = docs.find("//! ```json").expect("a JSON example") + "//! ```json".len();
    let end = start + docs[start..].find("//! ```").expect("end of the example");
    let text: String = docs[start..end]
        .lines()
        .map(|l| l.trim_start().trim_start_matches("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let spec: GraphSpec = serde_json::from_str(&text).expect("the documented example parses");
    compile(&spec).expect("the documented example compiles");
}
