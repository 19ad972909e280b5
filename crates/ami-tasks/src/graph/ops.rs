//! The ops: parameter parsing, type inference at compile time and evaluation per event.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::value::{shape_text, Array, Ty, Value};
use crate::event::{Event, FieldRef};

/// Every op name, for messages.
pub(crate) const OP_NAMES: &[&str] = &[
    "select",
    "roi",
    "sum",
    "mean",
    "std",
    "min",
    "max",
    "projection",
    "histogram",
    "threshold",
    "filter",
    "add",
    "sub",
    "mul",
    "div",
    "binned_mean",
    "peaks",
    "strip_chart",
];

/// Largest `bins` accepted by `histogram` and `binned_mean` (their partials hold one counter per
/// bin). A finished bin of a result goes to clients as one JSON message of at most 1 MiB: 65,536
/// counts fit it with room to spare, where 2^20 never could.
pub const MAX_BINS: usize = 1 << 16;

/// Whether `op` names an accumulating op, whose value exists only as a result.
pub(crate) fn is_accumulating(op: &str) -> bool {
    matches!(op, "histogram" | "binned_mean" | "strip_chart")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Scalar,
    Waveform,
    Image,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reduce {
    Sum,
    Mean,
    Std,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// Equal-width bins over `[low, high)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Binning {
    pub(crate) bins: usize,
    pub(crate) low: f64,
    pub(crate) high: f64,
}

/// Where a value falls in a [`Binning`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bin {
    Under,
    In(usize),
    /// At or above `high`, or NaN.
    Over,
}

impl Binning {
    pub(crate) fn bin(&self, x: f64) -> Bin {
        if x < self.low {
            Bin::Under
        } else if x < self.high {
            // Rounding can put a value just below `high` at `bins`: clamp it into the last bin.
            let i = ((x - self.low) / (self.high - self.low) * self.bins as f64) as usize;
            Bin::In(i.min(self.bins - 1))
        } else {
            Bin::Over
        }
    }
}

/// A compiled op with checked parameters.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Select {
        field: String,
        kind: Kind,
        length: Option<usize>,
        width: Option<usize>,
        height: Option<usize>,
    },
    /// Half-open window `x0..x1` x `y0..y1`; a waveform roi (`start..end`) has `y0..y1 = 0..1`.
    Roi {
        image: bool,
        x0: usize,
        y0: usize,
        x1: usize,
        y1: usize,
    },
    Reduce(Reduce),
    Projection {
        axis: u8,
    },
    Threshold {
        level: f64,
    },
    Filter {
        min: Option<f64>,
        max: Option<f64>,
    },
    Arith {
        op: Arith,
        constant: Option<f64>,
    },
    Peaks {
        threshold: f64,
    },
    Histogram(Binning),
    BinnedMean(Binning),
    StripChart,
}

/// Number of inputs the op named `op` takes with these params (`None` for an unknown op).
pub(crate) fn arity(op: &str, params: &Json) -> Option<usize> {
    Some(match op {
        "select" => 0,
        "add" | "sub" | "mul" | "div" => match params.get("constant") {
            Some(_) => 1,
            None => 2,
        },
        "binned_mean" => 2,
        op if OP_NAMES.contains(&op) => 1,
        _ => return None,
    })
}

/// Reads parameters, collecting every problem.
struct Params<'p> {
    map: Option<&'p Map<String, Json>>,
    errors: Vec<String>,
}

impl<'p> Params<'p> {
    fn new(op: &str, params: &'p Json, allowed: &[&str]) -> Self {
        let mut errors = Vec::new();
        let map = match params {
            Json::Object(map) => {
                for key in map.keys() {
                    if !allowed.contains(&key.as_str()) {
                        errors.push(if allowed.is_empty() {
                            format!("`{op}` takes no parameters, got `{key}`")
                        } else {
                            format!("unknown parameter `{key}` for `{op}` (expected {})", list(allowed))
                        });
                    }
                }
                Some(map)
            }
            Json::Null => None,
            other => {
                errors.push(format!("params must be a JSON object, got {}", json_kind(other)));
                None
            }
        };
        Params { map, errors }
    }

