//! Per-result accumulators: the mergeable partials of a time bin and their JSON finalization.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::ops::{Bin, Binning};
use super::spec::EvalError;
use super::value::{shape_text, Array, Value};

/// The partial results of one graph over some events: one accumulator per result, in the order of
/// [`CompiledGraph::result_names`](super::CompiledGraph::result_names), plus the number of events.
///
/// Partials of the same graph merge in any order and grouping (up to floating-point rounding in
/// sums and means). They travel between tasks in bincode; JSON also works as long as every
/// accumulated value is finite (JSON has no NaN or infinity).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Partials {
    /// Fingerprint of the graph (CRC-32 of its JSON), so partials of different graphs never merge.
    graph: u32,
    events: u64,
    results: Vec<ResultPartial>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ResultPartial {
    name: String,
    acc: Accumulator,
}

impl Partials {
    pub(crate) fn new(graph: u32, results: Vec<(String, Accumulator)>) -> Self {
        Partials {
            graph,
            events: 0,
            results: results.into_iter().map(|(name, acc)| ResultPartial { name, acc }).collect(),
        }
    }

    pub(crate) fn graph(&self) -> u32 {
        self.graph
    }

    pub(crate) fn accumulators(&self) -> impl Iterator<Item = &Accumulator> {
        self.results.iter().map(|r| &r.acc)
    }

    pub(crate) fn len(&self) -> usize {
        self.results.len()
    }

    /// Counts one more event and lets `add` update each accumulator (by result index).
    pub(crate) fn add_event(&mut self, mut add: impl FnMut(usize, &mut Accumulator)) {
        self.events += 1;
        self.results.iter_mut().enumerate().for_each(|(i, r)| add(i, &mut r.acc));
    }

    /// Adds `other` into `self`. Fails, leaving `self` unchanged, if the two come from different
    /// graphs or hold arrays of different shapes for the same result.
    pub fn merge(&mut self, other: &Partials) -> Result<(), EvalError> {
        if self.graph != other.graph || self.results.len() != other.results.len() {
            return Err(EvalError::new("", "cannot merge partials of different graphs"));
        }
        for (a, b) in self.results.iter().zip(&other.results) {
            if a.name != b.name {
                return Err(EvalError::new(
                    "",
                    format!("cannot merge partials of different graphs (result `{}` vs `{}`)", a.name, b.name),
                ));
            }
            a.acc.check_merge(&b.acc).map_err(|message| EvalError::new(&a.name, message))?;
        }
        self.events += other.events;
        for (a, b) in self.results.iter_mut().zip(&other.results) {
            a.acc.merge(&b.acc);
        }
        Ok(())
    }

    /// Number of events these partials cover (including events a `filter` dropped).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The JSON value of every result (see the module documentation for each format).
    pub fn finalize(&self) -> BTreeMap<String, Json> {
        self.results.iter().map(|r| (r.name.clone(), r.acc.finalize())).collect()
    }
}

/// JSON number, or `null` for NaN and infinities (which JSON cannot hold).
fn num(x: f64) -> Json {
    if x.is_finite() {
        json!(x)
    } else {
        Json::Null
    }
}

/// The accumulator of one result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Accumulator {
    Scalar(ScalarAcc),
    Array(ArrayAcc),
    Histogram(HistogramAcc),
    BinnedMean(BinnedMeanAcc),
    StripChart(StripChartAcc),
}

impl Accumulator {
    pub(crate) fn scalar() -> Self {
        Accumulator::Scalar(ScalarAcc::default())
    }

    /// An array aggregate; `shape` is (width, height) when known at compile time.
    pub(crate) fn array(image: bool, shape: Option<(usize, usize)>) -> Self {
        Accumulator::Array(ArrayAcc {
            image,
            count: 0,
            shape,
            sum: Vec::new(),
        })
    }

    pub(crate) fn histogram(binning: Binning) -> Self {
        Accumulator::Histogram(HistogramAcc {
            binning,
            counts: vec![0; binning.bins],
            underflow: 0,
            overflow: 0,
        })
    }

    pub(crate) fn binned_mean(binning: Binning) -> Self {
        Accumulator::BinnedMean(BinnedMeanAcc {
            binning,
            counts: vec![0; binning.bins],
            sums: vec![0.0; binning.bins],
        })
    }

    pub(crate) fn strip_chart() -> Self {
        Accumulator::StripChart(StripChartAcc::default())
    }

