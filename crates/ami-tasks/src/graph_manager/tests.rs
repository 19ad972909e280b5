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
            Answer::Rejected(Rejected::new(2, 3, vec![Reason::new(ErrorCode::Conflict, Some("x".into()), "m")])),
        )],
        version: 3,
        graph: Some(default_graph()),
    };
    let bytes = bincode::serde::encode_to_vec(Json(report.clone()), bincode::config::standard()).unwrap();
    let (back, _): (Json<GraphManagerReport>, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(back.0, report);
}

/// The default graph with `n` more nodes `m<k>`, each the mean of the trace (valid, unused).
fn with_means(n: usize) -> GraphSpec {
    let mut graph = default_graph();
    graph
        .nodes
        .extend((0..n).map(|k| NodeSpec::new(&format!("m{k}"), "mean", &["trace"], Value::Null)));
    graph
}

/// The most `m<k>` nodes [`with_means`] can add within the size bound (counted node by node:
/// measuring the whole graph each time would be quadratic).
fn most_means_within_the_bound() -> usize {
    let mut bytes = crate::graph::json_bytes(&default_graph());
    let mut n = 0;
    loop {
        let node = NodeSpec::new(&format!("m{n}"), "mean", &["trace"], Value::Null);
        bytes += serde_json::to_vec(&node).unwrap().len() + 1;
        if bytes > crate::graph::MAX_GRAPH_BYTES {
            return n;
        }
        n += 1;
    }
}

#[test]
fn a_graph_over_the_size_bound_is_rejected_for_that_alone_and_may_shrink() {
    let n = most_means_within_the_bound();
    assert!(n > 1000, "room for about a thousand nodes: {n}");
    let adding =
        |from: usize, to: usize| -> Vec<Edit> { (from..to).map(|k| add(&format!("m{k}"), "mean", &["trace"], Value::Null)).collect() };
    let at_the_bound = decide(&request(1, adding(0, n), None), 1, &default_graph(), no_history).unwrap();
    assert_eq!(
        crate::graph::json_bytes(&at_the_bound.edited),
        crate::graph::json_bytes(&with_means(n))
    );
    assert!(crate::graph::json_bytes(&at_the_bound.edited) <= crate::graph::MAX_GRAPH_BYTES);
    // The optimised graph drops the unused nodes.
    assert_eq!(at_the_bound.optimised.nodes.len(), default_graph().nodes.len());

    // One node more, and a node that would not compile: the size is the only reason.
    let mut over = adding(n, n + 1);
    over.push(add("bad", "mean", &["missing"], Value::Null));
    let reasons = decide(&request(2, over, None), 2, &at_the_bound.edited, no_history).unwrap_err();
    assert_eq!(codes(&reasons), vec![(ErrorCode::InvalidGraph, None)], "{reasons:#?}");
    assert!(reasons[0].message.contains("too large"), "{}", reasons[0].message);

    // A graph over the bound (made before there was one) is left by any edit that shrinks it
    // enough: removing one node.
    let before = with_means(n + 1);
    assert!(crate::graph::check_size(&before).is_err());
    let shrunk = decide(
        &request(3, vec![Edit::RemoveNode { id: "m0".into() }], None),
        3,
        &before,
        no_history,
    )
    .unwrap();
    assert!(crate::graph::check_size(&shrunk.edited).is_ok());
}

#[test]
fn who_made_a_version_is_cut_to_its_bound() {
    let long = "é".repeat(crate::stores::MAX_MADE_BY_BYTES);
    let by = made_graph_doc(&long)["by"].as_str().unwrap().to_string();
    assert!(by.len() <= crate::stores::MAX_MADE_BY_BYTES, "{}", by.len());
    assert!(by.ends_with("...") && by.starts_with("éé"));
    assert_eq!(made_graph_doc("ami2-cli at 127.0.0.1:4000")["by"], "ami2-cli at 127.0.0.1:4000");
}

mod control {
    use std::collections::BTreeSet;

    use kv_region::persist::{read_log, Change};
    use kv_region::segment::Segment;
    use kv_region::{SegmentSpec, SLOT_BYTES};

    use super::*;

    /// The bytes of an empty `/control/` segment of `data_bytes`.
    fn segment(max_keys: usize, data_bytes: usize) -> Vec<u8> {
        let spec = SegmentSpec {
            prefix: "/control/".into(),
            max_keys,
            data_bytes,
        };
        let mut bytes = vec![0u8; spec.points() * SLOT_BYTES];
        Segment::format(&mut bytes[..], &spec).unwrap();
        bytes
    }

    fn same(graph: GraphSpec) -> Decision {
        Decision {
            edited: graph.clone(),
            optimised: graph,
        }
    }

    fn version(view: &View<&mut [u8]>) -> Option<u64> {
        read_json(view, GRAPH_VERSION_KEY).unwrap().and_then(|v| v.as_u64())
    }

    fn keys_of(version: u64) -> [String; 3] {
        [graph_key(version), edited_graph_key(version), made_graph_key(version)]
    }