    fn get(&self, key: &str) -> Option<&'p Json> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn missing(&mut self, key: &str, what: &str) {
        self.errors.push(format!("missing parameter `{key}` ({what})"));
    }

    fn opt_f64(&mut self, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        match v.as_f64() {
            Some(x) if x.is_finite() => Some(x),
            _ => {
                self.errors
                    .push(format!("parameter `{key}` must be a number, got {}", json_kind(v)));
                None
            }
        }
    }

    fn f64(&mut self, key: &str) -> Option<f64> {
        if !self.has(key) {
            self.missing(key, "a number");
        }
        self.opt_f64(key)
    }

    fn opt_uint(&mut self, key: &str) -> Option<usize> {
        let v = self.get(key)?;
        // Integral floats (`32.0`) are accepted: some clients write every number as a float.
        let n = v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x < 9.0e15)
                .map(|x| x as u64)
        });
        match n.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.errors
                    .push(format!("parameter `{key}` must be a non-negative integer, got {}", json_text(v)));
                None
            }
        }
    }

    fn uint(&mut self, key: &str) -> Option<usize> {
        if !self.has(key) {
            self.missing(key, "a non-negative integer");
        }
        self.opt_uint(key)
    }

    fn str(&mut self, key: &str) -> Option<&'p str> {
        match self.get(key) {
            None => {
                self.missing(key, "a string");
                None
            }
            Some(Json::String(s)) => Some(s),
            Some(v) => {
                self.errors
                    .push(format!("parameter `{key}` must be a string, got {}", json_kind(v)));
                None
            }
        }
    }

    fn binning(&mut self) -> Option<Binning> {
        let (bins, low, high) = (self.uint("bins"), self.f64("low"), self.f64("high"));
        if bins == Some(0) {
            self.errors.push("`bins` must be at least 1".to_string());
        } else if bins.is_some_and(|b| b > MAX_BINS) {
            self.errors.push(format!("`bins` must be at most {MAX_BINS}"));
        }
        if let (Some(low), Some(high)) = (low, high) {
            if low >= high {
                self.errors.push(format!("`low` ({low}) must be below `high` ({high})"));
            } else if !(high - low).is_finite() {
                self.errors.push("`high - low` overflows".to_string());
            }
        }
        Some(Binning {
            bins: bins?,
            low: low?,
            high: high?,
        })
    }

    fn finish(self, op: Option<Op>) -> Result<Op, Vec<String>> {
        match op {
            Some(op) if self.errors.is_empty() => Ok(op),
            _ => Err(self.errors),
        }
    }
}

