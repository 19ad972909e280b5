use serde_json::json;

use super::*;
use crate::graph::default_graph;

fn request(base_version: u64, edits: Vec<Edit>, results: Option<&[&str]>) -> Request {
    Request {
        id: 9,
        base_version,
        edits,
        results: results.map(|r| r.iter().map(|s| s.to_string()).collect()),
    }
}

fn add(id: &str, op: &str, inputs: &[&str], params: Value) -> Edit {
    Edit::AddNode {
        node: NodeDoc::new(id, op, inputs, params),
    }
}

fn set_params(id: &str, params: Value) -> Edit {
    Edit::SetParams { id: id.into(), params }
}

fn codes(reasons: &[Reason]) -> Vec<(ErrorCode, Option<&str>)> {
    reasons.iter().map(|r| (r.code, r.node.as_deref())).collect()
}

fn no_history(_: u64) -> Option<GraphSpec> {
    None
}

#[test]
fn an_edit_on_the_current_version_is_applied_and_optimised() {
    let current = default_graph();
    let req = request(
        3,
        vec![
            add("energy_chart", "strip_chart", &["energy2"], Value::Null),
            add("energy2", "select", &[], json!({"field": "energy", "kind": "scalar"})),
        ],
        Some(&["energy_chart", "energy_hist"]),
    );
    let decision = decide(&req, 3, &current, no_history).unwrap();
    assert_eq!(decision.edited.nodes.len(), current.nodes.len() + 2);
    assert_eq!(decision.edited.results, vec!["energy_chart", "energy_hist"]);
    // Optimised: only what the two results need, and `energy` shared with `energy2` (met first,
    // from the first result).
    let ids: Vec<&str> = decision.optimised.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["energy2", "energy_chart", "energy_hist"]);
    assert_eq!(decision.optimised.nodes[2].inputs, vec!["energy2"]);
    compile(&decision.optimised).unwrap();
}

#[test]
fn every_edit_failure_and_graph_problem_is_reported() {
    let current = default_graph();
    let req = request(
        1,
        vec![
            add("energy", "select", &[], json!({"field": "x", "kind": "scalar"})),
            Edit::RemoveNode { id: "nope".into() },
            set_params("ghost", json!({})),
            Edit::ConnectInputs {
                id: "trace_peaks".into(),
                inputs: vec!["missing".into()],
            },
            set_params("cspad_roi", json!({"x0": 0, "y0": 0, "x1": 200, "y1": 10})),
        ],
        None,
    );
    let reasons = decide(&req, 1, &current, no_history).unwrap_err();
    let got = codes(&reasons);
    assert_eq!(got[0], (ErrorCode::DuplicateNode, Some("energy")));
    assert_eq!(got[1], (ErrorCode::UnknownNode, Some("nope")));
    assert_eq!(got[2], (ErrorCode::UnknownNode, Some("ghost")));
    assert!(got.contains(&(ErrorCode::InvalidGraph, Some("trace_peaks"))), "{reasons:#?}");
    assert!(got.contains(&(ErrorCode::InvalidGraph, Some("cspad_roi"))), "{reasons:#?}");
    assert!(reasons.iter().all(|r| !r.message.is_empty()));
}

#[test]
fn structurally_bad_requests_are_invalid_requests() {
    let reasons = decide(&request(1, vec![], None), 1, &default_graph(), no_history).unwrap_err();
    assert_eq!(codes(&reasons), vec![(ErrorCode::InvalidRequest, None)]);
}

#[test]
fn removing_a_node_still_used_is_an_invalid_graph() {
    let reasons = decide(
        &request(1, vec![Edit::RemoveNode { id: "energy".into() }], None),
        1,
        &default_graph(),
        no_history,
    )
    .unwrap_err();
    assert!(reasons.iter().all(|r| r.code == ErrorCode::InvalidGraph), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.node.as_deref() == Some("energy_hist")), "{reasons:#?}");
}