    /// The keys a restart finds: the log's changes replayed.
    fn replayed(log: &Path) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for (_, change) in read_log(log).unwrap().changes {
            match change {
                Change::Put(record) => keys.insert(record.key),
                Change::Delete(key) => keys.remove(&key),
            };
        }
        keys
    }

    #[test]
    fn a_version_whose_writing_fails_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("ami2-graph-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("control.log");
        let mut bytes = segment(64, 64 << 10);
        let mut view = View::write(&mut bytes).unwrap();
        write_version(&mut view, Some(&log), 2, &same(default_graph()), "first").unwrap();
        assert_eq!(version(&view), Some(3));

        // The segment is full: the small optimised graph fits, the edited one does not.
        let large = Decision {
            edited: with_means(1500),
            optimised: default_graph(),
        };
        let why = write_version(&mut view, Some(&log), 3, &large, "second").unwrap_err();
        assert!(why.contains("writing graph version 4 to Control") && why.contains("full"), "{why}");
        for key in keys_of(4) {
            assert_eq!(view.get(&key).unwrap(), None, "{key} in memory");
        }
        assert_eq!(version(&view), Some(3));
        assert_eq!(edited_graph(&view, 3).unwrap(), Some(default_graph()));
        let on_disk = replayed(&log);
        assert!(keys_of(4).iter().all(|key| !on_disk.contains(key)), "{on_disk:?}");
        assert!(keys_of(3).iter().all(|key| on_disk.contains(key)), "{on_disk:?}");

        // The log cannot be written (a folder in its place): nothing in memory either.
        let mut small = default_graph();
        small.results.pop();
        let why = write_version(&mut view, Some(&dir), 3, &same(small.clone()), "third").unwrap_err();
        assert!(why.contains("to Control") && why.contains("logging the undo failed too"), "{why}");
        for key in keys_of(4) {
            assert_eq!(view.get(&key).unwrap(), None, "{key} in memory");
        }
        assert_eq!(version(&view), Some(3));

        // With the log back, the same version is written whole.
        write_version(&mut view, Some(&log), 3, &same(small.clone()), "third").unwrap();
        assert_eq!(version(&view), Some(4));
        assert_eq!(edited_graph(&view, 4).unwrap(), Some(small));
        assert_eq!(read_json(&view, &made_graph_key(4)).unwrap().unwrap()["by"], "third");
        assert!(keys_of(4).iter().all(|key| replayed(&log).contains(key)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The puts that go with a version (the service's mark of its built-in graph) are put back as
    /// they were when the batch writing the version fails, in memory and in the log.
    #[test]
    fn marks_written_with_a_version_that_fails_are_put_back() {
        let dir = std::env::temp_dir().join(format!("ami2-graph-marks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("control.log");
        let mut bytes = segment(64, 64 << 10);
        let mut view = View::write(&mut bytes).unwrap();
        write_version(&mut view, Some(&log), 0, &same(default_graph()), "first").unwrap();
        let (builtin, other) = ("/control/graph/builtin", "/control/graph/other");
        apply_ops(&mut view, vec![Op::put_json(builtin, &1)], Some(&log))
            .and_then(check)
            .unwrap();
        // The documents are written; the batch of the version cannot be logged (a folder as its log).
        let mut calls = 0;
        let why = write_version_with(
            |ops| {
                calls += 1;
                apply_ops(&mut view, ops, Some(if calls == 2 { &dir } else { &log })).and_then(check)
            },
            1,
            vec![
                Op::put_json(graph_key(2), &default_graph()),
                Op::put_json(made_graph_key(2), &made_graph_doc("x")),
            ],
            vec![Op::put_json(builtin, &2), Op::put_json(other, &2)],
            vec![Op::put_json(builtin, &1), Op::Delete { key: other.into() }],
        )
        .unwrap_err();
        assert!(why.contains("writing the graph version (2) to Control"), "{why}");
        assert_eq!(version(&view), Some(1));
        assert_eq!(read_json(&view, builtin).unwrap(), Some(serde_json::json!(1)));
        for key in [graph_key(2), made_graph_key(2), other.to_string()] {
            assert_eq!(view.get(&key).unwrap(), None, "{key} in memory");
        }
        let on_disk = replayed(&log);
        assert!(on_disk.contains(builtin) && on_disk.contains(&graph_key(1)), "{on_disk:?}");
        assert!(!on_disk.contains(&graph_key(2)) && !on_disk.contains(other), "{on_disk:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Control's `/control/` segment, as the service sizes it, holds the kept versions at any
    /// mix of sizes up to the bound, through several rounds of the versions it keeps (a value
    /// needs consecutive points: versions of different sizes leave gaps).
    #[test]
    fn control_holds_the_kept_versions_at_the_largest_size() {
        let n = most_means_within_the_bound();
        let graphs: Vec<GraphSpec> = [n, n / 3, n, 7, n * 2 / 3, n].into_iter().map(with_means).collect();
        assert!(crate::graph::check_size(&graphs[0]).is_ok());
        let mut bytes = segment(crate::stores::CONTROL_SEGMENT_KEYS, crate::stores::control_segment_bytes());
        let mut view = View::write(&mut bytes).unwrap();
        // A client name at its longest, in characters JSON escapes (6 bytes each).
        let by = "\u{1}".repeat(2 * crate::stores::MAX_MADE_BY_BYTES);
        let mut step = 0usize;
        for current in 0..3 * RETAINED_GRAPH_VERSIONS {
            // Sizes in an irregular order.
            step = (step + 5) % graphs.len() + usize::from(current % 7 == 0);
            let graph = graphs[step % graphs.len()].clone();
            write_version(&mut view, None, current, &same(graph), &by).unwrap_or_else(|why| panic!("version {}: {why}", current + 1));
            let superseded = superseded_version_keys(current + 1)
                .into_iter()
                .map(|key| Op::Delete { key })
                .collect();
            apply_ops(&mut view, superseded, None).and_then(check).unwrap();
        }
        assert_eq!(view.list("/control/graph/edited/").len() as u64, RETAINED_GRAPH_VERSIONS);
    }
}