fn list(items: &[&str]) -> String {
    items.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn json_text(v: &Json) -> String {
    match v {
        Json::Number(n) => n.to_string(),
        other => json_kind(other).to_string(),
    }
}

/// Parses the op named `op` with `params`; `Err` holds every problem (messages without the node).
pub(crate) fn parse(op: &str, params: &Json) -> Result<Op, Vec<String>> {
    match op {
        "select" => {
            let mut p = Params::new(op, params, &["field", "kind", "length", "width", "height"]);
            let field = p.str("field");
            if field == Some("") {
                p.errors.push("`field` must not be empty".to_string());
            }
            let kind = match p.str("kind") {
                Some("scalar") => Some(Kind::Scalar),
                Some("waveform") => Some(Kind::Waveform),
                Some("image") => Some(Kind::Image),
                Some(other) => {
                    p.errors
                        .push(format!("`kind` must be \"scalar\", \"waveform\" or \"image\", got \"{other}\""));
                    None
                }
                None => None,
            };
            let (length, width, height) = (p.opt_uint("length"), p.opt_uint("width"), p.opt_uint("height"));
            match kind {
                Some(Kind::Scalar) => {
                    for key in ["length", "width", "height"] {
                        if p.has(key) {
                            p.errors.push(format!("`{key}` does not apply to a scalar"));
                        }
                    }
                }
                Some(Kind::Waveform) => {
                    for key in ["width", "height"] {
                        if p.has(key) {
                            p.errors.push(format!("`{key}` applies to images; a waveform has `length`"));
                        }
                    }
                }
                Some(Kind::Image) if p.has("length") => {
                    p.errors
                        .push("`length` applies to waveforms; an image has `width` and `height`".to_string());
                }
                Some(Kind::Image) | None => {}
            }
            let op = kind.zip(field).map(|(kind, field)| Op::Select {
                field: field.to_string(),
                kind,
                length,
                width,
                height,
            });
            p.finish(op)
        }
        "roi" => {
            let mut p = Params::new(op, params, &["start", "end", "x0", "y0", "x1", "y1"]);
            let one_d = p.has("start") || p.has("end");
            let two_d = ["x0", "y0", "x1", "y1"].iter().any(|k| p.has(k));
            let roi = match (one_d, two_d) {
                (true, true) => {
                    p.errors
                        .push("give either `start`/`end` (waveform) or `x0`/`y0`/`x1`/`y1` (image), not both".to_string());
                    None
                }
                (false, false) => {
                    p.errors
                        .push("missing parameters: `start` and `end` (waveform) or `x0`, `y0`, `x1`, `y1` (image)".to_string());
                    None
                }
                (true, false) => {
                    let (start, end) = (p.uint("start"), p.uint("end"));
                    start.zip(end).map(|(start, end)| {
                        if start >= end {
                            p.errors.push(format!("empty or inverted range: start {start} >= end {end}"));
                        }
                        Op::Roi {
                            image: false,
                            x0: start,
                            y0: 0,
                            x1: end,
                            y1: 1,
                        }
                    })
                }
                (false, true) => {
                    let (x0, y0, x1, y1) = (p.uint("x0"), p.uint("y0"), p.uint("x1"), p.uint("y1"));
                    if let (Some(x0), Some(x1)) = (x0, x1) {
                        if x0 >= x1 {
                            p.errors.push(format!("empty or inverted range: x0 {x0} >= x1 {x1}"));
                        }
                    }
                    if let (Some(y0), Some(y1)) = (y0, y1) {
                        if y0 >= y1 {
                            p.errors.push(format!("empty or inverted range: y0 {y0} >= y1 {y1}"));
                        }
                    }
                    match (x0, y0, x1, y1) {
                        (Some(x0), Some(y0), Some(x1), Some(y1)) => Some(Op::Roi {
                            image: true,
                            x0,
                            y0,
                            x1,
                            y1,
                        }),
                        _ => None,
                    }
                }
            };
            p.finish(roi)
        }
        "sum" | "mean" | "std" | "min" | "max" => {
            let p = Params::new(op, params, &[]);
            let reduce = match op {
                "sum" => Reduce::Sum,
                "mean" => Reduce::Mean,
                "std" => Reduce::Std,
                "min" => Reduce::Min,
                _ => Reduce::Max,
            };
            p.finish(Some(Op::Reduce(reduce)))
        }
        "projection" => {
            let mut p = Params::new(op, params, &["axis"]);
            let axis = match p.uint("axis") {
                Some(a @ (0 | 1)) => Some(a as u8),
                Some(a) => {
                    p.errors
                        .push(format!("`axis` must be 0 (sum over rows) or 1 (sum over columns), got {a}"));
                    None
                }
                None => None,
            };
            p.finish(axis.map(|axis| Op::Projection { axis }))
        }
        "histogram" | "binned_mean" => {
            let mut p = Params::new(op, params, &["bins", "low", "high"]);
            let binning = p.binning();
            let op = binning.map(|b| if op == "histogram" { Op::Histogram(b) } else { Op::BinnedMean(b) });
            p.finish(op)
        }
        "threshold" => {
            let mut p = Params::new(op, params, &["level"]);
            let level = p.f64("level");
            p.finish(level.map(|level| Op::Threshold { level }))
        }
        "filter" => {
            let mut p = Params::new(op, params, &["min", "max"]);
            let (min, max) = (p.opt_f64("min"), p.opt_f64("max"));
            if !p.has("min") && !p.has("max") {
                p.errors.push("missing parameter: `min`, `max` or both".to_string());
            }
            if let (Some(min), Some(max)) = (min, max) {
                if min > max {
                    p.errors.push(format!("empty range: min {min} > max {max}"));
                }
            }
            p.finish(Some(Op::Filter { min, max }))
        }
        "add" | "sub" | "mul" | "div" => {
            let mut p = Params::new(op, params, &["constant"]);
            let constant = p.opt_f64("constant");
            let arith = match op {
                "add" => Arith::Add,
                "sub" => Arith::Sub,
                "mul" => Arith::Mul,
                _ => Arith::Div,
            };
            p.finish(Some(Op::Arith { op: arith, constant }))
        }
        "peaks" => {
            let mut p = Params::new(op, params, &["threshold"]);
            let threshold = p.f64("threshold");
            p.finish(threshold.map(|threshold| Op::Peaks { threshold }))
        }
        "strip_chart" => Params::new(op, params, &[]).finish(Some(Op::StripChart)),
        other => Err(vec![format!("unknown op `{other}` (known ops: {})", list(OP_NAMES))]),
    }
}

fn shapes_differ(a: Option<usize>, b: Option<usize>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a != b)
}

