//! Protocol 1: graph edits and desired results ([`Request`]), answered with [`Accepted`] (the
//! new graph version) or [`Rejected`] (the reasons).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{truncate, ErrorCode};

/// A graph node, in the same JSON shape as a node of the graph format (docs/graph.md):
/// `{"id", "op", "inputs", "params"}`; `inputs` may be omitted when empty and `params` omitted or
/// `null` when the op takes none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    /// The node's unique, non-empty id.
    pub id: String,
    /// The operation (`select`, `roi`, `mean`, ...).
    pub op: String,
    /// The ids of the input nodes, in the op's order.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The op's parameters: a JSON object, or `null`.
    #[serde(default)]
    pub params: Value,
}

impl NodeDoc {
    /// A node with these inputs and parameters (`Value::Null` when the op takes none).
    pub fn new(id: &str, op: &str, inputs: &[&str], params: Value) -> Self {
        NodeDoc {
            id: id.to_string(),
            op: op.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            params,
        }
    }
}

/// The largest graph the ami2 service accepts: at most this many bytes of compact JSON
/// (`{"nodes":[...],"results":[...]}`, every node with its `id`, `op`, `inputs` and `params`, as
/// [`graph_json_bytes`] counts them), about 1,000 nodes of 130 bytes. An eighth of the frame cap
/// ([`MAX_FRAME_BYTES`](crate::MAX_FRAME_BYTES)): every answer carrying a graph (`graph`, the
/// `value` of a graph key) fits a frame with room to spare, and so does a request replacing such a
/// graph by another. The service sizes its Control store for the versions it keeps at this size.
pub const MAX_GRAPH_BYTES: usize = 128 * 1024;

// A graph answer (a graph and a few dozen bytes) must always fit a frame.
const _: () = assert!(MAX_GRAPH_BYTES * 8 <= crate::framing::MAX_FRAME_BYTES);

/// Bytes of the compact JSON of the graph `{"nodes": nodes, "results": results}`: the form the
/// service stores and sends (a node's `inputs` and `params` written even when empty or `null`).
pub fn graph_json_bytes(nodes: &[NodeDoc], results: &[String]) -> usize {
    #[derive(Serialize)]
    struct Graph<'a> {
        nodes: &'a [NodeDoc],
        results: &'a [String],
    }
    /// Counts what is written instead of keeping it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, &Graph { nodes, results }).expect("a graph serializes");
    count.0
}

/// Why a graph of `bytes` bytes of JSON ([`graph_json_bytes`]) is refused, `None` when it is
/// within [`MAX_GRAPH_BYTES`]: the message of the service's `invalid_graph` reason.
pub fn graph_too_large(bytes: usize) -> Option<String> {
    (bytes > MAX_GRAPH_BYTES).then(|| {
        format!(
            "the graph is too large: {bytes} bytes of JSON, at most {MAX_GRAPH_BYTES} (about 1,000 nodes); \
             split the analysis or remove nodes no result uses"
        )
    })
}

/// One modification of the graph. Edits of a request are applied in order to a copy of the
/// current graph; the request is accepted only if every edit applies and the result validates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Adds a node; its id must not exist (`duplicate_node`).
    AddNode {
        /// The new node.
        node: NodeDoc,
    },
    /// Removes a node; it must exist (`unknown_node`). Nodes or results still referring to it
    /// make the resulting graph invalid (`invalid_graph`).
    RemoveNode {
        /// The node's id.
        id: String,
    },
    /// Replaces a node (op, inputs and params) by one with the same id, which must exist.
    ReplaceNode {
        /// The new definition.
        node: NodeDoc,
    },
    /// Replaces the parameters of an existing node.
    SetParams {
        /// The node's id.
        id: String,
        /// The new parameters (an object, or `null`).
        params: Value,
    },
    /// Replaces the inputs of an existing node.
    ConnectInputs {
        /// The node's id.
        id: String,
        /// The new input node ids, in the op's order.
        inputs: Vec<String>,
    },
}

