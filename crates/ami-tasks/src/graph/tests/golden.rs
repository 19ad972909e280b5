//! Golden tests: every op over several events, against values computed directly.

// The expectations are written as plain index loops on purpose: they are the reference.
#![allow(clippy::needless_range_loop)]

use serde_json::{json, Value as Json};

use super::*;
use crate::graph::{default_graph, default_graph_for, EvalError};

const W: usize = 12;
const H: usize = 9;
const LEN: usize = 16;

/// Events with scalars `energy` and `scan`, a waveform `trace` (length 16) and an image `cam`
/// (12x9), all pseudo-random, plus the raw values for the expectations.
struct Events {
    frames: Vec<Frame>,
    energy: Vec<f64>,
    scan: Vec<f64>,
    trace: Vec<Vec<f64>>,
    cam: Vec<Vec<f64>>,
}

fn events(n: usize, seed: u64) -> Events {
    let mut rng = Lcg(seed);
    let mut ev = Events {
        frames: Vec::new(),
        energy: Vec::new(),
        scan: Vec::new(),
        trace: Vec::new(),
        cam: Vec::new(),
    };
    for i in 0..n {
        let energy = 10.0 * rng.next() - 2.0;
        let scan = rng.next();
        let trace: Vec<f64> = (0..LEN).map(|_| 4.0 * rng.next() - 1.0).collect();
        let cam: Vec<f64> = (0..W * H).map(|_| 100.0 + 50.0 * rng.next()).collect();
        ev.frames.push(frame(
            i as u64,
            vec![
                ("energy", FieldValue::Scalar(energy)),
                ("trace", FieldValue::Waveform(trace.clone())),
                (
                    "cam",
                    FieldValue::Image {
                        width: W as u32,
                        height: H as u32,
                        pixels: cam.clone(),
                    },
                ),
                ("scan", FieldValue::Scalar(scan)),
            ],
        ));
        ev.energy.push(energy);
        ev.scan.push(scan);
        ev.trace.push(trace);
        ev.cam.push(cam);
    }
    ev
}