/// The output type of `op` given its inputs `(id, type)`, or every type/shape problem.
pub(crate) fn infer(op: &Op, op_name: &str, inputs: &[(&str, Ty)]) -> Result<Ty, Vec<String>> {
    let input = |k: usize| inputs.get(k).map_or(Ty::Scalar, |i| i.1);
    let name = |k: usize| inputs.get(k).map_or("", |i| i.0);
    let wrong = |k: usize, wanted: &str| Err(vec![format!("`{op_name}` needs {wanted}, but input `{}` is {}", name(k), input(k))]);
    match *op {
        Op::Select {
            kind,
            length,
            width,
            height,
            ..
        } => Ok(match kind {
            Kind::Scalar => Ty::Scalar,
            Kind::Waveform => Ty::Waveform { len: length },
            Kind::Image => Ty::Image { width, height },
        }),
        Op::Roi { image: false, x0, x1, .. } => match input(0) {
            Ty::Waveform { len } => match len {
                Some(len) if x1 > len => Err(vec![format!(
                    "range {x0}..{x1} is out of bounds of input `{}` of length {len}",
                    name(0)
                )]),
                _ => Ok(Ty::Waveform { len: Some(x1 - x0) }),
            },
            Ty::Image { .. } => Err(vec![format!(
                "input `{}` is an image: its roi needs `x0`, `y0`, `x1`, `y1`, not `start`/`end`",
                name(0)
            )]),
            _ => wrong(0, "a waveform or an image"),
        },
        Op::Roi {
            image: true,
            x0,
            y0,
            x1,
            y1,
        } => match input(0) {
            Ty::Image { width, height } => {
                let mut errors = Vec::new();
                if let Some(w) = width.filter(|w| x1 > *w) {
                    errors.push(format!("x range {x0}..{x1} is out of bounds of input `{}` of width {w}", name(0)));
                }
                if let Some(h) = height.filter(|h| y1 > *h) {
                    errors.push(format!("y range {y0}..{y1} is out of bounds of input `{}` of height {h}", name(0)));
                }
                if errors.is_empty() {
                    Ok(Ty::Image {
                        width: Some(x1 - x0),
                        height: Some(y1 - y0),
                    })
                } else {
                    Err(errors)
                }
            }
            Ty::Waveform { .. } => Err(vec![format!(
                "input `{}` is a waveform: its roi needs `start` and `end`, not `x0`/`y0`/`x1`/`y1`",
                name(0)
            )]),
            _ => wrong(0, "a waveform or an image"),
        },
        Op::Reduce(_) | Op::Peaks { .. } => match input(0) {
            t if t.is_array() => Ok(Ty::Scalar),
            _ => wrong(0, "a waveform or an image"),
        },
        Op::Threshold { .. } => match input(0) {
            t if t.is_array() => Ok(t),
            _ => wrong(0, "a waveform or an image"),
        },
        Op::Projection { axis } => match input(0) {
            Ty::Image { width, height } => Ok(Ty::Waveform {
                len: if axis == 0 { width } else { height },
            }),
            _ => wrong(0, "an image"),
        },
        Op::Filter { .. } | Op::Histogram(_) | Op::StripChart => match input(0) {
            Ty::Scalar if matches!(op, Op::Filter { .. }) => Ok(Ty::Scalar),
            Ty::Scalar => Ok(Ty::Accumulated),
            _ => wrong(0, "a scalar"),
        },
        Op::BinnedMean(_) => {
            let errors: Vec<String> = (0..2)
                .filter(|&k| input(k) != Ty::Scalar)
                .map(|k| {
                    let role = if k == 0 { "value" } else { "scan" };
                    format!(
                        "`binned_mean` needs scalar inputs [value, scan], but {role} input `{}` is {}",
                        name(k),
                        input(k)
                    )
                })
                .collect();
            if errors.is_empty() {
                Ok(Ty::Accumulated)
            } else {
                Err(errors)
            }
        }
        Op::Arith { constant: Some(_), .. } => match input(0) {
            t @ (Ty::Scalar | Ty::Waveform { .. } | Ty::Image { .. }) => Ok(t),
            _ => wrong(0, "a scalar, a waveform or an image"),
        },
        Op::Arith { constant: None, .. } => match (input(0), input(1)) {
            (Ty::Scalar, Ty::Scalar) => Ok(Ty::Scalar),
            (t, Ty::Scalar) | (Ty::Scalar, t) if t.is_array() => Ok(t),
            (Ty::Waveform { len: a }, Ty::Waveform { len: b }) => {
                if shapes_differ(a, b) {
                    Err(vec![format!(
                        "shape mismatch: input `{}` is {}, input `{}` is {}",
                        name(0),
                        input(0),
                        name(1),
                        input(1)
                    )])
                } else {
                    Ok(Ty::Waveform { len: a.or(b) })
                }
            }
            (Ty::Image { width: wa, height: ha }, Ty::Image { width: wb, height: hb }) => {
                if shapes_differ(wa, wb) || shapes_differ(ha, hb) {
                    Err(vec![format!(
                        "shape mismatch: input `{}` is {}, input `{}` is {}",
                        name(0),
                        input(0),
                        name(1),
                        input(1)
                    )])
                } else {
                    Ok(Ty::Image {
                        width: wa.or(wb),
                        height: ha.or(hb),
                    })
                }
            }
            (a, b) => Err(vec![format!(
                "`{op_name}` cannot combine input `{}` ({a}) with input `{}` ({b}): use two scalars, two arrays of the same kind \
                 and shape, or an array and a scalar",
                name(0),
                name(1)
            )]),
        },
    }
}

