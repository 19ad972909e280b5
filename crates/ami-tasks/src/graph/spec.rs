//! The graph document clients send ([`GraphSpec`]), the errors of the module, and the demo graph.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::value::Ty;
use crate::event::{FieldValue, Frame};

/// A computation graph as clients send it: its nodes, in any order, and the ids of the nodes whose
/// values are published as results. See the [module documentation](super) for the format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    pub nodes: Vec<NodeSpec>,
    pub results: Vec<String>,
}

/// One node: a unique id, an op, the ids of its inputs (in the op's order) and the op's
/// parameters (a JSON object; absent or `null` when the op takes none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: String,
    pub op: String,
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub params: serde_json::Value,
}

impl NodeSpec {
    /// A node with `inputs` (node ids) and `params` (`Value::Null` when the op takes none).
    pub fn new(id: &str, op: &str, inputs: &[&str], params: serde_json::Value) -> Self {
        Self {
            id: id.to_string(),
            op: op.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            params,
        }
    }
}

/// A problem found by [`compile`](super::compile): the node it concerns (if any) and what is wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphError {
    pub node: Option<String>,
    pub message: String,
}

impl GraphError {
    pub(crate) fn node(node: &str, message: impl Into<String>) -> Self {
        GraphError {
            node: Some(node.to_string()),
            message: message.into(),
        }
    }