fn selects() -> Vec<Json> {
    vec![
        json!({"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}}),
        json!({"id": "scan", "op": "select", "params": {"field": "scan", "kind": "scalar"}}),
        json!({"id": "trace", "op": "select", "params": {"field": "trace", "kind": "waveform", "length": LEN}}),
        json!({"id": "cam", "op": "select", "params": {"field": "cam", "kind": "image", "width": W, "height": H}}),
        // Same fields, shapes undeclared: checked at run time only.
        json!({"id": "trace_any", "op": "select", "params": {"field": "trace", "kind": "waveform"}}),
        json!({"id": "cam_any", "op": "select", "params": {"field": "cam", "kind": "image"}}),
    ]
}

/// A graph of the selects plus `nodes`, publishing `results`.
fn with(nodes: Vec<Json>, results: &[&str]) -> CompiledGraph {
    let mut all = selects();
    all.extend(nodes);
    graph(json!({"nodes": all, "results": results}))
}

fn pix(cam: &[f64], x: usize, y: usize) -> f64 {
    cam[y * W + x]
}

#[test]
fn select_aggregates_scalars_waveforms_and_images() {
    let ev = events(7, 1);
    let g = with(vec![], &["energy", "trace", "cam", "cam_any"]);
    let out = run(&g, &ev.frames);
    assert_close(&out["energy"], &stats(&ev.energy));
    assert_close(&out["trace"], &json!({"count": 7, "mean": elementwise_mean(&ev.trace)}));
    let cam = json!({"count": 7, "mean": elementwise_mean(&ev.cam), "width": W, "height": H});
    assert_close(&out["cam"], &cam);
    assert_close(&out["cam_any"], &cam);
    assert_eq!(g.result_names(), ["energy", "trace", "cam", "cam_any"]);
}

#[test]
fn roi_of_a_waveform() {
    let ev = events(6, 2);
    let g = with(
        vec![
            json!({"id": "r", "op": "roi", "inputs": ["trace"], "params": {"start": 3, "end": 11}}),
            json!({"id": "r_any", "op": "roi", "inputs": ["trace_any"], "params": {"start": 3, "end": 11}}),
            json!({"id": "r_sum", "op": "sum", "inputs": ["r"]}),
            // An roi of an roi: offsets compose.
            json!({"id": "rr", "op": "roi", "inputs": ["r"], "params": {"start": 2, "end": 5}}),
        ],
        &["r", "r_any", "r_sum", "rr"],
    );
    let out = run(&g, &ev.frames);
    let windows: Vec<Vec<f64>> = ev.trace.iter().map(|t| t[3..11].to_vec()).collect();
    assert_close(&out["r"], &json!({"count": 6, "mean": elementwise_mean(&windows)}));
    assert_close(&out["r_any"], &out["r"]);
    let sums: Vec<f64> = windows.iter().map(|w| w.iter().sum()).collect();
    assert_close(&out["r_sum"], &stats(&sums));
    let inner: Vec<Vec<f64>> = ev.trace.iter().map(|t| t[5..8].to_vec()).collect();
    assert_close(&out["rr"], &json!({"count": 6, "mean": elementwise_mean(&inner)}));
}

#[test]
fn roi_of_an_image_and_its_mean() {
    let ev = events(8, 3);
    let g = with(
        vec![
            json!({"id": "roi", "op": "roi", "inputs": ["cam"], "params": {"x0": 2, "y0": 1, "x1": 9, "y1": 7}}),
            json!({"id": "roi_mean", "op": "mean", "inputs": ["roi"]}),
            json!({"id": "roi_any", "op": "roi", "inputs": ["cam_any"], "params": {"x0": 2, "y0": 1, "x1": 9, "y1": 7}}),
            json!({"id": "inner", "op": "roi", "inputs": ["roi"], "params": {"x0": 1, "y0": 2, "x1": 3, "y1": 4}}),
        ],
        &["roi", "roi_mean", "roi_any", "inner"],
    );
    let out = run(&g, &ev.frames);
    let mut means = Vec::new();
    let mut windows = Vec::new();
    let mut inners = Vec::new();
    for cam in &ev.cam {
        let mut window = Vec::new();
        for y in 1..7 {
            for x in 2..9 {
                window.push(pix(cam, x, y));
            }
        }
        let mut total = 0.0;
        for v in &window {
            total += v;
        }
        means.push(total / 42.0);
        windows.push(window);
        let mut inner = Vec::new();
        for y in 3..5 {
            for x in 3..5 {
                inner.push(pix(cam, x, y));
            }
        }
        inners.push(inner);
    }
    assert_close(&out["roi_mean"], &stats(&means));
    let roi = json!({"count": 8, "mean": elementwise_mean(&windows), "width": 7, "height": 6});
    assert_close(&out["roi"], &roi);
    assert_close(&out["roi_any"], &roi);
    assert_close(
        &out["inner"],
        &json!({"count": 8, "mean": elementwise_mean(&inners), "width": 2, "height": 2}),
    );
}

#[test]
fn reductions_of_waveforms_and_strided_images() {
    let ev = events(9, 4);
    let mut nodes = vec![json!({"id": "roi", "op": "roi", "inputs": ["cam"], "params": {"x0": 3, "y0": 2, "x1": 10, "y1": 8}})];
    let mut results = Vec::new();
    for op in ["sum", "mean", "std", "min", "max"] {
        for input in ["trace", "roi"] {
            let id = format!("{op}_{input}");
            nodes.push(json!({"id": id, "op": op, "inputs": [input]}));
            results.push(id);
        }
    }
    let results: Vec<&str> = results.iter().map(String::as_str).collect();
    let g = with(nodes, &results);
    let out = run(&g, &ev.frames);

    let reduce = |op: &str, v: &[f64]| -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        match op {
            "sum" => v.iter().sum(),
            "mean" => mean,
            "std" => (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt(),
            "min" => v.iter().cloned().fold(f64::INFINITY, f64::min),
            _ => v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        }
    };
    let rois: Vec<Vec<f64>> = ev
        .cam
        .iter()
        .map(|c| (2..8).flat_map(|y| (3..10).map(move |x| pix(c, x, y))).collect())
        .collect();
    for op in ["sum", "mean", "std", "min", "max"] {
        let per_event: Vec<f64> = ev.trace.iter().map(|t| reduce(op, t)).collect();
        assert_close(&out[&format!("{op}_trace")], &stats(&per_event));
        let per_event: Vec<f64> = rois.iter().map(|r| reduce(op, r)).collect();
        assert_close(&out[&format!("{op}_roi")], &stats(&per_event));
    }
}

#[test]
fn projections_on_both_axes() {
    let ev = events(5, 5);
    let g = with(
        vec![
            json!({"id": "cols", "op": "projection", "inputs": ["cam"], "params": {"axis": 0}}),
            json!({"id": "rows", "op": "projection", "inputs": ["cam"], "params": {"axis": 1}}),
            json!({"id": "roi", "op": "roi", "inputs": ["cam_any"], "params": {"x0": 1, "y0": 2, "x1": 5, "y1": 9}}),
            json!({"id": "roi_cols", "op": "projection", "inputs": ["roi"], "params": {"axis": 0}}),
        ],
        &["cols", "rows", "roi_cols"],
    );
    let out = run(&g, &ev.frames);
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    let mut roi_cols = Vec::new();
    for cam in &ev.cam {
        let mut c = vec![0.0; W];
        let mut r = vec![0.0; H];
        for y in 0..H {
            for x in 0..W {
                c[x] += pix(cam, x, y);
                r[y] += pix(cam, x, y);
            }
        }
        cols.push(c);
        rows.push(r);
        roi_cols.push((1..5).map(|x| (2..9).map(|y| pix(cam, x, y)).sum()).collect::<Vec<f64>>());
    }
    assert_close(&out["cols"], &json!({"count": 5, "mean": elementwise_mean(&cols)}));
    assert_close(&out["rows"], &json!({"count": 5, "mean": elementwise_mean(&rows)}));
    assert_close(&out["roi_cols"], &json!({"count": 5, "mean": elementwise_mean(&roi_cols)}));
    assert_eq!(out["cols"]["mean"].as_array().map(Vec::len), Some(W));
    assert_eq!(out["rows"]["mean"].as_array().map(Vec::len), Some(H));
}

#[test]
fn histogram_with_edges_underflow_overflow_and_nan() {
    let g = with(
        vec![json!({"id": "h", "op": "histogram", "inputs": ["energy"], "params": {"bins": 4, "low": 0, "high": 2}})],
        &["h"],
    );
    let values = [0.0, 0.49, 0.5, 1.2, 1.999, 2.0, 7.0, -0.001, -5.0, f64::NAN, 1.0, 0.25];
    let frames: Vec<Frame> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| frame(i as u64, vec![("energy", FieldValue::Scalar(v))]))
        .collect();
    let out = run(&g, &frames);
    // Bins [0,.5) [.5,1) [1,1.5) [1.5,2); 2.0, 7.0 and NaN overflow.
    let mut counts = [0u64; 4];
    let (mut under, mut over) = (0, 0);
    for v in values {
        if v < 0.0 {
            under += 1;
        } else if (0.0..2.0).contains(&v) {
            counts[(v / 0.5) as usize] += 1;
        } else {
            over += 1;
        }
    }
    assert_eq!(counts, [3, 1, 2, 1]);
    assert_eq!((under, over), (2, 3));
    assert_eq!(
        out["h"],
        json!({"low": 0.0, "high": 2.0, "counts": counts, "underflow": 2, "overflow": 3, "count": 12})
    );
}

#[test]
fn histogram_of_random_values_matches_direct_counts() {
    let ev = events(200, 6);
    let g = with(
        vec![json!({"id": "h", "op": "histogram", "inputs": ["energy"], "params": {"bins": 7, "low": 0.5, "high": 6.5}})],
        &["h"],
    );
    let out = run(&g, &ev.frames);
    let mut counts = vec![0u64; 7];
    let (mut under, mut over) = (0u64, 0u64);
    for &e in &ev.energy {
        if e < 0.5 {
            under += 1;
        } else if e >= 6.5 {
            over += 1;
        } else {
            counts[((e - 0.5) / 6.0 * 7.0) as usize] += 1;
        }
    }
    assert_eq!(
        out["h"],
        json!({"low": 0.5, "high": 6.5, "counts": counts, "underflow": under, "overflow": over, "count": 200})
    );
}

#[test]
fn threshold_zeroes_elements_below_the_level() {
    let ev = events(6, 7);
    let g = with(
        vec![
            json!({"id": "t", "op": "threshold", "inputs": ["trace"], "params": {"level": 1.0}}),
            json!({"id": "roi", "op": "roi", "inputs": ["cam"], "params": {"x0": 0, "y0": 3, "x1": 5, "y1": 5}}),
            json!({"id": "ti", "op": "threshold", "inputs": ["roi"], "params": {"level": 125}}),
        ],
        &["t", "ti"],
    );
    let out = run(&g, &ev.frames);
    let cut = |v: f64, level: f64| if v < level { 0.0 } else { v };
    let t: Vec<Vec<f64>> = ev.trace.iter().map(|t| t.iter().map(|&v| cut(v, 1.0)).collect()).collect();
    assert_close(&out["t"], &json!({"count": 6, "mean": elementwise_mean(&t)}));
    let ti: Vec<Vec<f64>> = ev
        .cam
        .iter()
        .map(|c| (3..5).flat_map(|y| (0..5).map(move |x| cut(pix(c, x, y), 125.0))).collect())
        .collect();
    assert_close(
        &out["ti"],
        &json!({"count": 6, "mean": elementwise_mean(&ti), "width": 5, "height": 2}),
    );
}

#[test]
fn filter_drops_events_for_everything_downstream() {
    let ev = events(40, 8);
    let g = with(
        vec![
            json!({"id": "lo", "op": "filter", "inputs": ["energy"], "params": {"min": 3.0}}),
            json!({"id": "hi", "op": "filter", "inputs": ["energy"], "params": {"max": 1.0}}),
            json!({"id": "band", "op": "filter", "inputs": ["energy"], "params": {"min": 1.0, "max": 5.0}}),
            json!({"id": "band_x2", "op": "mul", "inputs": ["band"], "params": {"constant": 2}}),
            json!({"id": "band_hist", "op": "histogram", "inputs": ["band"], "params": {"bins": 4, "low": 1, "high": 5}}),
            json!({"id": "band_chart", "op": "strip_chart", "inputs": ["band_x2"]}),
            // Filtering an array result: the trace scaled by a filtered scalar.
            json!({"id": "trace_lo", "op": "mul", "inputs": ["trace", "lo"]}),
            json!({"id": "bm", "op": "binned_mean", "inputs": ["band", "scan"], "params": {"bins": 2, "low": 0, "high": 1}}),
        ],
        &["lo", "hi", "band", "band_x2", "band_hist", "band_chart", "trace_lo", "bm", "energy"],
    );
    let out = run(&g, &ev.frames);
    let pick = |keep: &dyn Fn(f64) -> bool| ev.energy.iter().cloned().filter(|&e| keep(e)).collect::<Vec<f64>>();
    let lo = pick(&|e| e >= 3.0);
    let band = pick(&|e| (1.0..=5.0).contains(&e));
    assert!(!lo.is_empty() && lo.len() < 40 && !band.is_empty() && band.len() < 40);
    assert_close(&out["lo"], &stats(&lo));
    assert_close(&out["hi"], &stats(&pick(&|e| e <= 1.0)));
    assert_close(&out["band"], &stats(&band));
    assert_close(&out["band_x2"], &stats(&band.iter().map(|x| 2.0 * x).collect::<Vec<_>>()));
    assert_eq!(out["band_hist"]["count"], json!(band.len()));
    let chart_mean = band.iter().map(|x| 2.0 * x).sum::<f64>() / band.len() as f64;
    assert_close(&out["band_chart"], &json!({"mean": chart_mean, "count": band.len()}));
    let scaled: Vec<Vec<f64>> = ev
        .energy
        .iter()
        .zip(&ev.trace)
        .filter(|(e, _)| **e >= 3.0)
        .map(|(e, t)| t.iter().map(|v| v * e).collect())
        .collect();
    assert_close(&out["trace_lo"], &json!({"count": lo.len(), "mean": elementwise_mean(&scaled)}));
    let bm_counts: u64 = out["bm"]["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(bm_counts, band.len() as u64);
    assert_close(&out["energy"], &stats(&ev.energy));
}

#[test]
fn filter_bounds_are_inclusive_and_nan_is_dropped() {
    let g = with(
        vec![json!({"id": "f", "op": "filter", "inputs": ["energy"], "params": {"min": 1, "max": 2}})],
        &["f"],
    );
    let values = [0.999, 1.0, 1.5, 2.0, 2.001, f64::NAN];
    let frames: Vec<Frame> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| frame(i as u64, vec![("energy", FieldValue::Scalar(v))]))
        .collect();
    assert_close(&run(&g, &frames)["f"], &stats(&[1.0, 1.5, 2.0]));
}

#[test]
fn arithmetic_on_scalars_arrays_and_constants() {
    let ev = events(6, 9);
    let g = with(
        vec![
            json!({"id": "s_add", "op": "add", "inputs": ["energy", "scan"]}),
            json!({"id": "s_sub", "op": "sub", "inputs": ["energy", "scan"]}),
            json!({"id": "s_mul", "op": "mul", "inputs": ["energy", "scan"]}),
            json!({"id": "s_div", "op": "div", "inputs": ["energy", "scan"]}),
            json!({"id": "c_sub", "op": "sub", "inputs": ["energy"], "params": {"constant": 1.5}}),
            json!({"id": "c_div", "op": "div", "inputs": ["trace"], "params": {"constant": 4}}),
            json!({"id": "w_sub", "op": "sub", "inputs": ["trace", "trace_any"]}),
            json!({"id": "w_mul", "op": "mul", "inputs": ["trace", "c_div"]}),
            json!({"id": "ws_sub", "op": "sub", "inputs": ["trace", "energy"]}),
            json!({"id": "sw_sub", "op": "sub", "inputs": ["energy", "trace"]}),
            json!({"id": "sw_div", "op": "div", "inputs": ["scan", "trace"]}),
            json!({"id": "roi_a", "op": "roi", "inputs": ["cam"], "params": {"x0": 0, "y0": 0, "x1": 4, "y1": 3}}),
            json!({"id": "roi_b", "op": "roi", "inputs": ["cam_any"], "params": {"x0": 5, "y0": 4, "x1": 9, "y1": 7}}),
            json!({"id": "i_add", "op": "add", "inputs": ["roi_a", "roi_b"]}),
            json!({"id": "i_div", "op": "div", "inputs": ["roi_a", "scan"]}),
        ],
        &[
            "s_add", "s_sub", "s_mul", "s_div", "c_sub", "c_div", "w_sub", "w_mul", "ws_sub", "sw_sub", "sw_div", "i_add", "i_div",
        ],
    );
    let out = run(&g, &ev.frames);
    let e = &ev.energy;
    let s = &ev.scan;
    let zip = |f: &dyn Fn(f64, f64) -> f64| e.iter().zip(s).map(|(a, b)| f(*a, *b)).collect::<Vec<f64>>();
    assert_close(&out["s_add"], &stats(&zip(&|a, b| a + b)));
    assert_close(&out["s_sub"], &stats(&zip(&|a, b| a - b)));
    assert_close(&out["s_mul"], &stats(&zip(&|a, b| a * b)));
    assert_close(&out["s_div"], &stats(&zip(&|a, b| a / b)));
    assert_close(&out["c_sub"], &stats(&e.iter().map(|a| a - 1.5).collect::<Vec<_>>()));
    let arrays = |f: &dyn Fn(usize, &[f64]) -> Vec<f64>| ev.trace.iter().enumerate().map(|(i, t)| f(i, t)).collect::<Vec<_>>();
    let wave = |a: Vec<Vec<f64>>| json!({"count": 6, "mean": elementwise_mean(&a)});
    assert_close(&out["c_div"], &wave(arrays(&|_, t| t.iter().map(|v| v / 4.0).collect())));
    assert_close(&out["w_sub"], &wave(arrays(&|_, t| vec![0.0; t.len()])));
    assert_close(&out["w_mul"], &wave(arrays(&|_, t| t.iter().map(|v| v * (v / 4.0)).collect())));
    assert_close(&out["ws_sub"], &wave(arrays(&|i, t| t.iter().map(|v| v - e[i]).collect())));
    assert_close(&out["sw_sub"], &wave(arrays(&|i, t| t.iter().map(|v| e[i] - v).collect())));
    assert_close(&out["sw_div"], &wave(arrays(&|i, t| t.iter().map(|v| s[i] / v).collect())));
    let sums: Vec<Vec<f64>> = ev
        .cam
        .iter()
        .map(|c| {
            (0..3)
                .flat_map(|y| (0..4).map(move |x| pix(c, x, y) + pix(c, x + 5, y + 4)))
                .collect()
        })
        .collect();
    assert_close(
        &out["i_add"],
        &json!({"count": 6, "mean": elementwise_mean(&sums), "width": 4, "height": 3}),
    );
    let divs: Vec<Vec<f64>> = ev
        .cam
        .iter()
        .zip(s)
        .map(|(c, s)| (0..3).flat_map(|y| (0..4).map(move |x| pix(c, x, y) / s)).collect())
        .collect();
    assert_close(
        &out["i_div"],
        &json!({"count": 6, "mean": elementwise_mean(&divs), "width": 4, "height": 3}),
    );
}

#[test]
fn division_by_zero_follows_ieee_and_finalizes_to_null() {
    let g = with(
        vec![
            json!({"id": "inf", "op": "div", "inputs": ["energy"], "params": {"constant": 0}}),
            json!({"id": "nan", "op": "div", "inputs": ["scan", "scan"]}),
            json!({"id": "w", "op": "div", "inputs": ["trace_any", "scan"]}),
            json!({"id": "chart", "op": "strip_chart", "inputs": ["inf"]}),
        ],
        &["inf", "nan", "w", "chart"],
    );
    let f = frame(
        0,
        vec![
            ("energy", FieldValue::Scalar(1.0)),
            ("scan", FieldValue::Scalar(0.0)),
            ("trace", FieldValue::Waveform(vec![1.0, -1.0, 0.0])),
        ],
    );
    let mut p = g.empty_partials();
    g.process(&f, &mut p).expect("IEEE division is not an error");
    let out = p.finalize();
    assert_eq!(
        out["inf"],
        json!({"count": 1, "sum": null, "mean": null, "std": null, "min": null, "max": null})
    );
    assert_eq!(out["nan"]["count"], json!(1));
    assert_eq!(out["nan"]["mean"], Json::Null);
    assert_eq!(out["w"], json!({"count": 1, "mean": [null, null, null]}));
    assert_eq!(out["chart"], json!({"mean": null, "count": 1}));
    // Nothing non-finite ever reaches the JSON text.
    let text = serde_json::to_string(&out).unwrap();
    assert!(!text.contains("NaN") && !text.contains("Infinity"), "{text}");
}

#[test]
fn binned_mean_by_scan_variable() {
    let ev = events(120, 10);
    let g = with(
        vec![json!({"id": "bm", "op": "binned_mean", "inputs": ["energy", "scan"], "params": {"bins": 5, "low": 0.1, "high": 0.9}})],
        &["bm"],
    );
    let out = run(&g, &ev.frames);
    let mut sums = [0.0; 5];
    let mut counts = [0u64; 5];
    for (&e, &s) in ev.energy.iter().zip(&ev.scan) {
        if (0.1..0.9).contains(&s) {
            let i = (((s - 0.1) / 0.8) * 5.0) as usize;
            sums[i] += e;
            counts[i] += 1;
        }
    }
    let means: Vec<Json> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &n)| if n == 0 { Json::Null } else { json!(s / n as f64) })
        .collect();
    assert!(counts.iter().all(|&n| n > 0));
    assert_close(&out["bm"], &json!({"low": 0.1, "high": 0.9, "mean": means, "counts": counts}));
}