    /// Whether adding `value` would fail (only array shapes can disagree), checked before any
    /// accumulator of the event is touched so that an event counts fully or not at all.
    pub(crate) fn check(&self, value: &Value<'_>) -> Result<(), String> {
        match (self, value) {
            (Accumulator::Array(acc), Value::Array(a)) => acc.check(a),
            (Accumulator::Array(_), Value::Scalar(_)) => Err("internal error: scalar value for an array result".to_string()),
            (_, Value::Array(_)) => Err("internal error: array value for a scalar result".to_string()),
            _ => Ok(()),
        }
    }

    /// Adds one event's inputs (checked by [`check`](Self::check)); `second` is the scan value of
    /// a binned_mean.
    pub(crate) fn add(&mut self, value: &Value<'_>, second: Option<&Value<'_>>) {
        let x = match value {
            Value::Scalar(x) => *x,
            Value::Array(a) => {
                if let Accumulator::Array(acc) = self {
                    acc.add(a);
                }
                return;
            }
        };
        match self {
            Accumulator::Scalar(acc) => acc.add(x),
            Accumulator::Histogram(acc) => acc.add(x),
            Accumulator::BinnedMean(acc) => {
                if let Some(Value::Scalar(scan)) = second {
                    acc.add(x, *scan);
                }
            }
            Accumulator::StripChart(acc) => {
                acc.count += 1;
                acc.sum += x;
            }
            Accumulator::Array(_) => {}
        }
    }

    fn check_merge(&self, other: &Accumulator) -> Result<(), String> {
        match (self, other) {
            (Accumulator::Scalar(_), Accumulator::Scalar(_)) | (Accumulator::StripChart(_), Accumulator::StripChart(_)) => Ok(()),
            (Accumulator::Array(a), Accumulator::Array(b)) => {
                if a.image != b.image {
                    return Err("cannot merge a waveform aggregate with an image aggregate".to_string());
                }
                match (a.shape, b.shape) {
                    (Some(sa), Some(sb)) if sa != sb => Err(format!(
                        "cannot merge arrays of different shapes: {} and {}",
                        shape_text(a.image, sa),
                        shape_text(a.image, sb)
                    )),
                    _ => Ok(()),
                }
            }
            (Accumulator::Histogram(a), Accumulator::Histogram(b)) if a.binning == b.binning && a.counts.len() == b.counts.len() => Ok(()),
            (Accumulator::BinnedMean(a), Accumulator::BinnedMean(b))
                if a.binning == b.binning && a.counts.len() == b.counts.len() && a.sums.len() == b.sums.len() =>
            {
                Ok(())
            }
            _ => Err("cannot merge accumulators of different kinds or binnings".to_string()),
        }
    }

    /// Merges `other` (checked by `check_merge`).
    fn merge(&mut self, other: &Accumulator) {
        match (self, other) {
            (Accumulator::Scalar(a), Accumulator::Scalar(b)) => a.merge(b),
            (Accumulator::Array(a), Accumulator::Array(b)) => a.merge(b),
            (Accumulator::Histogram(a), Accumulator::Histogram(b)) => {
                a.counts.iter_mut().zip(&b.counts).for_each(|(x, y)| *x += y);
                a.underflow += b.underflow;
                a.overflow += b.overflow;
            }
            (Accumulator::BinnedMean(a), Accumulator::BinnedMean(b)) => {
                a.counts.iter_mut().zip(&b.counts).for_each(|(x, y)| *x += y);
                a.sums.iter_mut().zip(&b.sums).for_each(|(x, y)| *x += y);
            }
            (Accumulator::StripChart(a), Accumulator::StripChart(b)) => {
                a.count += b.count;
                a.sum += b.sum;
            }
            _ => {}
        }
    }

    fn finalize(&self) -> Json {
        match self {
            Accumulator::Scalar(a) => a.finalize(),
            Accumulator::Array(a) => a.finalize(),
            Accumulator::Histogram(a) => json!({
                "low": a.binning.low,
                "high": a.binning.high,
                "counts": a.counts,
                "underflow": a.underflow,
                "overflow": a.overflow,
                "count": a.counts.iter().sum::<u64>() + a.underflow + a.overflow,
            }),
            Accumulator::BinnedMean(a) => json!({
                "low": a.binning.low,
                "high": a.binning.high,
                "mean": a.counts.iter().zip(&a.sums).map(|(&n, &s)| if n == 0 { Json::Null } else { num(s / n as f64) }).collect::<Vec<_>>(),
                "counts": a.counts,
            }),
            Accumulator::StripChart(a) => json!({
                "mean": if a.count == 0 { Json::Null } else { num(a.sum / a.count as f64) },
                "count": a.count,
            }),
        }
    }
}

/// Count, sum, mean, sum of squared deviations (`m2`), min and max of a scalar over events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScalarAcc {
    count: u64,
    sum: f64,
    mean: f64,
    m2: f64,
    // Meaningful only when count > 0 (kept finite otherwise, so partials stay valid JSON).
    min: f64,
    max: f64,
}