#[test]
fn an_older_base_conflicts_only_on_nodes_changed_since() {
    let base = default_graph();
    // Since version 4, someone changed the histogram and added a node.
    let (current, reasons) = apply_edits(
        &base,
        &[
            set_params("energy_hist", json!({"bins": 10, "low": 0, "high": 10})),
            add("extra", "sum", &["trace"], Value::Null),
        ],
    );
    assert!(reasons.is_empty());
    assert_eq!(
        changed_nodes(&base, &current).into_iter().collect::<Vec<_>>(),
        vec!["energy_hist", "extra"]
    );
    let history = |v: u64| (v == 4).then(|| base.clone());

    // Touching other nodes: rebased on the current graph, the earlier change is kept.
    let ok = request(4, vec![set_params("trace_peaks", json!({"threshold": 0.9}))], None);
    let decision = decide(&ok, 6, &current, history).unwrap();
    let hist = decision.edited.nodes.iter().find(|n| n.id == "energy_hist").unwrap();
    assert_eq!(hist.params["bins"], json!(10));

    // Touching a changed node, directly or as an input: one reason per node.
    let bad = request(
        4,
        vec![
            set_params("energy_hist", json!({"bins": 5, "low": 0, "high": 10})),
            add("extra_chart", "strip_chart", &["extra"], Value::Null),
        ],
        None,
    );
    let reasons = decide(&bad, 6, &current, history).unwrap_err();
    assert_eq!(
        codes(&reasons),
        vec![(ErrorCode::Conflict, Some("energy_hist")), (ErrorCode::Conflict, Some("extra"))]
    );
    assert!(reasons[0].message.contains("version 4") && reasons[0].message.contains("version 6"));

    // Setting results after the results changed.
    let (current2, _) = apply_edits(&current, &[]);
    let current2 = GraphSpec {
        results: vec!["energy_hist".into()],
        ..current2
    };
    let reasons = conflicts(&request(4, vec![], Some(&["trace"])), 7, &current2, history);
    assert_eq!(codes(&reasons), vec![(ErrorCode::Conflict, None)]);
}

#[test]
fn unknown_or_future_base_versions_conflict() {
    let current = default_graph();
    let req = request(9, vec![set_params("trace_peaks", json!({"threshold": 1}))], None);
    let reasons = decide(&req, 5, &current, |_| Some(default_graph())).unwrap_err();
    assert_eq!(codes(&reasons), vec![(ErrorCode::Conflict, None)]);
    let req = request(2, vec![set_params("trace_peaks", json!({"threshold": 1}))], None);
    let reasons = decide(&req, 5, &current, no_history).unwrap_err();
    assert!(reasons[0].message.contains("no longer kept"), "{reasons:?}");
}

#[test]
fn optimise_drops_unused_nodes_and_keeps_duplicate_results() {
    let graph = GraphSpec {
        nodes: vec![
            NodeSpec::new("t", "select", &[], json!({"field": "trace", "kind": "waveform"})),
            NodeSpec::new("t2", "select", &[], json!({"field": "trace", "kind": "waveform"})),
            NodeSpec::new("s1", "sum", &["t"], Value::Null),
            NodeSpec::new("s2", "sum", &["t2"], Value::Null),
            NodeSpec::new("m", "mean", &["t2"], Value::Null),
            NodeSpec::new("unused", "max", &["t"], Value::Null),
        ],
        results: vec!["s1".into(), "s2".into(), "m".into()],
    };
    compile(&graph).unwrap();
    let out = optimise(&graph);
    let ids: Vec<&str> = out.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["t", "s1", "s2", "m"]);
    assert!(out.nodes.iter().skip(1).all(|n| n.inputs == vec!["t"]));
    assert_eq!(out.results, graph.results);
    compile(&out).unwrap();
    // The default graph has nothing to share or drop.
    assert_eq!(optimise(&default_graph()).nodes.len(), default_graph().nodes.len());
}

#[test]
fn json_wrapper_travels_as_text_through_bincode() {
    let report = GraphManagerReport {
        incidents: Vec::new(),
        answers: vec![(
            1,
            Answer::Rejected(Rejected {
                id: 2,
                version: 3,
                reasons: vec![Reason::new(ErrorCode::Conflict, Some("x".into()), "m")],
            }),
        )],
        version: 3,
        graph: Some(default_graph()),
    };
    let bytes = bincode::serde::encode_to_vec(Json(report.clone()), bincode::config::standard()).unwrap();
    let (back, _): (Json<GraphManagerReport>, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(back.0, report);
}
