//! The computation graph: JSON format, validation, compiled per-event evaluation and mergeable
//! per-bin partial results.
//!
//! Clients describe the analysis as a graph of nodes. Workers evaluate the graph on every event
//! ([`Frame`](crate::event::Frame)) and accumulate, for each result, a partial over the events of
//! a time bin ([`Partials`]); partials from many workers and nodes are merged (the merge is
//! commutative and associative) and finalized into JSON for the clients.
//!
//! ```text
//! GraphSpec ──compile──▶ CompiledGraph ──process(frame)──▶ Partials ──merge──▶ Partials ──finalize──▶ JSON per result
//! ```
//!
//! # Format
//!
//! A graph ([`GraphSpec`]) is a JSON object with `nodes` (in any order) and `results`, the ids of
//! the nodes whose values are published (at least 1, at most 64: the Results store is sized for 64
//! results per retained bin, and a graph that publishes more is refused). Each node ([`NodeSpec`]) has a unique non-empty `id`, an
//! `op`, the ids of its `inputs` (in the op's order; may be omitted when empty) and the op's
//! `params` (a JSON object; may be omitted or `null` when the op takes none). Unknown parameter
//! names are errors (so that typos are caught). Integer parameters also accept integral floats
//! (`32.0`).
//!
//! ```json
//! {
//!   "nodes": [
//!     {"id": "img", "op": "select", "params": {"field": "cspad", "kind": "image", "width": 128, "height": 128}},
//!     {"id": "roi", "op": "roi", "inputs": ["img"], "params": {"x0": 32, "y0": 32, "x1": 96, "y1": 96}},
//!     {"id": "roi_mean", "op": "mean", "inputs": ["roi"]},
//!     {"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
//!     {"id": "bright", "op": "filter", "inputs": ["roi_mean"], "params": {"min": 10.0}},
//!     {"id": "energy_hist", "op": "histogram", "inputs": ["energy"], "params": {"bins": 50, "low": 0, "high": 10}},
//!     {"id": "roi_chart", "op": "strip_chart", "inputs": ["bright"]}
//!   ],
//!   "results": ["roi_mean", "energy_hist", "roi_chart"]
//! }
//! ```
//!
//! # Values
//!
//! Every node (except accumulating ops) has a value per event, of one of three types known at
//! compile time: a **scalar**, a **waveform** (1-D array) or an **image** (2-D array, row-major,
//! `width` columns by `height` rows). "Array" below means a waveform or an image. Shapes are known
//! at compile time when `select` declares them and propagate through the ops; known shapes are
//! checked at compile time, unknown ones at run time.
//!
//! Arithmetic follows IEEE 754: division by zero gives ±infinity (or NaN for `0/0`), and NaN and
//! infinities propagate. They are valid values; in finalized JSON a non-finite number is `null`.
//!
//! # Ops
//!
//! | op | inputs | params | output |
//! |---|---|---|---|
//! | `select` | none | `field`, `kind`, optional shape | the field's value |
//! | `roi` | array | `start`,`end` or `x0`,`y0`,`x1`,`y1` | array |
//! | `sum` `mean` `std` `min` `max` | array | none | scalar |
//! | `projection` | image | `axis` | waveform |
//! | `threshold` | array | `level` | array of the same shape |
//! | `filter` | scalar | `min` and/or `max` | scalar, or no value |
//! | `add` `sub` `mul` `div` | 2 values, or 1 value + `constant` | optional `constant` | scalar or array |
//! | `peaks` | array | `threshold` | scalar |
//! | `histogram` | scalar | `bins`, `low`, `high` | accumulated (result only) |
//! | `binned_mean` | scalar value, scalar scan | `bins`, `low`, `high` | accumulated (result only) |
//! | `strip_chart` | scalar | none | accumulated (result only) |
//!
//! - **`select`** — `{"field": name, "kind": "scalar" | "waveform" | "image"}`, no inputs: the
//!   event's field `name`. `kind` is required so that types are known at compile time. Optional
//!   `"length"` (waveform) or `"width"`, `"height"` (image) declare the shape, enabling compile-time
//!   shape checks downstream. At run time, a missing field, a field of another kind, a field whose
//!   shape differs from the declared one, or an image whose pixel count is not `width * height` is
//!   an error. Arrays are not copied: the value borrows from the frame.
//! - **`roi`** — region of interest, half-open ranges. On a waveform `{"start": a, "end": b}` gives
//!   the waveform `v[a..b]` (length `b - a`); on an image `{"x0", "y0", "x1", "y1"}` gives the image
//!   of columns `x0..x1` and rows `y0..y1` (width `x1 - x0`, height `y1 - y0`). Empty or inverted
//!   ranges are compile errors, as are out-of-bounds ranges when the input shape is known (else
//!   they are run-time errors).
//! - **`sum`, `mean`, `std`, `min`, `max`** — reduce all elements of an array to a scalar. `std` is
//!   the population standard deviation (divides by `n`). `min`/`max` ignore NaN elements (unless
//!   all are NaN); `sum`, `mean` and `std` propagate them. The sum of an empty array is 0; the
//!   others are run-time errors on an empty array.
//! - **`projection`** — `{"axis": 0 | 1}`: sums an image along one axis into a waveform. Axis 0
//!   sums over rows, giving one value per column (length `width`: `out[x] = Σ_y img[y][x]`);
//!   axis 1 sums over columns, giving one value per row (length `height`: `out[y] = Σ_x img[y][x]`).
//! - **`threshold`** — `{"level": x}`: the array with every element below `x` set to 0 (elements
//!   equal to `x` are kept; NaN elements are kept).
//! - **`filter`** — `{"min": a, "max": b}` (either may be omitted, not both; `a <= b`): passes the
//!   scalar through when `a <= value <= b` (both bounds inclusive). Otherwise (and for NaN) the
//!   event has **no value** at this node: every node depending on it skips the event, and results
//!   depending on it do not count it. This is how events are filtered.
//! - **`add`, `sub`, `mul`, `div`** — elementwise arithmetic, `inputs[0] ⊕ inputs[1]`, or, with one
//!   input and `{"constant": c}`, `input ⊕ c`. Allowed pairs: scalar ⊕ scalar → scalar; array ⊕
//!   array of the same kind and shape → array; array ⊕ scalar and scalar ⊕ array → array (the
//!   scalar is broadcast, and order matters for `sub` and `div`: scalar `sub` array gives
//!   `s - a[i]`). IEEE semantics (see above), so division by zero is not an error.
//! - **`peaks`** — `{"threshold": t}`: the number of local maxima strictly above `t`, as a scalar.
//!   A waveform element is a peak when it is greater than `t` and strictly greater than both its
//!   neighbours; an image pixel when it is greater than `t` and strictly greater than its 4
//!   neighbours (left, right, up, down). At the edges only the existing neighbours are compared
//!   (a single-element array above `t` has one peak). Plateaus (equal neighbours) are not peaks.
//! - **`histogram`** — `{"bins": n, "low": a, "high": b}` (`1 <= n <=` [`MAX_BINS`], `a < b`):
//!   accumulates a scalar into `n` equal bins over `[a, b)`. Values below `a` count as underflow,
//!   values at or above `b` (and NaN) as overflow.
//! - **`binned_mean`** — inputs `[value, scan]`, `{"bins": n, "low": a, "high": b}`: the mean of
//!   `value` in each of `n` equal bins of `scan` over `[a, b)`. Events whose scan value is out of
//!   range or NaN are not counted.
//! - **`strip_chart`** — the mean of a scalar over the events of the time bin; clients draw the
//!   successive time bins as a strip chart.
//!
//! Accumulating ops (`histogram`, `binned_mean`, `strip_chart`) have no per-event value: they can
//! only be results, never inputs. An accumulating node that is not a result is accepted and
//! ignored; so are other nodes no result depends on (they are checked but never evaluated).
//!
//! # Results
//!
//! Each result accumulates over the events of a time bin (events that a `filter` removed for it
//! excluded). Merging adds the partials of two sets of events; finalizing gives its JSON value:
//!
//! | result node | partial, merge | finalized JSON |
//! |---|---|---|
//! | `histogram` | counts per bin, underflow, overflow; added | `{"low", "high", "counts": [n per bin], "underflow", "overflow", "count"}` (`count` = all values seen) |
//! | `binned_mean` | count and sum per bin; added | `{"low", "high", "mean": [per bin, null if empty], "counts": [...]}` |
//! | `strip_chart` | count, sum; added | `{"mean", "count"}` |
//! | any scalar node | count, sum, mean, M2, min, max; Chan et al. pairwise merge | `{"count", "sum", "mean", "std", "min", "max"}` |
//! | any waveform node | count, elementwise sum; added | `{"count", "mean": [elementwise mean]}` |
//! | any image node | count, elementwise sum; added | `{"count", "mean": [row-major], "width", "height"}` |
//!
//! Scalar aggregates use Welford's update per event and Chan, Golub and LeVeque's pairwise
//! combination on merge; `std` is the population standard deviation, `min`/`max` ignore NaN. An
//! array result whose shape changes within a bin is an error (at `process`, or at `merge` for
//! partials from different workers). An empty bin finalizes with `"count": 0` and `null` for
//! every mean, std, min and max (a scalar's `sum` is `0`, histogram counts are zeros); finalized
//! JSON never holds NaN: non-finite numbers become `null`.
//!
//! # Validation
//!
//! [`compile`] reports every problem it finds, each as a [`GraphError`] naming the node: unknown
//! op; empty or duplicate id; input that is not a node; wrong number of inputs; cycle; type
//! mismatch (`sum` of a scalar, `projection` of a waveform, `histogram` of an image, ...); shape
//! mismatch when shapes are known; missing, unknown or invalid parameters (wrong JSON type,
//! `bins` = 0, `low >= high`, empty ranges, ...); accumulating op used as an input; results that
//! are empty, name unknown nodes, or list a node twice. Problems in a node's params or inputs
//! suppress the type checks of the nodes downstream of it, to avoid cascades of errors.
//!
//! **Size.** A graph is at most [`MAX_GRAPH_BYTES`] = 131,072 bytes of compact JSON, counted as the
//! service stores and sends it (every node with its `id`, `op`, `inputs` and `params`, `"inputs":[]`
//! and `"params":null` included): about 1,000 nodes of 130 bytes. [`check_size`] checks it (not
//! [`compile`]) wherever a graph is accepted: the graph manager's edits and submits (a reason
//! `invalid_graph` without a node), `install_graph` and `ami2 run --graph FILE` (a refused argument).
//! The bound keeps every answer carrying a graph within one protocol frame (1 MiB) with room to
//! spare, and the versions the service keeps within Control's `/control/` segment, which is sized
//! for them ([`crate::stores::control_segment_bytes`]). An edit that makes a graph smaller is
//! accepted as soon as the result fits.
//!
//! # Evaluation
//!
//! A compiled graph is a vector of the nodes the results need, in topological order, with inputs
//! as slot indices: no string lookups per event except `select`'s field (checked first at the
//! position it had in the previous frame). Per-event values live in a slot array (on the stack
//! for graphs of up to 32 evaluated nodes), so scalar-only graphs evaluate without allocating;
//! array values borrow from the frame when possible (`select`, `roi` of a borrowed array) and are
//! updated in place when their only consumer is an elementwise op. `process` either adds a whole
//! event to the partials or, on error, leaves them unchanged.
//!
//! # The built-in graph
//!
//! When no graph is given and none is installed, the service installs the demo graph fitted to
//! the source's first frame ([`default_graph_for`]; a synthetic source's frame 0, a recording's
//! first frame, the first frame a shared-memory ring offers within a second): a strip chart of the
//! mean of the image's middle half (x and y from a quarter to three quarters of its size) and its
//! column profile, for the field `cspad` or else the first image; the mean waveform and its peak
//! count above 0.5, for `trace` or else the first waveform; a histogram of `energy` over [0, 10)
//! and its mean in 20 bins of `scan` over [0, 1), when the frames have these scalars; with none of
//! these, a strip chart of the first scalar. Results are named after the fields (`cspad_roi_chart`,
//! `trace_peaks`, ...). So `ami2 run --image-size 512` analyses 512×512 images out of the box. For
//! the synthetic source's default fields this is [`default_graph`]. When no frame can be seen (a ring
//! whose producer has not written within the second), the default fields' graph is installed and a
//! warning says so; a graph that fails on the frames is reverted and reported as any other. The
//! service marks the version it installed itself (`/control/graph/builtin` in Control): a restart
//! without `--graph` fits it again when the frames have changed (as a new version), and keeps it
//! when it sees no frame; a graph a client sent, or `--graph`, stays across restarts.

mod accum;
mod compiled;
mod ops;
mod spec;
mod value;

#[cfg(test)]
mod tests;

pub use accum::Partials;

/// Most results a graph may publish: the Results store is sized for this many per bin.
pub const MAX_RESULTS: usize = 64;

/// Most bytes of a graph's compact JSON ([`json_bytes`], [`check_size`]).
pub use protocol1::MAX_GRAPH_BYTES;

/// Bytes of `spec`'s compact JSON: what Control stores and clients receive.
pub fn json_bytes(spec: &GraphSpec) -> usize {
    serde_json::to_vec(spec).map_or(usize::MAX, |text| text.len())
}

/// Checks the bound on a graph's size ([`MAX_GRAPH_BYTES`], module docs): an error without a node
/// when `spec` is larger.
pub fn check_size(spec: &GraphSpec) -> Result<(), GraphError> {
    match protocol1::graph_too_large(json_bytes(spec)) {
        Some(why) => Err(GraphError::graph(why)),
        None => Ok(()),
    }
}
pub use compiled::{compile, CompiledGraph};
pub use ops::MAX_BINS;
pub use spec::{default_graph, default_graph_for, EvalError, GraphError, GraphSpec, NodeSpec};
pub use value::ROWS_AHEAD;
