//! The graph document clients send ([`GraphSpec`]), the errors of the module, and the demo graph.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::json;

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
    NodeSpec {
        id: id.to_string(),
        op: op.to_string(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        params,
    }
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
    GraphSpec {
        nodes: vec![
            node(
                "cspad",
                "select",
                &[],
                json!({"field": "cspad", "kind": "image", "width": 128, "height": 128}),
            ),
            node("cspad_roi", "roi", &["cspad"], json!({"x0": 32, "y0": 32, "x1": 96, "y1": 96})),
            node("cspad_roi_mean", "mean", &["cspad_roi"], serde_json::Value::Null),
            node("cspad_roi_chart", "strip_chart", &["cspad_roi_mean"], serde_json::Value::Null),
            node("cspad_columns", "projection", &["cspad"], json!({"axis": 0})),
            node("energy", "select", &[], json!({"field": "energy", "kind": "scalar"})),
            node(
                "energy_hist",
                "histogram",
                &["energy"],
                json!({"bins": 50, "low": 0.0, "high": 10.0}),
            ),
            node("scan", "select", &[], json!({"field": "scan", "kind": "scalar"})),
            node(
                "energy_vs_scan",
                "binned_mean",
                &["energy", "scan"],
                json!({"bins": 20, "low": 0.0, "high": 1.0}),
            ),
            node("trace", "select", &[], json!({"field": "trace", "kind": "waveform", "length": 256})),
            node("trace_peaks", "peaks", &["trace"], json!({"threshold": 0.5})),
        ],
        results: [
            "cspad_roi_chart",
            "energy_hist",
            "trace",
            "cspad_columns",
            "energy_vs_scan",
            "trace_peaks",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    }
}