impl ScalarAcc {
    fn add(&mut self, x: f64) {
        // Welford's update: stable for the large means and small spreads of detector signals.
        self.count += 1;
        self.sum += x;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        if self.count == 1 {
            (self.min, self.max) = (x, x);
        } else {
            // `f64::min`/`max` skip NaN, so NaN values are ignored unless all are NaN.
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
    }

    fn merge(&mut self, other: &ScalarAcc) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        // Chan, Golub and LeVeque's pairwise combination of means and m2.
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * (nb / n);
        self.m2 += other.m2 + delta * delta * (na * nb / n);
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn finalize(&self) -> Json {
        if self.count == 0 {
            return json!({"count": 0, "sum": 0.0, "mean": null, "std": null, "min": null, "max": null});
        }
        json!({
            "count": self.count,
            "sum": num(self.sum),
            "mean": num(self.mean),
            // Rounding can leave m2 slightly negative; NaN (from non-finite values) stays NaN.
            "std": num((if self.m2 < 0.0 { 0.0 } else { self.m2 } / self.count as f64).sqrt()),
            "min": num(self.min),
            "max": num(self.max),
        })
    }
}

/// Elementwise sum of arrays of one shape over events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ArrayAcc {
    image: bool,
    count: u64,
    /// (width, height); a waveform has height 1. Known at compile time or set by the first event.
    shape: Option<(usize, usize)>,
    /// Empty until the first event (so empty partials stay small).
    sum: Vec<f64>,
}

impl ArrayAcc {
    fn check(&self, a: &Array<'_>) -> Result<(), String> {
        match self.shape {
            Some(shape) if shape != a.shape() => Err(format!(
                "this event's {} has shape {}, but the result accumulates shape {}",
                if self.image { "image" } else { "waveform" },
                shape_text(self.image, a.shape()),
                shape_text(self.image, shape)
            )),
            _ => Ok(()),
        }
    }

    fn add(&mut self, a: &Array<'_>) {
        if self.count == 0 {
            self.shape = Some(a.shape());
            self.sum = a.to_vec();
        } else {
            // `check` guarantees the shape; `get_mut` keeps even corrupt partials from panicking.
            let mut i = 0;
            a.rows().for_each(|row| {
                if let Some(sum) = self.sum.get_mut(i..i + row.len()) {
                    sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
                }
                i += row.len();
            });
        }
        self.count += 1;
    }

    fn merge(&mut self, other: &ArrayAcc) {
        if other.count == 0 {
            self.shape = self.shape.or(other.shape);
        } else if self.count == 0 {
            *self = other.clone();
        } else {
            self.sum.iter_mut().zip(&other.sum).for_each(|(a, b)| *a += b);
            self.count += other.count;
        }
    }

    fn finalize(&self) -> Json {
        let mean = if self.count == 0 {
            Json::Null
        } else {
            let n = self.count as f64;
            Json::Array(self.sum.iter().map(|s| num(s / n)).collect())
        };
        let mut out = json!({"count": self.count, "mean": mean});
        if self.image {
            out["width"] = self.shape.map_or(Json::Null, |s| json!(s.0));
            out["height"] = self.shape.map_or(Json::Null, |s| json!(s.1));
        }
        out
    }
}

/// Per-bin counts of a scalar, with out-of-range counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct HistogramAcc {
    binning: Binning,
    counts: Vec<u64>,
    underflow: u64,
    /// Values at or above `high`, and NaN.
    overflow: u64,
}

impl HistogramAcc {
    fn add(&mut self, x: f64) {
        match self.binning.bin(x) {
            Bin::Under => self.underflow += 1,
            Bin::In(i) => {
                if let Some(c) = self.counts.get_mut(i) {
                    *c += 1;
                }
            }
            Bin::Over => self.overflow += 1,
        }
    }
}

/// Per-bin count and sum of a value, binned by a scan variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct BinnedMeanAcc {
    binning: Binning,
    counts: Vec<u64>,
    sums: Vec<f64>,
}

impl BinnedMeanAcc {
    fn add(&mut self, value: f64, scan: f64) {
        // Scan values outside [low, high) (or NaN) belong to no bin: the event is not counted.
        if let Bin::In(i) = self.binning.bin(scan) {
            if let (Some(c), Some(s)) = (self.counts.get_mut(i), self.sums.get_mut(i)) {
                *c += 1;
                *s += value;
            }
        }
    }
}

/// Count and sum of a scalar over the events of a time bin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StripChartAcc {
    count: u64,
    sum: f64,
}