impl Edit {
    /// The id of the node the edit concerns.
    pub fn node_id(&self) -> &str {
        match self {
            Edit::AddNode { node } | Edit::ReplaceNode { node } => &node.id,
            Edit::RemoveNode { id } | Edit::SetParams { id, .. } | Edit::ConnectInputs { id, .. } => id,
        }
    }
}

/// A protocol 1 request: edits, desired results, or both, based on graph version `base_version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the client, echoed in the answer.
    pub id: u64,
    /// The graph version the edits were made against; must equal the current version, else the
    /// request is rejected with `conflict`.
    pub base_version: u64,
    /// Modifications, applied in order.
    #[serde(default)]
    pub edits: Vec<Edit>,
    /// The desired results (node ids); when given, replaces the graph's list of results.
    #[serde(default)]
    pub results: Option<Vec<String>>,
}

impl Request {
    /// The node ids the request depends on: the nodes its edits concern, the inputs they name,
    /// and the result names it sets. The service's conflict rule (docs/protocol.md §5) rejects a
    /// request based on an older version when one of these nodes changed since.
    pub fn touched(&self) -> std::collections::BTreeSet<&str> {
        let mut ids = std::collections::BTreeSet::new();
        for edit in &self.edits {
            ids.insert(edit.node_id());
            match edit {
                Edit::AddNode { node } | Edit::ReplaceNode { node } => ids.extend(node.inputs.iter().map(String::as_str)),
                Edit::ConnectInputs { inputs, .. } => ids.extend(inputs.iter().map(String::as_str)),
                Edit::RemoveNode { .. } | Edit::SetParams { .. } => {}
            }
        }
        ids.extend(self.results.iter().flatten().map(String::as_str));
        ids
    }