/// One input of a node for one event: moved out of its slot when this node is its only consumer
/// (so arrays can be updated in place), otherwise borrowed from the slot.
pub(crate) enum Arg<'s, 'a> {
    Owned(Value<'a>),
    Ref(&'s Value<'a>),
}

impl<'a> Arg<'_, 'a> {
    fn value(&self) -> &Value<'a> {
        match self {
            Arg::Owned(v) => v,
            Arg::Ref(v) => v,
        }
    }
}

/// An array input, moved or borrowed.
enum ArrayArg<'s, 'a> {
    Owned(Array<'a>),
    Ref(&'s Array<'a>),
}

impl<'a> ArrayArg<'_, 'a> {
    fn get(&self) -> &Array<'a> {
        match self {
            ArrayArg::Owned(a) => a,
            ArrayArg::Ref(a) => a,
        }
    }
}

fn internal(what: &str) -> String {
    format!("internal error: {what} (the compiled graph does not match its checks)")
}

fn take_arg<'s, 'a>(args: &mut [Option<Arg<'s, 'a>>; 2], k: usize) -> Result<Arg<'s, 'a>, String> {
    args[k].take().ok_or_else(|| internal("missing input"))
}

fn scalar_arg(args: &mut [Option<Arg<'_, '_>>; 2], k: usize) -> Result<f64, String> {
    match take_arg(args, k)?.value() {
        Value::Scalar(x) => Ok(*x),
        v => Err(internal(&format!("expected a scalar input, got {}", v.kind()))),
    }
}

