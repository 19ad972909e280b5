//! Tests of the graph module: golden values for every op, validation, merge properties.

mod docs;
mod golden;
mod props;
mod validation;

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{compile, CompiledGraph, GraphSpec, Partials};
use crate::event::{FieldValue, Frame};

/// A graph from its JSON form.
pub(super) fn spec(json: Json) -> GraphSpec {
    serde_json::from_value(json).expect("a graph document")
}

/// Compiles a graph that must be valid.
pub(super) fn graph(json: Json) -> CompiledGraph {
    match compile(&spec(json)) {
        Ok(g) => g,
        Err(errors) => panic!("graph does not compile: {errors:#?}"),
    }
}

pub(super) fn frame(seq: u64, fields: Vec<(&str, FieldValue)>) -> Frame {
    Frame {
        seq,
        timestamp_ns: seq * 1000,
        fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

pub(super) fn image(width: u32, height: u32, f: impl Fn(usize, usize) -> f64) -> FieldValue {
    let pixels = (0..height as usize)
        .flat_map(|y| (0..width as usize).map(move |x| (x, y)))
        .map(|(x, y)| f(x, y))
        .collect();
    FieldValue::Image { width, height, pixels }
}

/// Deterministic pseudo-random numbers in [0, 1).
pub(super) struct Lcg(u64);

impl Lcg {
    pub(super) fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether two JSON values are equal, numbers up to a relative 1e-9.
pub(super) fn close(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()))
        }
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b)),
        (Json::Object(x), Json::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w))),
        _ => a == b,
    }
}

#[track_caller]
pub(super) fn assert_close(actual: &Json, expected: &Json) {
    assert!(close(actual, expected), "\n  actual: {actual}\nexpected: {expected}");
}

#[track_caller]
pub(super) fn assert_maps_close(actual: &BTreeMap<String, Json>, expected: &BTreeMap<String, Json>) {
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (k, v) in expected {
        assert!(close(&actual[k], v), "result `{k}`\n  actual: {}\nexpected: {v}", actual[k]);
    }
}

fn process_all(graph: &CompiledGraph, frames: &[Frame]) -> Partials {
    let mut partials = graph.empty_partials();
    for f in frames {
        graph.process(f, &mut partials).expect("process");
    }
    partials
}

/// Runs `frames` through `graph` in one partial, and split in two halves (first/second and
/// even/odd) merged in both orders; checks that all agree, and that partials survive bincode.
/// Returns the finalized results.
pub(super) fn run(graph: &CompiledGraph, frames: &[Frame]) -> BTreeMap<String, Json> {
    let all = process_all(graph, frames);
    assert_eq!(all.events(), frames.len() as u64);
    let full = all.finalize();

    let mid = frames.len() / 2;
    let (even, odd): (Vec<Frame>, Vec<Frame>) = {
        let (e, o): (Vec<_>, Vec<_>) = frames.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
        (e.into_iter().map(|x| x.1).collect(), o.into_iter().map(|x| x.1).collect())
    };
    for (a, b) in [(frames[..mid].to_vec(), frames[mid..].to_vec()), (even, odd)] {
        let (pa, pb) = (process_all(graph, &a), process_all(graph, &b));
        let mut ab = pa.clone();
        ab.merge(&pb).expect("merge a+b");
        let mut ba = pb.clone();
        ba.merge(&pa).expect("merge b+a");
        assert_eq!(ab.events(), frames.len() as u64);
        assert_eq!(ba.events(), frames.len() as u64);
        assert_maps_close(&ab.finalize(), &full);
        assert_maps_close(&ba.finalize(), &full);
    }

    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&all, config).expect("encode");
    let (back, _): (Partials, usize) = bincode::serde::decode_from_slice(&bytes, config).expect("decode");
    assert_eq!(back, all);
    full
}

/// Expected scalar aggregate of `values`, computed directly (two passes).
pub(super) fn stats(values: &[f64]) -> Json {
    if values.is_empty() {
        return serde_json::json!({"count": 0, "sum": 0.0, "mean": null, "std": null, "min": null, "max": null});
    }
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let mean = sum / n;
    let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    serde_json::json!({"count": values.len(), "sum": sum, "mean": mean, "std": var.sqrt(), "min": min, "max": max})
}

/// Expected elementwise mean of equal-length arrays.
pub(super) fn elementwise_mean(arrays: &[Vec<f64>]) -> Vec<f64> {
    let n = arrays.len() as f64;
    (0..arrays[0].len()).map(|i| arrays.iter().map(|a| a[i]).sum::<f64>() / n).collect()
}