    /// Structural checks that need no graph: something to do, non-empty ids and input names,
    /// parameters that are objects or `null`, non-empty and distinct result names. Every problem
    /// found is returned (code `invalid_request`, with the node when there is one).
    pub fn validate(&self) -> Result<(), Vec<Reason>> {
        let mut reasons = Vec::new();
        if self.edits.is_empty() && self.results.is_none() {
            reasons.push(Reason::new(
                ErrorCode::InvalidRequest,
                None,
                "the request has neither edits nor results",
            ));
        }
        for (i, edit) in self.edits.iter().enumerate() {
            let id = edit.node_id();
            let node = (!id.is_empty()).then(|| id.to_string());
            let mut bad = |message: String| reasons.push(Reason::new(ErrorCode::InvalidRequest, node.clone(), message));
            if id.is_empty() {
                bad(format!("edit {i}: empty node id"));
            }
            match edit {
                Edit::AddNode { node } | Edit::ReplaceNode { node } => {
                    if node.op.is_empty() {
                        bad(format!("edit {i}: empty op"));
                    }
                    check_inputs(i, &node.inputs, &mut bad);
                    check_params(i, &node.params, &mut bad);
                }
                Edit::SetParams { params, .. } => check_params(i, params, &mut bad),
                Edit::ConnectInputs { inputs, .. } => check_inputs(i, inputs, &mut bad),
                Edit::RemoveNode { .. } => {}
            }
        }
        if let Some(results) = &self.results {
            let mut seen = HashSet::new();
            for name in results {
                if name.is_empty() {
                    reasons.push(Reason::new(ErrorCode::InvalidRequest, None, "empty result name"));
                } else if !seen.insert(name.as_str()) {
                    reasons.push(Reason::new(ErrorCode::InvalidRequest, Some(name.clone()), "result listed twice"));
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

fn check_inputs(i: usize, inputs: &[String], bad: &mut impl FnMut(String)) {
    if inputs.iter().any(String::is_empty) {
        bad(format!("edit {i}: empty input name"));
    }
}

fn check_params(i: usize, params: &Value, bad: &mut impl FnMut(String)) {
    if !(params.is_object() || params.is_null()) {
        bad(format!("edit {i}: params must be a JSON object or null"));
    }
}

/// The answer to an accepted request: the graph now has version `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    /// The request's id.
    pub id: u64,
    /// The new graph version (the previous one plus one).
    pub version: u64,
}

/// The most reasons a `rejected` answer lists ([`Rejected::new`]); `total_reasons` says how many
/// there were in all. A request of tens of thousands of failing edits (a request frame holds that
/// many) would otherwise get an answer larger than a frame.
pub const MAX_LISTED_REASONS: usize = 100;

/// The longest `node` and `message` of a listed reason, in bytes (longer ones are cut at a
/// character boundary and end in `…`). With [`MAX_LISTED_REASONS`], a `rejected` answer is at
/// most about 100 × 2 × 515 bytes, 6 × that with every character escaped in JSON: well within a
/// frame ([`MAX_FRAME_BYTES`](crate::MAX_FRAME_BYTES)).
pub const MAX_REASON_TEXT_BYTES: usize = 512;

/// The answer to a rejected request: nothing changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    /// The request's id.
    pub id: u64,
    /// The current graph version (unchanged), to rebase on after a `conflict`.
    pub version: u64,
    /// Why; at least one, at most [`MAX_LISTED_REASONS`] from a server that bounds them
    /// ([`Rejected::new`]).
    pub reasons: Vec<Reason>,
    /// How many reasons there were in all, when `reasons` lists only the first of them; absent
    /// (or `null`) when it lists them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_reasons: Option<u64>,
}

impl Rejected {
    /// The answer rejecting request `id` at graph `version` for `reasons`, bounded so that it
    /// always fits a frame: the first [`MAX_LISTED_REASONS`] reasons, each node and message cut
    /// to [`MAX_REASON_TEXT_BYTES`], and `total_reasons` when some were left out.
    pub fn new(id: u64, version: u64, mut reasons: Vec<Reason>) -> Self {
        let total = reasons.len();
        reasons.truncate(MAX_LISTED_REASONS);
        for reason in &mut reasons {
            if reason.message.len() > MAX_REASON_TEXT_BYTES {
                reason.message = truncate(&reason.message, MAX_REASON_TEXT_BYTES);
            }
            if let Some(node) = reason.node.as_mut().filter(|node| node.len() > MAX_REASON_TEXT_BYTES) {
                *node = truncate(node, MAX_REASON_TEXT_BYTES);
            }
        }
        Rejected {
            id,
            version,
            total_reasons: (total > reasons.len()).then_some(total as u64),
            reasons,
        }
    }

    /// How many reasons the answer does not list (`total_reasons` minus those listed).
    pub fn unlisted(&self) -> u64 {
        self.total_reasons
            .map_or(0, |total| total.saturating_sub(self.reasons.len() as u64))
    }
}

/// One reason for a rejection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// `conflict`, `invalid_graph`, `unknown_node`, `duplicate_node`, `invalid_request`,
    /// `forbidden`, `busy`, `internal`, ...
    pub code: ErrorCode,
    /// The node concerned, when there is one.
    #[serde(default)]
    pub node: Option<String>,
    /// A human-readable explanation.
    pub message: String,
}

impl Reason {
    /// A reason.
    pub fn new(code: ErrorCode, node: Option<String>, message: impl Into<String>) -> Self {
        Reason {
            code,
            node,
            message: message.into(),
        }
    }

    /// The `conflict` reason for a request based on `base_version` when the graph is at `current`.
    pub fn conflict(base_version: u64, current: u64) -> Self {
        Reason::new(
            ErrorCode::Conflict,
            None,
            format!("the request is based on version {base_version}, the graph is at version {current}"),
        )
    }
}

/// The strict conflict rule, for a server that keeps no graph history: `Ok` when
/// `request.base_version == current`, else the `rejected` answer. (The ami2 service keeps
/// history and uses a finer rule, see [`Request::touched`].)
pub fn check_base_version(request: &Request, current: u64) -> Result<(), Rejected> {
    if request.base_version == current {
        Ok(())
    } else {
        Err(Rejected::new(
            request.id,
            current,
            vec![Reason::conflict(request.base_version, current)],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(edits: Vec<Edit>, results: Option<Vec<&str>>) -> Request {
        Request {
            id: 7,
            base_version: 3,
            edits,
            results: results.map(|r| r.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn validate_accepts_sensible_requests() {
        let r = req(
            vec![Edit::AddNode {
                node: NodeDoc::new("m", "mean", &["roi"], Value::Null),
            }],
            Some(vec!["m"]),
        );
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(req(vec![], Some(vec![])).validate(), Ok(()));
        assert_eq!(req(vec![Edit::RemoveNode { id: "x".into() }], None).validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_problem() {
        let r = req(
            vec![
                Edit::AddNode {
                    node: NodeDoc::new("", "", &[""], json!([1])),
                },
                Edit::SetParams {
                    id: "h".into(),
                    params: json!(3),
                },
                Edit::ConnectInputs {
                    id: "c".into(),
                    inputs: vec!["a".into(), String::new()],
                },
            ],
            Some(vec!["a", "", "a"]),
        );
        let reasons = r.validate().unwrap_err();
        assert_eq!(reasons.len(), 8, "{reasons:#?}");
        assert!(reasons.iter().all(|r| r.code == ErrorCode::InvalidRequest));
        assert_eq!(reasons[4].node.as_deref(), Some("h"));
        assert_eq!(reasons[7].node.as_deref(), Some("a"));
        assert_eq!(req(vec![], None).validate().unwrap_err().len(), 1);
    }

    #[test]
    fn touched_nodes() {
        let r = req(
            vec![
                Edit::AddNode {
                    node: NodeDoc::new("m", "mean", &["roi"], Value::Null),
                },
                Edit::SetParams {
                    id: "h".into(),
                    params: json!({}),
                },
                Edit::ConnectInputs {
                    id: "c".into(),
                    inputs: vec!["a".into(), "b".into()],
                },
                Edit::RemoveNode { id: "x".into() },
            ],
            Some(vec!["m", "z"]),
        );
        let touched: Vec<&str> = r.touched().into_iter().collect();
        assert_eq!(touched, vec!["a", "b", "c", "h", "m", "roi", "x", "z"]);
    }

    #[test]
    fn conflict_rule() {
        let r = req(vec![Edit::RemoveNode { id: "x".into() }], None);
        assert_eq!(check_base_version(&r, 3), Ok(()));
        let rejected = check_base_version(&r, 5).unwrap_err();
        assert_eq!(rejected.id, 7);
        assert_eq!(rejected.version, 5);
        assert_eq!(rejected.reasons[0].code, ErrorCode::Conflict);
    }

    #[test]
    fn node_doc_has_the_graph_node_shape() {
        let node: NodeDoc = serde_json::from_value(json!({"id": "m", "op": "mean"})).unwrap();
        assert_eq!(node, NodeDoc::new("m", "mean", &[], Value::Null));
        let node: NodeDoc =
            serde_json::from_value(json!({"id": "r", "op": "roi", "inputs": ["img"], "params": {"start": 0, "end": 4}})).unwrap();
        assert_eq!(node.inputs, vec!["img".to_string()]);
        assert!(serde_json::from_value::<NodeDoc>(json!({"id": "m", "op": "mean", "param": {}})).is_err());
    }

    #[test]
    fn a_graph_is_measured_as_the_service_sends_it() {
        let nodes = vec![
            NodeDoc::new("e", "select", &[], json!({"field": "energy", "kind": "scalar"})),
            NodeDoc::new("c", "strip_chart", &["e"], Value::Null),
        ];
        let results = vec!["c".to_string()];
        let text = serde_json::to_string(&json!({"nodes": nodes, "results": results})).unwrap();
        assert_eq!(graph_json_bytes(&nodes, &results), text.len(), "{text}");
        assert_eq!(graph_too_large(text.len()), None);
        assert_eq!(graph_too_large(MAX_GRAPH_BYTES), None);
        let why = graph_too_large(MAX_GRAPH_BYTES + 1).expect("one byte over");
        assert!(
            why.contains(&format!("{} bytes", MAX_GRAPH_BYTES + 1)) && why.contains("131072"),
            "{why}"
        );
    }

    /// The bound keeps every message carrying a graph under the frame cap: the answers with one
    /// graph, and a request replacing the largest graph of tiny nodes (the most edits per byte)
    /// by another.
    #[test]
    fn messages_carrying_the_largest_graph_fit_a_frame() {
        use crate::{encode_frame, ClientMessage, ServerMessage, MAX_FRAME_BYTES};
        let graph = |prefix: &str| {
            let mut nodes = Vec::new();
            let results = vec![format!("{prefix}0")];
            while graph_json_bytes(&nodes, &results) < MAX_GRAPH_BYTES {
                for _ in 0..64 {
                    nodes.push(NodeDoc::new(&format!("{prefix}{}", nodes.len()), "sum", &[], Value::Null));
                }
            }
            while graph_json_bytes(&nodes, &results) > MAX_GRAPH_BYTES {
                nodes.pop();
            }
            assert!(graph_too_large(graph_json_bytes(&nodes, &results)).is_none());
            (nodes, results)
        };
        let (old, _) = graph("a");
        let (new, results) = graph("b");
        let doc = json!({"nodes": new, "results": results});
        let answers = [
            ServerMessage::Graph {
                version: u64::MAX,
                graph: doc.clone(),
            },
            ServerMessage::Value {
                key: "/control/graph/edited/000000000001".into(),
                value: Some(doc),
            },
        ];
        for answer in &answers {
            let frame = encode_frame(answer, MAX_FRAME_BYTES).unwrap();
            assert!(frame.len() < MAX_FRAME_BYTES / 4, "{} bytes", frame.len());
        }
        let mut edits: Vec<Edit> = old.iter().map(|n| Edit::RemoveNode { id: n.id.clone() }).collect();
        edits.extend(new.into_iter().map(|node| Edit::AddNode { node }));
        let request = ClientMessage::Request(Request {
            id: u64::MAX,
            base_version: u64::MAX,
            edits,
            results: Some(results),
        });
        let frame = encode_frame(&request, MAX_FRAME_BYTES).unwrap();
        assert!(frame.len() < MAX_FRAME_BYTES / 2, "{} bytes", frame.len());
    }

    /// However many reasons a request has, and however long their texts, the answer fits a
    /// frame: it lists the first `MAX_LISTED_REASONS` and says how many there were.
    #[test]
    fn a_rejection_of_any_number_of_reasons_fits_a_frame() {
        use crate::{encode_frame, ServerMessage, MAX_FRAME_BYTES};
        // The longest texts, in characters JSON escapes to 6 bytes each.
        let long = "\u{1}".repeat(4 * MAX_REASON_TEXT_BYTES);
        let reasons: Vec<Reason> = (0..30_000)
            .map(|i| Reason::new(ErrorCode::UnknownNode, Some(format!("{i}{long}")), format!("edit {i}: {long}")))
            .collect();
        let rejected = Rejected::new(1, 2, reasons);
        assert_eq!(rejected.reasons.len(), MAX_LISTED_REASONS);
        assert_eq!(
            (rejected.total_reasons, rejected.unlisted()),
            (Some(30_000), 30_000 - MAX_LISTED_REASONS as u64)
        );
        assert!(rejected.reasons[7].node.as_deref().unwrap().starts_with("7\u{1}"));
        assert!(rejected.reasons[7].message.starts_with("edit 7: "));
        assert!(rejected.reasons.iter().all(|r| r.message.len() <= MAX_REASON_TEXT_BYTES + 3));
        let frame = encode_frame(&ServerMessage::Rejected(rejected), MAX_FRAME_BYTES).unwrap();
        assert!(frame.len() < MAX_FRAME_BYTES, "{} bytes", frame.len());

        // A few short reasons: all listed as they are, no total.
        let few = vec![
            Reason::conflict(1, 2),
            Reason::new(ErrorCode::UnknownNode, Some("x".into()), "edit 0: no node `x`"),
        ];
        let rejected = Rejected::new(1, 2, few.clone());
        assert_eq!((rejected.reasons, rejected.total_reasons), (few, None));
        let text = serde_json::to_string(&Rejected::new(1, 2, vec![Reason::conflict(1, 2)])).unwrap();
        assert!(!text.contains("total_reasons"), "{text}");
    }
}