    pub(crate) fn graph(message: impl Into<String>) -> Self {
        GraphError {
            node: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "node `{node}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for GraphError {}

/// A failure while evaluating an event or merging partials: the node or result it concerns
/// (empty when it concerns the whole graph) and what is wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalError {
    pub node: String,
    pub message: String,
}

impl EvalError {
    pub(crate) fn new(node: &str, message: impl Into<String>) -> Self {
        EvalError {
            node: node.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "node `{}`: {}", self.node, self.message)
        }
    }
}

impl std::error::Error for EvalError {}

fn node(id: &str, op: &str, inputs: &[&str], params: serde_json::Value) -> NodeSpec {
    NodeSpec::new(id, op, inputs, params)
}

/// The demo graph over the synthetic source's default fields (scalars `energy` and `scan`,
/// waveform `trace` of length 256, image `cspad` of 128x128). Results:
///
/// - `cspad_roi_chart` (strip_chart): mean of the `cspad` region x 32..96, y 32..96 per time bin;
/// - `energy_hist` (histogram): `energy` in 50 bins over [0, 10);
/// - `trace` (waveform aggregate): the mean `trace` waveform of the bin;
/// - `cspad_columns` (waveform aggregate): the mean column profile of `cspad` (projection, axis 0);
/// - `energy_vs_scan` (binned_mean): mean `energy` in 20 bins of `scan` over [0, 1);
/// - `trace_peaks` (scalar aggregate): statistics of the number of `trace` peaks above 0.5.
pub fn default_graph() -> GraphSpec {
    let fields = [
        ("energy", Ty::Scalar),
        ("scan", Ty::Scalar),
        ("trace", Ty::Waveform { len: Some(256) }),
        (
            "cspad",
            Ty::Image {
                width: Some(128),
                height: Some(128),
            },
        ),
    ];
    demo_graph_over(&fields).expect("the default fields give a graph")
}

/// The demo graph fitted to the fields of `frame` (a source's first frame): the same analyses as
/// [`default_graph`], over the shapes the frames really have, and only over the fields they have.
///
/// - The image (the field `cspad`, or else the first image): the mean of its middle half (x and y
///   from a quarter to three quarters of the size) as a strip chart, `<image>_roi_chart`, and the
///   column profile, `<image>_columns`.
/// - The waveform (`trace`, or else the first one): its mean, `<waveform>`, and its peaks above 0.5,
///   `<waveform>_peaks`.
/// - The scalar `energy`: `energy_hist`, and `energy_vs_scan` when `scan` is a scalar too.
/// - With none of these, the first scalar's strip chart, `<scalar>_chart`.
///
/// `None` when the frame has no field the graph can use, or when its field names make node ids
/// collide.
pub fn default_graph_for(frame: &Frame) -> Option<GraphSpec> {
    let fields: Vec<(&str, Ty)> = frame
        .fields
        .iter()
        .map(|(name, value)| {
            let ty = match value {
                FieldValue::Scalar(_) => Ty::Scalar,
                FieldValue::Waveform(samples) => Ty::Waveform { len: Some(samples.len()) },
                FieldValue::Image { width, height, .. } => Ty::Image {
                    width: Some(*width as usize),
                    height: Some(*height as usize),
                },
            };
            (name.as_str(), ty)
        })
        .collect();
    demo_graph_over(&fields)
}

/// The demo graph's nodes for `fields` (see [`default_graph_for`]), results in a fixed order.
fn demo_graph_over(fields: &[(&str, Ty)]) -> Option<GraphSpec> {
    let preferred = |name: &str, is_kind: fn(&Ty) -> bool| {
        let of_kind = |(_, ty): &&(&str, Ty)| is_kind(ty);
        fields
            .iter()
            .filter(of_kind)
            .find(|(n, _)| *n == name)
            .or_else(|| fields.iter().find(of_kind))
            .copied()
    };
    let is_scalar = |name: &str| fields.iter().any(|(n, ty)| *n == name && *ty == Ty::Scalar);
    let mut nodes = Vec::new();
    // Results by kind, so that their order is the default graph's whatever the fields' order.
    let (mut chart, mut histogram, mut mean_waveform, mut profile, mut binned, mut peak_count) = (None, None, None, None, None, None);
    if let Some((
        image,
        Ty::Image {
            width: Some(w),
            height: Some(h),
        },
    )) = preferred("cspad", |ty| matches!(ty, Ty::Image { .. }))
    {
        let (roi, mean, chart_id, columns) = (
            format!("{image}_roi"),
            format!("{image}_roi_mean"),
            format!("{image}_roi_chart"),
            format!("{image}_columns"),
        );
        nodes.push(node(
            image,
            "select",
            &[],
            json!({"field": image, "kind": "image", "width": w, "height": h}),
        ));
        nodes.push(node(
            &roi,
            "roi",
            &[image],
            json!({"x0": w / 4, "y0": h / 4, "x1": w - w / 4, "y1": h - h / 4}),
        ));
        nodes.push(node(&mean, "mean", &[&roi], serde_json::Value::Null));
        nodes.push(node(&chart_id, "strip_chart", &[&mean], serde_json::Value::Null));
        nodes.push(node(&columns, "projection", &[image], json!({"axis": 0})));
        chart = Some(chart_id);
        profile = Some(columns);
    }
    if is_scalar("energy") {
        nodes.push(node("energy", "select", &[], json!({"field": "energy", "kind": "scalar"})));
        nodes.push(node(
            "energy_hist",
            "histogram",
            &["energy"],
            json!({"bins": 50, "low": 0.0, "high": 10.0}),
        ));
        histogram = Some("energy_hist".to_string());
        if is_scalar("scan") {
            nodes.push(node("scan", "select", &[], json!({"field": "scan", "kind": "scalar"})));
            nodes.push(node(
                "energy_vs_scan",
                "binned_mean",
                &["energy", "scan"],
                json!({"bins": 20, "low": 0.0, "high": 1.0}),
            ));
            binned = Some("energy_vs_scan".to_string());
        }
    }
    if let Some((waveform, Ty::Waveform { len: Some(len) })) = preferred("trace", |ty| matches!(ty, Ty::Waveform { .. })) {
        let peaks = format!("{waveform}_peaks");
        nodes.push(node(
            waveform,
            "select",
            &[],
            json!({"field": waveform, "kind": "waveform", "length": len}),
        ));
        nodes.push(node(&peaks, "peaks", &[waveform], json!({"threshold": 0.5})));
        mean_waveform = Some(waveform.to_string());
        peak_count = Some(peaks);
    }
    if nodes.is_empty() {
        let (scalar, _) = fields.iter().find(|(_, ty)| *ty == Ty::Scalar)?;
        let chart_id = format!("{scalar}_chart");
        nodes.push(node(scalar, "select", &[], json!({"field": scalar, "kind": "scalar"})));
        nodes.push(node(&chart_id, "strip_chart", &[scalar], serde_json::Value::Null));
        chart = Some(chart_id);
    }
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return None;
    }
    let results = [chart, histogram, mean_waveform, profile, binned, peak_count]
        .into_iter()
        .flatten()
        .collect();
    Some(GraphSpec { nodes, results })
}
