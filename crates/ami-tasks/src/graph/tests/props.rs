//! Property tests: merges are order-independent, compile and process never panic.

// The expectations are written as plain index loops on purpose: they are the reference.
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;
use serde_json::{json, Value as Json};

use super::*;
use crate::graph::ops::OP_NAMES;
use crate::graph::NodeSpec;

fn merge_graph() -> CompiledGraph {
    graph(json!({
        "nodes": [
            {"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
            {"id": "scan", "op": "select", "params": {"field": "scan", "kind": "scalar"}},
            {"id": "wave", "op": "select", "params": {"field": "wave", "kind": "waveform", "length": 4}},
            {"id": "high", "op": "filter", "inputs": ["energy"], "params": {"min": -50}},
            {"id": "hist", "op": "histogram", "inputs": ["energy"], "params": {"bins": 8, "low": -80, "high": 80}},
            {"id": "chart", "op": "strip_chart", "inputs": ["high"]},
            {"id": "bm", "op": "binned_mean", "inputs": ["energy", "scan"], "params": {"bins": 4, "low": 0, "high": 1}},
            {"id": "peaks", "op": "peaks", "inputs": ["wave"], "params": {"threshold": 0}},
            {"id": "wave_high", "op": "mul", "inputs": ["wave", "high"]},
        ],
        "results": ["energy", "high", "hist", "chart", "bm", "wave", "peaks", "wave_high"],
    }))
}

type Event = (f64, f64, Vec<f64>);

fn event() -> impl Strategy<Value = Event> {
    (-100.0..100.0f64, 0.0..1.0f64, prop::collection::vec(-10.0..10.0f64, 4))
}

fn to_frame(i: usize, (energy, scan, wave): &Event) -> Frame {
    frame(
        i as u64,
        vec![
            ("energy", FieldValue::Scalar(*energy)),
            ("scan", FieldValue::Scalar(*scan)),
            ("wave", FieldValue::Waveform(wave.clone())),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Events spread over 5 workers in any way, merged in any order (and pairwise), give the same
    /// results as one worker seeing every event.
    #[test]
    fn merge_is_order_independent(
        events in prop::collection::vec((event(), 0..5usize), 0..60),
        order in Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
    ) {
        let g = merge_graph();
        let frames: Vec<Frame> = events.iter().enumerate().map(|(i, (e, _))| to_frame(i, e)).collect();
        let mut all = g.empty_partials();
        for f in &frames {
            g.process(f, &mut all).unwrap();
        }
        let mut parts: Vec<Partials> = (0..5).map(|_| g.empty_partials()).collect();
        for (f, (_, worker)) in frames.iter().zip(&events) {
            g.process(f, &mut parts[*worker]).unwrap();
        }
        let mut folded = g.empty_partials();
        for &k in &order {
            folded.merge(&parts[k]).unwrap();
        }
        let mut left = parts[order[0]].clone();
        left.merge(&parts[order[1]]).unwrap();
        let mut right = parts[order[2]].clone();
        right.merge(&parts[order[3]]).unwrap();
        right.merge(&parts[order[4]]).unwrap();
        right.merge(&left).unwrap();

        let expected = all.finalize();
        for merged in [&folded, &right] {
            prop_assert_eq!(merged.events(), frames.len() as u64);
            let out = merged.finalize();
            for (name, value) in &expected {
                prop_assert!(close(&out[name], value), "result `{}`: {} vs {}", name, out[name], value);
            }
            // Counting results are exact.
            prop_assert_eq!(&out["hist"], &expected["hist"]);
            prop_assert_eq!(&out["bm"]["counts"], &expected["bm"]["counts"]);
        }
        let energies: Vec<f64> = events.iter().map(|e| e.0 .0).collect();
        prop_assert!(close(&expected["energy"], &stats(&energies)));
        let high: Vec<f64> = energies.iter().cloned().filter(|&e| e >= -50.0).collect();
        prop_assert!(close(&expected["high"], &stats(&high)));
    }

    /// The ROI mean, projections and peaks of random images at random windows match direct loops.
    #[test]
    fn image_ops_match_direct_loops(
        (width, height, x0, x1, y0, y1) in (1..9usize, 1..9usize).prop_flat_map(|(w, h)| {
            (Just(w), Just(h), 0..w, 0..w, 0..h, 0..h).prop_map(|(w, h, a, b, c, d)| (w, h, a.min(b), a.max(b) + 1, c.min(d), c.max(d) + 1))
        }),
        seed in any::<u64>(),
    ) {
        let mut rng = Lcg(seed);
        let pixels: Vec<f64> = (0..width * height).map(|_| (rng.next() * 8.0).floor()).collect();
        let g = graph(json!({
            "nodes": [
                {"id": "img", "op": "select", "params": {"field": "img", "kind": "image"}},
                {"id": "roi", "op": "roi", "inputs": ["img"], "params": {"x0": x0, "y0": y0, "x1": x1, "y1": y1}},
                {"id": "mean", "op": "mean", "inputs": ["roi"]},
                {"id": "cols", "op": "projection", "inputs": ["roi"], "params": {"axis": 0}},
                {"id": "rows", "op": "projection", "inputs": ["roi"], "params": {"axis": 1}},
                {"id": "peaks", "op": "peaks", "inputs": ["roi"], "params": {"threshold": 2}},
            ],
            "results": ["mean", "cols", "rows", "peaks"],
        }));
        let f = frame(0, vec![("img", FieldValue::Image { width: width as u32, height: height as u32, pixels: pixels.clone() })]);
        let mut p = g.empty_partials();
        g.process(&f, &mut p).unwrap();
        let out = p.finalize();
        let at = |x: usize, y: usize| pixels[y * width + x];
        let (w, h) = (x1 - x0, y1 - y0);
        let mut total = 0.0;
        let mut cols = vec![0.0; w];
        let mut rows = vec![0.0; h];
        for y in 0..h {
            for x in 0..w {
                total += at(x0 + x, y0 + y);
                cols[x] += at(x0 + x, y0 + y);
                rows[y] += at(x0 + x, y0 + y);
            }
        }
        prop_assert!(close(&out["mean"]["mean"], &json!(total / (w * h) as f64)));
        prop_assert!(close(&out["cols"]["mean"], &json!(cols)));
        prop_assert!(close(&out["rows"]["mean"], &json!(rows)));
        let mut peaks = 0;
        for y in 0..h {
            for x in 0..w {
                let c = at(x0 + x, y0 + y);
                let mut neighbours = Vec::new();
                if x > 0 { neighbours.push(at(x0 + x - 1, y0 + y)); }
                if x + 1 < w { neighbours.push(at(x0 + x + 1, y0 + y)); }
                if y > 0 { neighbours.push(at(x0 + x, y0 + y - 1)); }
                if y + 1 < h { neighbours.push(at(x0 + x, y0 + y + 1)); }
                if c > 2.0 && neighbours.iter().all(|&n| c > n) {
                    peaks += 1;
                }
            }
        }
        prop_assert!(close(&out["peaks"]["mean"], &json!(peaks as f64)));
    }
}

const IDS: &[&str] = &["a", "b", "c", "d", "e", ""];

fn params() -> impl Strategy<Value = Json> {
    prop::sample::select(vec![
        Json::Null,
        json!({"field": "energy", "kind": "scalar"}),
        json!({"field": "trace", "kind": "waveform"}),
        json!({"field": "trace", "kind": "waveform", "length": 5}),
        json!({"field": "cam", "kind": "image", "width": 4, "height": 3}),
        json!({"field": "cam", "kind": "image"}),
        json!({"field": "nope", "kind": "scalar"}),
        json!({"start": 1, "end": 3}),
        json!({"start": 3, "end": 1}),
        json!({"x0": 0, "y0": 0, "x1": 2, "y1": 2}),
        json!({"x0": 1, "y0": 1, "x1": 9, "y1": 9}),
        json!({"axis": 0}),
        json!({"axis": 1}),
        json!({"bins": 3, "low": 0, "high": 1}),
        json!({"bins": 0, "low": 1, "high": 0}),
        json!({"level": 0.5}),
        json!({"min": 0.2}),
        json!({"min": 0.1, "max": 0.8}),
        json!({"constant": 2}),
        json!({"constant": 0}),
        json!({"threshold": 0.1}),
        json!([1]),
        json!("x"),
        json!({"bins": 1e300, "low": -1e308, "high": 1e308}),
    ])
}

fn node() -> impl Strategy<Value = NodeSpec> {
    let mut ops: Vec<&str> = OP_NAMES.to_vec();
    ops.push("bogus");
    let mut refs: Vec<&str> = IDS.to_vec();
    refs.push("zz");
    (
        prop::sample::select(IDS),
        prop::sample::select(ops),
        prop::collection::vec(prop::sample::select(refs), 0..3),
        params(),
    )
        .prop_map(|(id, op, inputs, params)| NodeSpec {
            id: id.to_string(),
            op: op.to_string(),
            inputs: inputs.into_iter().map(str::to_string).collect(),
            params,
        })
}

fn fuzz_frames() -> Vec<Frame> {
    vec![
        frame(
            0,
            vec![
                ("energy", FieldValue::Scalar(0.5)),
                ("trace", FieldValue::Waveform(vec![0.0, 1.0, 0.2, 3.0, 0.1])),
                ("cam", image(4, 3, |x, y| (x * y) as f64)),
            ],
        ),
        frame(
            1,
            vec![
                ("energy", FieldValue::Scalar(f64::NAN)),
                ("trace", FieldValue::Waveform(vec![])),
                ("cam", image(2, 2, |_, _| 1.0)),
            ],
        ),
        frame(
            2,
            vec![
                ("energy", FieldValue::Waveform(vec![1.0])),
                (
                    "cam",
                    FieldValue::Image {
                        width: 5,
                        height: 5,
                        pixels: vec![],
                    },
                ),
            ],
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the graph, compile either succeeds or explains itself, and processing any frame
    /// either works or returns an error: nothing panics.
    #[test]
    fn compile_and_process_never_panic(
        nodes in prop::collection::vec(node(), 0..8),
        results in prop::collection::vec(prop::sample::select(IDS), 0..3),
    ) {
        let spec = GraphSpec { nodes, results: results.into_iter().map(str::to_string).collect() };
        match compile(&spec) {
            Err(errors) => prop_assert!(!errors.is_empty()),
            Ok(g) => {
                let mut p = g.empty_partials();
                for f in fuzz_frames() {
                    let _ = g.process(&f, &mut p);
                }
                let mut q = g.empty_partials();
                q.merge(&p).unwrap();
                let _ = q.finalize();
            }
        }
    }
}