fn array_arg<'s, 'a>(args: &mut [Option<Arg<'s, 'a>>; 2], k: usize) -> Result<ArrayArg<'s, 'a>, String> {
    match take_arg(args, k)? {
        Arg::Owned(Value::Array(a)) => Ok(ArrayArg::Owned(a)),
        Arg::Ref(Value::Array(a)) => Ok(ArrayArg::Ref(a)),
        other => Err(internal(&format!("expected an array input, got {}", other.value().kind()))),
    }
}

/// `f` applied to every element, in place when the input is an owned buffer nobody else uses.
fn map_array<'a>(input: ArrayArg<'_, 'a>, f: impl Fn(f64) -> f64) -> Array<'a> {
    if let ArrayArg::Owned(mut a) = input {
        if let Some(data) = a.owned_mut() {
            data.iter_mut().for_each(|x| *x = f(*x));
            return a;
        }
        return map_new(&a, f);
    }
    map_new(input.get(), f)
}

fn map_new<'a>(a: &Array<'_>, f: impl Fn(f64) -> f64) -> Array<'a> {
    let out = match a.contiguous() {
        Some(all) => all.iter().map(|&x| f(x)).collect(),
        None => {
            let mut out = Vec::with_capacity(a.len());
            a.rows().for_each(|row| out.extend(row.iter().map(|&x| f(x))));
            out
        }
    };
    Array::owned(out, a.width(), a.height())
}

/// `f(l, r)` elementwise over two arrays of the same shape, reusing an owned input buffer if any.
fn zip_arrays<'a>(left: ArrayArg<'_, 'a>, right: ArrayArg<'_, 'a>, image: bool, f: impl Fn(f64, f64) -> f64) -> Result<Array<'a>, String> {
    let (ls, rs) = (left.get().shape(), right.get().shape());
    if ls != rs {
        return Err(format!(
            "input shapes differ: {} and {}",
            shape_text(image, ls),
            shape_text(image, rs)
        ));
    }
    let (width, height) = ls;
    match (left, right) {
        (ArrayArg::Owned(mut l), r) if l.is_owned_exact() => {
            if let Some(out) = l.owned_mut() {
                let r = r.get();
                for (y, row) in out.chunks_exact_mut(width.max(1)).take(height).enumerate() {
                    row.iter_mut().zip(r.row(y)).for_each(|(a, &b)| *a = f(*a, b));
                }
            }
            Ok(l)
        }
        (l, ArrayArg::Owned(mut r)) if r.is_owned_exact() => {
            if let Some(out) = r.owned_mut() {
                let l = l.get();
                for (y, row) in out.chunks_exact_mut(width.max(1)).take(height).enumerate() {
                    row.iter_mut().zip(l.row(y)).for_each(|(b, &a)| *b = f(a, *b));
                }
            }
            Ok(r)
        }
        (l, r) => {
            let (l, r) = (l.get(), r.get());
            let mut out = Vec::with_capacity(width * height);
            for y in 0..height {
                out.extend(l.row(y).iter().zip(r.row(y)).map(|(&a, &b)| f(a, b)));
            }
            Ok(Array::owned(out, width, height))
        }
    }
}

/// Binary arithmetic on any pair of values the type checks allow (scalars broadcast).
fn arith<'a>(l: Arg<'_, 'a>, r: Arg<'_, 'a>, image: bool, f: impl Fn(f64, f64) -> f64) -> Result<Value<'a>, String> {
    let scalar = |arg: &Arg<'_, 'a>| match arg.value() {
        Value::Scalar(x) => Some(*x),
        Value::Array(_) => None,
    };
    Ok(match (scalar(&l), scalar(&r)) {
        (Some(a), Some(b)) => Value::Scalar(f(a, b)),
        (None, Some(b)) => Value::Array(map_array(into_array(l)?, |a| f(a, b))),
        (Some(a), None) => Value::Array(map_array(into_array(r)?, |b| f(a, b))),
        (None, None) => Value::Array(zip_arrays(into_array(l)?, into_array(r)?, image, f)?),
    })
}