#[test]
fn binned_mean_leaves_empty_bins_null() {
    let g = with(
        vec![json!({"id": "bm", "op": "binned_mean", "inputs": ["energy", "scan"], "params": {"bins": 3, "low": 0, "high": 3}})],
        &["bm"],
    );
    let frames: Vec<Frame> = [(1.0, 0.5), (3.0, 0.2), (10.0, 2.5), (99.0, 3.0), (98.0, -1.0), (97.0, f64::NAN)]
        .iter()
        .enumerate()
        .map(|(i, &(e, s))| frame(i as u64, vec![("energy", FieldValue::Scalar(e)), ("scan", FieldValue::Scalar(s))]))
        .collect();
    let out = run(&g, &frames);
    assert_eq!(
        out["bm"],
        json!({"low": 0.0, "high": 3.0, "mean": [2.0, null, 10.0], "counts": [2, 0, 1]})
    );
}

/// Peaks counted directly from the definition, with explicit neighbour lookups.
fn peaks_direct(v: &[f64], width: usize, height: usize, t: f64) -> usize {
    let at = |x: isize, y: isize| -> Option<f64> {
        (x >= 0 && y >= 0 && (x as usize) < width && (y as usize) < height).then(|| v[y as usize * width + x as usize])
    };
    let mut n = 0;
    for y in 0..height as isize {
        for x in 0..width as isize {
            let c = at(x, y).unwrap();
            let neighbours = [at(x - 1, y), at(x + 1, y), at(x, y - 1), at(x, y + 1)];
            if c > t && neighbours.iter().flatten().all(|&o| c > o) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn peaks_in_waveforms() {
    let g = with(
        vec![json!({"id": "p", "op": "peaks", "inputs": ["trace_any"], "params": {"threshold": 1.0}})],
        &["p"],
    );
    // Edges count with their single neighbour; plateaus and peaks at or below the threshold do not.
    let cases: Vec<(Vec<f64>, f64)> = vec![
        (vec![5.0, 1.0, 3.0, 2.0, 2.0, 4.0], 3.0),
        (vec![1.0, 2.0, 2.0, 1.0], 0.0),
        (vec![0.5, 1.0, 0.5, 1.5, 0.0], 1.0),
        (vec![7.0], 1.0),
        (vec![0.0, 3.0], 1.0),
        (vec![], 0.0),
    ];
    let frames: Vec<Frame> = cases
        .iter()
        .enumerate()
        .map(|(i, (w, _))| frame(i as u64, vec![("trace", FieldValue::Waveform(w.clone()))]))
        .collect();
    for (w, expected) in &cases {
        assert_eq!(peaks_direct(w, w.len(), 1, 1.0) as f64, *expected, "{w:?}");
    }
    let counts: Vec<f64> = cases.iter().map(|c| c.1).collect();
    assert_close(&run(&g, &frames)["p"], &stats(&counts));

    let ev = events(10, 11);
    let g = with(
        vec![json!({"id": "p", "op": "peaks", "inputs": ["trace"], "params": {"threshold": 1.5}})],
        &["p"],
    );
    let counts: Vec<f64> = ev.trace.iter().map(|t| peaks_direct(t, LEN, 1, 1.5) as f64).collect();
    assert_close(&run(&g, &ev.frames)["p"], &stats(&counts));
}

#[test]
fn peaks_in_images() {
    let g = with(
        vec![json!({"id": "p", "op": "peaks", "inputs": ["cam_any"], "params": {"threshold": 2}})],
        &["p"],
    );
    #[rustfmt::skip]
    let small = vec![
        5.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 4.0, 1.0,
        1.0, 3.0, 1.0, 1.0,
        1.0, 1.0, 2.5, 2.5,
    ];
    // 5 (corner), 4 (interior), 3 (interior, its diagonal 4 does not count); 2.5 is a plateau.
    assert_eq!(peaks_direct(&small, 4, 4, 2.0), 3);
    let frames = vec![frame(
        0,
        vec![(
            "cam",
            FieldValue::Image {
                width: 4,
                height: 4,
                pixels: small,
            },
        )],
    )];
    assert_eq!(run(&g, &frames)["p"]["mean"], json!(3.0));

    let ev = events(10, 12);
    let g = with(
        vec![
            json!({"id": "roi", "op": "roi", "inputs": ["cam"], "params": {"x0": 1, "y0": 1, "x1": 11, "y1": 8}}),
            json!({"id": "p", "op": "peaks", "inputs": ["roi"], "params": {"threshold": 130}}),
            json!({"id": "q", "op": "peaks", "inputs": ["cam"], "params": {"threshold": 0}}),
        ],
        &["p", "q"],
    );
    let out = run(&g, &ev.frames);
    let rois: Vec<Vec<f64>> = ev
        .cam
        .iter()
        .map(|c| (1..8).flat_map(|y| (1..11).map(move |x| pix(c, x, y))).collect())
        .collect();
    let p: Vec<f64> = rois.iter().map(|r| peaks_direct(r, 10, 7, 130.0) as f64).collect();
    let q: Vec<f64> = ev.cam.iter().map(|c| peaks_direct(c, W, H, 0.0) as f64).collect();
    assert!(p.iter().any(|&n| n > 0.0));
    assert_close(&out["p"], &stats(&p));
    assert_close(&out["q"], &stats(&q));
}

#[test]
fn strip_chart_mean_per_bin() {
    let ev = events(25, 13);
    let g = with(
        vec![
            json!({"id": "roi", "op": "roi", "inputs": ["cam"], "params": {"x0": 4, "y0": 4, "x1": 8, "y1": 8}}),
            json!({"id": "roi_mean", "op": "mean", "inputs": ["roi"]}),
            json!({"id": "chart", "op": "strip_chart", "inputs": ["roi_mean"]}),
            json!({"id": "energy_chart", "op": "strip_chart", "inputs": ["energy"]}),
        ],
        &["chart", "energy_chart"],
    );
    let out = run(&g, &ev.frames);
    let means: Vec<f64> = ev
        .cam
        .iter()
        .map(|c| (4..8).flat_map(|y| (4..8).map(move |x| pix(c, x, y))).sum::<f64>() / 16.0)
        .collect();
    assert_close(&out["chart"], &json!({"mean": means.iter().sum::<f64>() / 25.0, "count": 25}));
    assert_close(
        &out["energy_chart"],
        &json!({"mean": ev.energy.iter().sum::<f64>() / 25.0, "count": 25}),
    );
}

#[test]
fn empty_bins_finalize_to_count_zero_and_nulls() {
    let g = with(
        vec![
            json!({"id": "h", "op": "histogram", "inputs": ["energy"], "params": {"bins": 2, "low": 0, "high": 1}}),
            json!({"id": "bm", "op": "binned_mean", "inputs": ["energy", "scan"], "params": {"bins": 2, "low": 0, "high": 1}}),
            json!({"id": "chart", "op": "strip_chart", "inputs": ["energy"]}),
        ],
        &["energy", "trace", "cam", "cam_any", "h", "bm", "chart"],
    );
    let mut p = g.empty_partials();
    let q = g.empty_partials();
    p.merge(&q).unwrap();
    assert_eq!(p.events(), 0);
    let out = p.finalize();
    assert_eq!(
        out["energy"],
        json!({"count": 0, "sum": 0.0, "mean": null, "std": null, "min": null, "max": null})
    );
    assert_eq!(out["trace"], json!({"count": 0, "mean": null}));
    assert_eq!(out["cam"], json!({"count": 0, "mean": null, "width": W, "height": H}));
    assert_eq!(out["cam_any"], json!({"count": 0, "mean": null, "width": null, "height": null}));
    assert_eq!(
        out["h"],
        json!({"low": 0.0, "high": 1.0, "counts": [0, 0], "underflow": 0, "overflow": 0, "count": 0})
    );
    assert_eq!(out["bm"], json!({"low": 0.0, "high": 1.0, "mean": [null, null], "counts": [0, 0]}));
    assert_eq!(out["chart"], json!({"mean": null, "count": 0}));
    // Empty partials survive JSON too (no non-finite placeholders).
    let back: Partials = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    // Merging an empty partial into a full one changes nothing.
    let ev = events(3, 14);
    let mut full = g.empty_partials();
    for f in &ev.frames {
        g.process(f, &mut full).unwrap();
    }
    let before = full.finalize();
    full.merge(&g.empty_partials()).unwrap();
    assert_eq!(full.finalize(), before);
    let mut empty = g.empty_partials();
    empty.merge(&full).unwrap();
    assert_eq!(empty.finalize(), before);
}

#[test]
fn values_shared_by_several_consumers_are_not_moved() {
    // `t` feeds two nodes and is a result; `p` has a single consumer and is updated in place.
    let ev = events(5, 15);
    let g = with(
        vec![
            json!({"id": "t", "op": "threshold", "inputs": ["trace"], "params": {"level": 0.0}}),
            json!({"id": "t_sum", "op": "sum", "inputs": ["t"]}),
            json!({"id": "t_max", "op": "max", "inputs": ["t"]}),
            json!({"id": "p", "op": "projection", "inputs": ["cam"], "params": {"axis": 1}}),
            json!({"id": "p2", "op": "mul", "inputs": ["p"], "params": {"constant": 2}}),
            json!({"id": "p3", "op": "roi", "inputs": ["p2"], "params": {"start": 2, "end": 7}}),
            json!({"id": "p4", "op": "sub", "inputs": ["p3", "p3"]}),
            json!({"id": "p5", "op": "add", "inputs": ["p3"], "params": {"constant": 1}}),
            json!({"id": "twice", "op": "add", "inputs": ["trace", "trace"]}),
        ],
        &["t", "t_sum", "t_max", "p3", "p4", "p5", "twice"],
    );
    let out = run(&g, &ev.frames);
    let t: Vec<Vec<f64>> = ev
        .trace
        .iter()
        .map(|t| t.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect())
        .collect();
    assert_close(&out["t"], &json!({"count": 5, "mean": elementwise_mean(&t)}));
    assert_close(&out["t_sum"], &stats(&t.iter().map(|t| t.iter().sum()).collect::<Vec<f64>>()));
    assert_close(
        &out["t_max"],
        &stats(&t.iter().map(|t| t.iter().cloned().fold(f64::MIN, f64::max)).collect::<Vec<f64>>()),
    );
    let p3: Vec<Vec<f64>> = ev
        .cam
        .iter()
        .map(|c| (2..7).map(|y| 2.0 * (0..W).map(|x| pix(c, x, y)).sum::<f64>()).collect())
        .collect();
    assert_close(&out["p3"], &json!({"count": 5, "mean": elementwise_mean(&p3)}));
    assert_close(&out["p4"], &json!({"count": 5, "mean": vec![0.0; 5]}));
    let p5: Vec<Vec<f64>> = p3.iter().map(|r| r.iter().map(|v| v + 1.0).collect()).collect();
    assert_close(&out["p5"], &json!({"count": 5, "mean": elementwise_mean(&p5)}));
    let twice: Vec<Vec<f64>> = ev.trace.iter().map(|t| t.iter().map(|v| 2.0 * v).collect()).collect();
    assert_close(&out["twice"], &json!({"count": 5, "mean": elementwise_mean(&twice)}));
}

#[test]
fn chains_of_owned_arrays_move_and_window_in_place() {
    // threshold (owned) -> roi (moves and windows the owned buffer) -> threshold (copies the
    // window) -> add of two owned arrays -> sum.
    let ev = events(4, 16);
    let g = with(
        vec![
            json!({"id": "a", "op": "threshold", "inputs": ["cam"], "params": {"level": 120}}),
            json!({"id": "b", "op": "roi", "inputs": ["a"], "params": {"x0": 2, "y0": 3, "x1": 8, "y1": 6}}),
            json!({"id": "c", "op": "threshold", "inputs": ["b"], "params": {"level": 130}}),
            json!({"id": "d", "op": "mul", "inputs": ["cam"], "params": {"constant": -1}}),
            json!({"id": "e", "op": "roi", "inputs": ["d"], "params": {"x0": 2, "y0": 3, "x1": 8, "y1": 6}}),
            json!({"id": "f", "op": "add", "inputs": ["c", "e"]}),
            json!({"id": "g", "op": "sum", "inputs": ["f"]}),
        ],
        &["g"],
    );
    let out = run(&g, &ev.frames);
    let expected: Vec<f64> = ev
        .cam
        .iter()
        .map(|c| {
            let mut s = 0.0;
            for y in 3..6 {
                for x in 2..8 {
                    let v = pix(c, x, y);
                    let a = if v < 120.0 { 0.0 } else { v };
                    let c = if a < 130.0 { 0.0 } else { a };
                    s += c - v;
                }
            }
            s
        })
        .collect();
    assert_close(&out["g"], &stats(&expected));
}

#[test]
fn graphs_larger_than_the_inline_slots() {
    let mut nodes = vec![json!({"id": "n0", "op": "select", "params": {"field": "energy", "kind": "scalar"}})];
    for i in 1..50 {
        nodes.push(json!({"id": format!("n{i}"), "op": "add", "inputs": [format!("n{}", i - 1)], "params": {"constant": 1}}));
    }
    let g = graph(json!({"nodes": nodes, "results": ["n49", "n10"]}));
    let ev = events(6, 17);
    let out = run(&g, &ev.frames);
    assert_close(&out["n49"], &stats(&ev.energy.iter().map(|e| e + 49.0).collect::<Vec<_>>()));
    assert_close(&out["n10"], &stats(&ev.energy.iter().map(|e| e + 10.0).collect::<Vec<_>>()));
}

#[test]
fn nodes_no_result_needs_are_not_evaluated() {
    let g = with(
        vec![
            json!({"id": "ghost", "op": "select", "params": {"field": "not_in_the_frames", "kind": "scalar"}}),
            json!({"id": "ghost_hist", "op": "histogram", "inputs": ["ghost"], "params": {"bins": 2, "low": 0, "high": 1}}),
        ],
        &["energy"],
    );
    let ev = events(3, 18);
    assert_close(&run(&g, &ev.frames)["energy"], &stats(&ev.energy));
}

#[test]
fn fields_are_found_whatever_their_order() {
    let g = with(vec![json!({"id": "sum", "op": "add", "inputs": ["energy", "scan"]})], &["sum"]);
    let frames = vec![
        frame(0, vec![("energy", FieldValue::Scalar(1.0)), ("scan", FieldValue::Scalar(2.0))]),
        frame(
            1,
            vec![
                ("scan", FieldValue::Scalar(3.0)),
                ("x", FieldValue::Scalar(0.0)),
                ("energy", FieldValue::Scalar(4.0)),
            ],
        ),
        frame(2, vec![("energy", FieldValue::Scalar(5.0)), ("scan", FieldValue::Scalar(6.0))]),
    ];
    assert_close(&run(&g, &frames)["sum"], &stats(&[3.0, 7.0, 11.0]));
}

#[track_caller]
fn process_err(g: &CompiledGraph, partials: &mut Partials, f: &Frame) -> EvalError {
    let before = partials.clone();
    let err = g.process(f, partials).expect_err("an evaluation error");
    assert_eq!(*partials, before, "a failed event must leave the partials unchanged");
    err
}

#[test]
fn run_time_errors_name_the_node_and_leave_partials_unchanged() {
    let g = with(
        vec![
            json!({"id": "roi", "op": "roi", "inputs": ["trace_any"], "params": {"start": 2, "end": 6}}),
            json!({"id": "roi_sum", "op": "sum", "inputs": ["roi"]}),
        ],
        &["energy", "trace", "roi_sum"],
    );
    let mut p = g.empty_partials();
    let good = events(1, 19).frames.remove(0);
    g.process(&good, &mut p).unwrap();

    let mut missing = good.clone();
    missing.fields.retain(|(k, _)| k != "energy");
    let e = process_err(&g, &mut p, &missing);
    assert_eq!(e.node, "energy");
    assert!(e.message.contains("no field `energy`"), "{e}");
    assert_eq!(e.to_string(), format!("node `energy`: {}", e.message));

    let mut wrong_kind = good.clone();
    wrong_kind.fields[0].1 = FieldValue::Waveform(vec![1.0]);
    let e = process_err(&g, &mut p, &wrong_kind);
    assert_eq!(e.node, "energy");
    assert!(e.message.contains("is a waveform") && e.message.contains("scalar"), "{e}");

    // Declared length 16: a longer trace is refused by the select.
    let mut long = good.clone();
    long.fields[1].1 = FieldValue::Waveform(vec![0.0; 17]);
    let e = process_err(&g, &mut p, &long);
    assert_eq!(e.node, "trace");
    assert!(e.message.contains("length 17") && e.message.contains("16"), "{e}");

    // Undeclared length: the roi finds it out of bounds at run time.
    let mut short = good.clone();
    short.fields[1] = ("trace".to_string(), FieldValue::Waveform(vec![0.0; 4]));
    let g2 = with(
        vec![
            json!({"id": "roi", "op": "roi", "inputs": ["trace_any"], "params": {"start": 2, "end": 6}}),
            json!({"id": "roi_sum", "op": "sum", "inputs": ["roi"]}),
        ],
        &["roi_sum"],
    );
    let mut p2 = g2.empty_partials();
    let e = process_err(&g2, &mut p2, &short);
    assert_eq!(e.node, "roi");
    assert!(e.message.contains("out of bounds"), "{e}");

    let mut bad_image = good.clone();
    bad_image.fields[2].1 = FieldValue::Image {
        width: 3,
        height: 3,
        pixels: vec![0.0; 8],
    };
    let g3 = with(vec![], &["cam_any"]);
    let mut p3 = g3.empty_partials();
    let e = process_err(&g3, &mut p3, &bad_image);
    assert_eq!(e.node, "cam_any");
    assert!(e.message.contains("malformed"), "{e}");

    // Partials of another graph are refused.
    let e = process_err(&g, &mut p3, &good);
    assert!(e.message.contains("different graph"), "{e}");
    assert_eq!(p.events(), 1);
}

#[test]
fn array_results_refuse_shape_changes_within_a_bin() {
    let g = with(vec![], &["energy", "trace_any", "cam_any"]);
    let mk = |len: usize, w: u32, h: u32| {
        frame(
            0,
            vec![
                ("energy", FieldValue::Scalar(1.0)),
                ("trace", FieldValue::Waveform(vec![1.0; len])),
                (
                    "cam",
                    FieldValue::Image {
                        width: w,
                        height: h,
                        pixels: vec![1.0; (w * h) as usize],
                    },
                ),
            ],
        )
    };
    let mut p = g.empty_partials();
    g.process(&mk(4, 3, 2), &mut p).unwrap();
    let e = process_err(&g, &mut p, &mk(5, 3, 2));
    assert_eq!(e.node, "trace_any");
    assert!(e.message.contains("shape 5") && e.message.contains("shape 4"), "{e}");
    let e = process_err(&g, &mut p, &mk(4, 2, 3));
    assert_eq!(e.node, "cam_any");
    assert!(e.message.contains("2x3") && e.message.contains("3x2"), "{e}");

    // Two workers that saw different shapes cannot merge.
    let mut q = g.empty_partials();
    g.process(&mk(5, 3, 2), &mut q).unwrap();
    let before = p.clone();
    let e = p.merge(&q).expect_err("shapes differ");
    assert_eq!(e.node, "trace_any");
    assert_eq!(p, before, "a failed merge leaves the partials unchanged");

    // Partials of different graphs do not merge either.
    let other = with(vec![], &["energy", "trace_any"]);
    assert!(p.merge(&other.empty_partials()).is_err());
    let same_shape_other_graph = with(
        vec![json!({"id": "x", "op": "sum", "inputs": ["trace"]})],
        &["energy", "trace_any", "cam_any"],
    );
    assert!(p.merge(&same_shape_other_graph.empty_partials()).is_err());
}

#[test]
fn empty_arrays() {
    let g = with(
        vec![
            json!({"id": "s", "op": "sum", "inputs": ["trace_any"]}),
            json!({"id": "m", "op": "mean", "inputs": ["trace_any"]}),
        ],
        &["s"],
    );
    let f = frame(0, vec![("trace", FieldValue::Waveform(vec![]))]);
    let mut p = g.empty_partials();
    g.process(&f, &mut p).unwrap();
    assert_eq!(p.finalize()["s"]["sum"], json!(0.0));
    let g = with(vec![json!({"id": "m", "op": "mean", "inputs": ["trace_any"]})], &["m"]);
    let mut p = g.empty_partials();
    let e = process_err(&g, &mut p, &f);
    assert_eq!(e.node, "m");
    assert!(e.message.contains("empty array"), "{e}");
}

#[test]
fn default_graph_runs_on_synthetic_like_frames() {
    let spec = default_graph();
    let g = compile(&spec).expect("the default graph compiles");
    assert_eq!(g.spec(), &spec);
    assert_eq!(g.result_names(), spec.results.as_slice());
    let mut rng = Lcg(20);
    let frames: Vec<Frame> = (0..6)
        .map(|i| {
            frame(
                i,
                vec![
                    ("energy", FieldValue::Scalar(10.0 * rng.next())),
                    ("scan", FieldValue::Scalar(rng.next())),
                    ("trace", FieldValue::Waveform((0..256).map(|_| rng.next()).collect())),
                    ("cspad", image(128, 128, |x, y| (x + y) as f64)),
                ],
            )
        })
        .collect();
    let out = run(&g, &frames);
    // ROI x 32..96, y 32..96 of (x + y): mean 63.5 + 63.5.
    assert_close(&out["cspad_roi_chart"], &json!({"mean": 127.0, "count": 6}));
    assert_eq!(out["energy_hist"]["count"], json!(6));
    assert_eq!(out["energy_hist"]["counts"].as_array().map(Vec::len), Some(50));
    assert_eq!(out["trace"]["mean"].as_array().map(Vec::len), Some(256));
    assert_eq!(out["cspad_columns"]["mean"].as_array().map(Vec::len), Some(128));
    assert_close(
        &out["cspad_columns"]["mean"][5],
        &json!((0..128).map(|y| (5 + y) as f64).sum::<f64>()),
    );
    assert_eq!(out["energy_vs_scan"]["counts"].as_array().map(Vec::len), Some(20));
    assert_eq!(out["trace_peaks"]["count"], json!(6));
    assert!(out["trace_peaks"]["mean"].as_f64().unwrap() > 10.0);
}

#[test]
fn the_default_graph_is_the_demo_graph_fitted_to_the_default_fields() {
    let fields = vec![
        ("energy", FieldValue::Scalar(1.0)),
        ("scan", FieldValue::Scalar(0.5)),
        ("trace", FieldValue::Waveform(vec![0.0; 256])),
        ("cspad", image(128, 128, |_, _| 0.0)),
    ];
    assert_eq!(default_graph_for(&frame(0, fields)), Some(default_graph()));
}

#[test]
fn the_demo_graph_fits_other_shapes_and_names() {
    // A 40x30 image `det`, a waveform `w` of 10 samples, a scalar `gmd`: no `cspad`, `trace` or
    // `energy`, so the first image and waveform are taken and no histogram is made.
    let mut rng = Lcg(31);
    let frames: Vec<Frame> = (0..5)
        .map(|i| {
            let pixels: Vec<f64> = (0..40 * 30).map(|_| 100.0 * rng.next()).collect();
            let w: Vec<f64> = (0..10).map(|_| rng.next()).collect();
            frame(
                i,
                vec![
                    ("gmd", FieldValue::Scalar(rng.next())),
                    ("w", FieldValue::Waveform(w)),
                    ("det", image(40, 30, |x, y| pixels[y * 40 + x])),
                ],
            )
        })
        .collect();
    let spec = default_graph_for(&frames[0]).expect("a graph for these fields");
    assert_eq!(spec.results, ["det_roi_chart", "w", "det_columns", "w_peaks"]);
    let g = compile(&spec).expect("the fitted graph compiles");
    let out = run(&g, &frames);
    // The chart is the mean, over the events, of each image's middle half: x 10..30, y 7..23.
    let expected: f64 = frames
        .iter()
        .map(|f| {
            let FieldValue::Image { pixels, .. } = &f.fields[2].1 else {
                unreachable!()
            };
            (7..23).flat_map(|y| (10..30).map(move |x| pixels[y * 40 + x])).sum::<f64>() / (20.0 * 16.0)
        })
        .sum::<f64>()
        / 5.0;
    assert_close(&out["det_roi_chart"], &json!({"mean": expected, "count": 5}));
    assert_eq!(out["det_columns"]["mean"].as_array().map(Vec::len), Some(40));
    assert_eq!(out["w"]["mean"].as_array().map(Vec::len), Some(10));
    assert_eq!(out["w_peaks"]["count"], json!(5));
}

#[test]
fn the_demo_graph_of_scalars_alone_charts_the_first_and_of_nothing_is_none() {
    let only_scalars = frame(0, vec![("gmd", FieldValue::Scalar(1.0)), ("ebeam", FieldValue::Scalar(2.0))]);
    let spec = default_graph_for(&only_scalars).expect("a graph for scalars");
    assert_eq!(spec.results, ["gmd_chart"]);
    compile(&spec).expect("it compiles");
    // `energy` without `scan`: the histogram, not the binned mean.
    let energy = frame(0, vec![("energy", FieldValue::Scalar(1.0))]);
    assert_eq!(default_graph_for(&energy).unwrap().results, ["energy_hist"]);
    assert_eq!(default_graph_for(&frame(0, vec![])), None);
    // A waveform named like the image's region-of-interest node: ids would collide.
    let colliding = frame(
        0,
        vec![("x", image(4, 4, |_, _| 0.0)), ("x_roi", FieldValue::Waveform(vec![0.0; 3]))],
    );
    assert_eq!(default_graph_for(&colliding), None);
}

#[test]
fn compiled_graphs_are_shareable_between_threads() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<CompiledGraph>();
    check::<Partials>();
    let g = std::sync::Arc::new(with(vec![], &["energy", "cam"]));
    let ev = events(20, 21);
    let partials: Vec<Partials> = std::thread::scope(|s| {
        let handles: Vec<_> = ev
            .frames
            .chunks(5)
            .map(|chunk| {
                let g = g.clone();
                s.spawn(move || {
                    let mut p = g.empty_partials();
                    chunk.iter().for_each(|f| g.process(f, &mut p).unwrap());
                    p
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = g.empty_partials();
    partials.iter().for_each(|p| total.merge(p).unwrap());
    assert_close(&total.finalize()["energy"], &stats(&ev.energy));
}