fn into_array<'s, 'a>(arg: Arg<'s, 'a>) -> Result<ArrayArg<'s, 'a>, String> {
    let mut args = [Some(arg), None];
    array_arg(&mut args, 0)
}

/// Number of peaks strictly above `threshold` (see the module docs for the definition). A
/// waveform is an image of height 1: its pixels have no up and down neighbours.
fn count_peaks(a: &Array<'_>, threshold: f64) -> usize {
    let (width, height) = a.shape();
    let mut count = 0;
    for y in 0..height {
        let row = a.row(y);
        let up = (y > 0).then(|| a.row(y - 1));
        let down = (y + 1 < height).then(|| a.row(y + 1));
        for (x, &v) in row.iter().enumerate() {
            if v > threshold
                && (x == 0 || v > row[x - 1])
                && (x + 1 == width || v > row[x + 1])
                && up.is_none_or(|r| v > r[x])
                && down.is_none_or(|r| v > r[x])
            {
                count += 1;
            }
        }
    }
    count
}

/// Σ f(x) over `xs`, in independent lanes: the additions pipeline (and vectorize) instead of
/// waiting on each other.
fn sum_lanes(xs: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    // 16 independent sums: enough to keep the adders busy (8 two-lane vectors on any x86-64,
    // 4 four-lane ones with AVX) instead of waiting on one chain of dependent additions.
    const LANES: usize = 16;
    let mut lanes = [0.0; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f64 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &x)| *l += f(x));
    }
    // Pairwise, so that the result does not depend on more than the lane layout.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0] + rest
}

/// Σ f(x) over an array, row by row (or in one go when contiguous).
fn total(a: &Array<'_>, f: impl Fn(f64) -> f64 + Copy) -> f64 {
    match a.contiguous() {
        Some(all) => sum_lanes(all, f),
        None => a.rows().map(|row| sum_lanes(row, f)).sum(),
    }
}

fn reduce(a: &Array<'_>, how: Reduce) -> Result<f64, String> {
    let n = a.len();
    if n == 0 && how != Reduce::Sum {
        let name = match how {
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
            Reduce::Std => "std",
            Reduce::Min => "min",
            Reduce::Max => "max",
        };
        return Err(format!("`{name}` of an empty array is undefined"));
    }
    Ok(match how {
        Reduce::Sum => total(a, |x| x),
        Reduce::Mean => total(a, |x| x) / n as f64,
        Reduce::Std => {
            // Two passes: exact enough for the large offsets detector data often has.
            let mean = total(a, |x| x) / n as f64;
            (total(a, |x| (x - mean) * (x - mean)) / n as f64).sqrt()
        }
        // `f64::min`/`max` skip NaN, so NaN elements are ignored unless all are NaN.
        Reduce::Min => {
            let mut m = f64::NAN;
            a.for_each(|x| m = m.min(x));
            m
        }
        Reduce::Max => {
            let mut m = f64::NAN;
            a.for_each(|x| m = m.max(x));
            m
        }
    })
}

fn select<'a, E: Event + ?Sized>(frame: &'a E, index: usize, op: &Op) -> Result<Value<'a>, String> {
    let Op::Select {
        field,
        kind,
        length,
        width,
        height,
    } = op
    else {
        return Err(internal("select"));
    };
    let Some(value) = frame.field(index) else {
        return Err(format!("the event has no field `{field}`"));
    };
    let wanted = match kind {
        Kind::Scalar => "a scalar",
        Kind::Waveform => "a waveform",
        Kind::Image => "an image",
    };
    let wrong = |got: &str| Err(format!("field `{field}` is {got}, but the graph selects it as {wanted}"));
    match (kind, value) {
        (Kind::Scalar, FieldRef::Scalar(x)) => Ok(Value::Scalar(x)),
        (Kind::Waveform, FieldRef::Waveform(v)) => {
            if let Some(len) = length.filter(|len| *len != v.len()) {
                return Err(format!(
                    "field `{field}` has length {}, but the graph declares length {len}",
                    v.len()
                ));
            }
            let len = v.len();
            Array::new(v, len, 1).map(Value::Array).ok_or_else(|| internal("waveform view"))
        }
        (
            Kind::Image,
            FieldRef::Image {
                width: w,
                height: h,
                pixels,
            },
        ) => {
            let (w, h) = (w as usize, h as usize);
            if width.is_some_and(|d| d != w) || height.is_some_and(|d| d != h) {
                let dim = |d: &Option<usize>| d.map_or_else(|| "?".to_string(), |d| d.to_string());
                return Err(format!(
                    "field `{field}` is a {w}x{h} image, but the graph declares {}x{} (width x height)",
                    dim(width),
                    dim(height)
                ));
            }
            let n = pixels.len();
            Array::new(pixels, w, h)
                .map(Value::Array)
                .ok_or_else(|| format!("field `{field}` is a malformed {w}x{h} image with {n} pixels"))
        }
        (_, FieldRef::Scalar(_)) => wrong("a scalar"),
        (_, FieldRef::Waveform(_)) => wrong("a waveform"),
        (_, FieldRef::Image { .. }) => wrong("an image"),
    }
}

/// Evaluates `op` for one event. `field` is the index of a `select`'s field in `frame.fields`
/// (`usize::MAX` when absent). `Ok(None)` means the event was filtered out.
pub(crate) fn eval<'a, E: Event + ?Sized>(
    op: &Op,
    image: bool,
    frame: &'a E,
    field: usize,
    mut args: [Option<Arg<'_, 'a>>; 2],
) -> Result<Option<Value<'a>>, String> {
    Ok(Some(match *op {
        Op::Select { .. } => select(frame, field, op)?,
        Op::Roi { x0, y0, x1, y1, .. } => {
            let input = array_arg(&mut args, 0)?;
            let a = input.get();
            if !a.window_fits(x0, y0, x1, y1) {
                return Err(if image {
                    format!(
                        "roi x {x0}..{x1}, y {y0}..{y1} is out of bounds of a {} image",
                        shape_text(true, a.shape())
                    )
                } else {
                    format!("roi {x0}..{x1} is out of bounds of a waveform of length {}", a.width())
                });
            }
            Value::Array(match input {
                ArrayArg::Owned(a) => a.into_window(x0, y0, x1, y1),
                ArrayArg::Ref(a) => a.window(x0, y0, x1, y1),
            })
        }
        Op::Reduce(how) => Value::Scalar(reduce(array_arg(&mut args, 0)?.get(), how)?),
        Op::Projection { axis } => {
            let input = array_arg(&mut args, 0)?;
            let a = input.get();
            Value::Array(if axis == 0 {
                let mut out = vec![0.0; a.width()];
                a.rows().for_each(|row| out.iter_mut().zip(row).for_each(|(o, x)| *o += x));
                Array::owned(out, a.width(), 1)
            } else {
                let out: Vec<f64> = a.rows().map(|row| row.iter().sum()).collect();
                Array::owned(out, a.height(), 1)
            })
        }
        Op::Threshold { level } => Value::Array(map_array(array_arg(&mut args, 0)?, |x| if x < level { 0.0 } else { x })),
        Op::Filter { min, max } => {
            let x = scalar_arg(&mut args, 0)?;
            // NaN fails both comparisons, so it is filtered out.
            let keep = min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m) && !x.is_nan();
            if !keep {
                return Ok(None);
            }
            Value::Scalar(x)
        }
        Op::Arith { op, constant } => {
            let l = take_arg(&mut args, 0)?;
            let r = match constant {
                Some(c) => Arg::Owned(Value::Scalar(c)),
                None => take_arg(&mut args, 1)?,
            };
            match op {
                Arith::Add => arith(l, r, image, |a, b| a + b)?,
                Arith::Sub => arith(l, r, image, |a, b| a - b)?,
                Arith::Mul => arith(l, r, image, |a, b| a * b)?,
                Arith::Div => arith(l, r, image, |a, b| a / b)?,
            }
        }
        Op::Peaks { threshold } => Value::Scalar(count_peaks(array_arg(&mut args, 0)?.get(), threshold) as f64),
        Op::Histogram(_) | Op::BinnedMean(_) | Op::StripChart => return Err(internal("an accumulating op is evaluated")),
    }))
}
