//! The graph manager: applies clients' protocol 1 requests to the current graph, validates,
//! optimises, writes the new graph to Control durably, and only then answers.
//!
//! ```text
//! socket side ──take_requests()──▶ driver ──launch (each round, when requests wait)──▶ graph_manager task
//!      ▲                                                                              │ per request: decide,
//!      └──────────── answer(report) ◀── driver (once the task's future is ready) ◀────┘ write, log fsync
//! ```
//!
//! The socket side (the `ami2` server) hands requests over through [`GraphRequests`], which the
//! pipeline's observer provides ([`Observer::graph_requests`](crate::Observer::graph_requests)).
//! The driver never waits for the task: [`GraphManagerHook::poll`] launches one batch at a time
//! and collects its answers in a later round.
//!
//! # Rules (also in docs/protocol.md §5)
//!
//! - Requests are decided one at a time, in the order they arrived; each accepted one makes
//!   exactly one new version.
//! - **Conflicts**: a request based on the current version never conflicts. A request based on
//!   an older version `b` conflicts when a node it touches ([`Request::touched`]: the nodes its
//!   edits concern, the inputs they name, the results it sets) was added, removed or changed
//!   between `b` and the current version, or when it sets the results and the list of results
//!   changed since `b`; one `conflict` reason per such node. Otherwise its edits are applied to
//!   the *current* graph (a rebase). A base version that is newer than the current one, or older
//!   than the oldest kept ([`RETAINED_GRAPH_VERSIONS`]), is a conflict.
//! - Every edit failure (`unknown_node`, `duplicate_node`) and every validation problem of the
//!   resulting graph (`invalid_graph`, from [`compile`]) is reported; a resulting graph larger
//!   than [`MAX_GRAPH_BYTES`](crate::graph::MAX_GRAPH_BYTES) is reported as such alone. The answer
//!   lists the first [`protocol1::MAX_LISTED_REASONS`] and how many there were
//!   ([`Rejected::new`]), so that it fits a frame however many edits fail.
//! - A version whose writing to Control fails is rejected (`internal`) and logged, and leaves
//!   nothing behind ([`write_version`]).
//! - Two documents per version: the graph *as edited* (what clients see and edit, under
//!   [`edited_graph_key`]) and the *optimised* graph the workers run (under
//!   [`graph_key`]): nodes no result depends on dropped, identical
//!   sub-graphs shared ([`optimise`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use kv_region::view::{apply_ops, with_writer, View};
use kv_region::{Codec, Op, Outcome, Slot};
use legion_bridge::{Field, Future, Privilege, TaskContext, TaskError, TaskLauncher};
use protocol1::{Accepted, Edit, ErrorCode, NodeDoc, Reason, Rejected, Request};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::graph::{check_size, compile, GraphSpec, NodeSpec};
use crate::stores::{bad_graph_key, graph_key, Stores, GRAPH_VERSION_KEY, MAX_MADE_BY_BYTES};
use crate::tasks::tasks;
use crate::PipelineError;

/// Graph versions kept in Control (both documents); older ones are deleted as new ones come.
pub const RETAINED_GRAPH_VERSIONS: u64 = 64;

/// Prefix of the graphs as clients edited them.
pub const EDITED_GRAPH_PREFIX: &str = "/control/graph/edited/";

/// Key of graph `version` as edited by clients (absent for graphs installed at start: then the
/// document under [`graph_key`] is both).
pub fn edited_graph_key(version: u64) -> String {
    format!("{EDITED_GRAPH_PREFIX}{version:012}")
}

/// Prefix of when and by whom each graph version was made.
pub const MADE_GRAPH_PREFIX: &str = "/control/graph/made/";

/// Key of when and by whom graph `version` was made ([`made_graph_doc`]).
pub fn made_graph_key(version: u64) -> String {
    format!("{MADE_GRAPH_PREFIX}{version:012}")
}

/// The document under [`made_graph_key`]: `{"at_unix_ms": ..., "by": ...}`, `by` saying who
/// (a client's name and address, or the service at start), cut to [`MAX_MADE_BY_BYTES`] (Control
/// is sized for that).
pub fn made_graph_doc(by: &str) -> Value {
    let mut by = by.to_string();
    crate::robust::cut(&mut by, MAX_MADE_BY_BYTES);
    serde_json::json!({"at_unix_ms": crate::robust::now_ms(), "by": by})
}

/// The keys of the version that `new_version` pushes out of the [`RETAINED_GRAPH_VERSIONS`] kept:
/// its graph as edited and as optimised, when and by whom it was made, and its mark if it failed
/// at run time.
pub fn superseded_version_keys(new_version: u64) -> Vec<String> {
    match new_version.checked_sub(RETAINED_GRAPH_VERSIONS).filter(|v| *v > 0) {
        Some(old) => vec![graph_key(old), edited_graph_key(old), made_graph_key(old), bad_graph_key(old)],
        None => Vec::new(),
    }
}

/// A value that travels through Legion (bincode) as JSON text: bincode cannot carry
/// self-describing JSON values or internally tagged enums.
#[derive(Clone, Debug, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(&self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map(Json).map_err(serde::de::Error::custom)
    }
}

/// A request handed over by the socket side; `ticket` routes its answer back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub ticket: u64,
    pub request: Request,
    /// Who sent it (the client's name and address), kept with the version it makes.
    pub sender: String,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Accepted(Accepted),
    Rejected(Rejected),
}

/// What one graph manager task did: an answer per ticket, and the graph (as edited) and version
/// current afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphManagerReport {
    pub answers: Vec<(u64, Answer)>,
    pub version: u64,
    pub graph: Option<GraphSpec>,
    /// Failed attempts before this answer (the driver records them in Control).
    #[serde(default)]
    pub incidents: Vec<crate::robust::Incident>,
}

/// The socket side of the graph manager, as the pipeline driver sees it. Both calls run on the
/// driver's thread and must not block.
pub trait GraphRequests {
    /// The requests that arrived since the previous call.
    fn take_requests(&mut self) -> Vec<PendingRequest>;
    /// The answers to a batch of requests, once they are durable.
    fn answer(&mut self, report: GraphManagerReport);
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphManagerArgs {
    pub requests: Json<Vec<PendingRequest>>,
    pub control_field: Field<Slot>,
    /// The log of Control's `/control/` segment (fsynced before the task returns).
    pub log: Option<PathBuf>,
}

/// A graph accepted by [`decide`]: as edited, and optimised for the workers.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub edited: GraphSpec,
    pub optimised: GraphSpec,
}

fn reason(code: ErrorCode, node: Option<&str>, message: impl Into<String>) -> Reason {
    Reason::new(code, node.map(str::to_string), message)
}

/// Decides a request against the current graph (`current`, version `current_version`);
/// `history(v)` gives the graph as edited at an older version `v` when it is still kept.
/// Returns the new graph, or every reason to reject the request.
pub fn decide(
    request: &Request,
    current_version: u64,
    current: &GraphSpec,
    history: impl FnOnce(u64) -> Option<GraphSpec>,
) -> Result<Decision, Vec<Reason>> {
    request.validate()?;
    let conflicts = conflicts(request, current_version, current, history);
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let (mut edited, mut reasons) = apply_edits(current, &request.edits);
    if let Some(results) = &request.results {
        edited.results = results.clone();
    }
    // Too large: that reason alone, since the problems of thousands of nodes would make an
    // answer larger than a frame.
    if let Err(error) = check_size(&edited) {
        reasons.push(reason(ErrorCode::InvalidGraph, None, error.message));
        return Err(reasons);
    }
    if let Err(errors) = compile(&edited) {
        reasons.extend(
            errors
                .into_iter()
                .map(|e| reason(ErrorCode::InvalidGraph, e.node.as_deref().filter(|n| !n.is_empty()), e.message)),
        );
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let optimised = optimise(&edited);
    // The optimised graph computes the same results; should it ever not compile (or be larger, its
    // inputs renamed to longer ids), run the graph as edited rather than refuse a valid request.
    let optimised = if compile(&optimised).is_ok() && check_size(&optimised).is_ok() {
        optimised
    } else {
        edited.clone()
    };
    Ok(Decision { edited, optimised })
}

/// The conflict rule (module docs): the `conflict` reasons of `request`, none when it may be
/// applied to the current graph.
pub fn conflicts(
    request: &Request,
    current_version: u64,
    current: &GraphSpec,
    history: impl FnOnce(u64) -> Option<GraphSpec>,
) -> Vec<Reason> {
    let base = request.base_version;
    if base == current_version {
        return Vec::new();
    }
    if base > current_version {
        return vec![reason(
            ErrorCode::Conflict,
            None,
            format!("the request is based on version {base}, but the graph is at version {current_version}"),
        )];
    }
    let Some(base_graph) = history(base) else {
        return vec![reason(
            ErrorCode::Conflict,
            None,
            format!("the request is based on version {base}, which is no longer kept (the graph is at version {current_version})"),
        )];
    };
    let changed = changed_nodes(&base_graph, current);
    let mut reasons: Vec<Reason> = request
        .touched()
        .into_iter()
        .filter(|id| changed.contains(*id))
        .map(|id| {
            reason(
                ErrorCode::Conflict,
                Some(id),
                format!("node `{id}` changed between version {base} (the request's base) and version {current_version}"),
            )
        })
        .collect();
    if request.results.is_some() && base_graph.results != current.results {
        reasons.push(reason(
            ErrorCode::Conflict,
            None,
            format!("the list of results changed between version {base} (the request's base) and version {current_version}"),
        ));
    }
    reasons
}

/// Ids of the nodes added, removed or changed between two graphs.
pub fn changed_nodes(before: &GraphSpec, after: &GraphSpec) -> BTreeSet<String> {
    let index = |g: &GraphSpec| g.nodes.iter().map(|n| (n.id.clone(), n.clone())).collect::<HashMap<_, _>>();
    let (a, b) = (index(before), index(after));
    a.keys().chain(b.keys()).filter(|id| a.get(*id) != b.get(*id)).cloned().collect()
}

fn node_spec(doc: &NodeDoc) -> NodeSpec {
    NodeSpec {
        id: doc.id.clone(),
        op: doc.op.clone(),
        inputs: doc.inputs.clone(),
        params: doc.params.clone(),
    }
}

/// Applies `edits` in order to a copy of `graph`; an edit that cannot apply is skipped and
/// reported.
pub fn apply_edits(graph: &GraphSpec, edits: &[Edit]) -> (GraphSpec, Vec<Reason>) {
    let mut out = graph.clone();
    let mut reasons = Vec::new();
    for (i, edit) in edits.iter().enumerate() {
        let id = edit.node_id();
        let position = out.nodes.iter().position(|n| n.id == id);
        let unknown = || reason(ErrorCode::UnknownNode, Some(id), format!("edit {i}: no node `{id}`"));
        match (edit, position) {
            (Edit::AddNode { node }, None) => out.nodes.push(node_spec(node)),
            (Edit::AddNode { .. }, Some(_)) => reasons.push(reason(
                ErrorCode::DuplicateNode,
                Some(id),
                format!("edit {i}: a node `{id}` exists"),
            )),
            (_, None) => reasons.push(unknown()),
            (Edit::RemoveNode { .. }, Some(p)) => {
                out.nodes.remove(p);
            }
            (Edit::ReplaceNode { node }, Some(p)) => out.nodes[p] = node_spec(node),
            (Edit::SetParams { params, .. }, Some(p)) => out.nodes[p].params = params.clone(),
            (Edit::ConnectInputs { inputs, .. }, Some(p)) => out.nodes[p].inputs = inputs.clone(),
        }
    }
    (out, reasons)
}

/// The graph the workers run: only the nodes some result depends on, in dependency order, with
/// identical sub-graphs shared (a node with the same op, params and — after sharing — inputs as
/// an earlier one is replaced by it; result nodes are kept, since clients know them by id).
/// `graph` must be valid ([`compile`]).
pub fn optimise(graph: &GraphSpec) -> GraphSpec {
    let by_id: HashMap<&str, &NodeSpec> = graph.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    // Depth-first from the results, inputs before the node (iterative: graphs may be deep).
    let mut order: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for result in &graph.results {
        let mut stack: Vec<(&str, bool)> = vec![(result.as_str(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                order.push(id);
                continue;
            }
            if !seen.insert(id) {
                continue;
            }
            stack.push((id, true));
            if let Some(node) = by_id.get(id) {
                for input in node.inputs.iter().rev() {
                    if !seen.contains(input.as_str()) {
                        stack.push((input.as_str(), false));
                    }
                }
            }
        }
    }
    let results: HashSet<&str> = graph.results.iter().map(String::as_str).collect();
    let mut alias: HashMap<&str, String> = HashMap::new();
    let mut canonical: HashMap<String, String> = HashMap::new();
    let mut nodes = Vec::with_capacity(order.len());
    for id in order {
        let Some(node) = by_id.get(id) else { continue };
        let mut node = (*node).clone();
        for input in &mut node.inputs {
            if let Some(rep) = alias.get(input.as_str()) {
                *input = rep.clone();
            }
        }
        // serde_json keeps object members sorted: equal params give equal text.
        let key = serde_json::to_string(&(&node.op, &node.params, &node.inputs)).expect("JSON serializes");
        match canonical.get(&key) {
            Some(rep) if !results.contains(id) => {
                alias.insert(id, rep.clone());
            }
            _ => {
                canonical.entry(key).or_insert_with(|| node.id.clone());
                nodes.push(node);
            }
        }
    }
    GraphSpec {
        nodes,
        results: graph.results.clone(),
    }
}

fn read_json<B: AsRef<[u8]>>(view: &kv_region::view::View<B>, key: &str) -> kv_region::KvResult<Option<Value>> {
    Ok(match view.get(key)? {
        Some((Codec::Json, bytes)) => serde_json::from_slice(bytes).ok(),
        _ => None,
    })
}

/// Graph `version` as clients edited it (the optimised document when no edited one exists).
fn edited_graph<B: AsRef<[u8]>>(view: &kv_region::view::View<B>, version: u64) -> kv_region::KvResult<Option<GraphSpec>> {
    let doc = match read_json(view, &edited_graph_key(version))? {
        Some(doc) => Some(doc),
        None => read_json(view, &graph_key(version))?,
    };
    Ok(doc.and_then(|d| serde_json::from_value(d).ok()))
}

fn check(outcomes: Vec<kv_region::KvResult<Outcome>>) -> kv_region::KvResult<()> {
    outcomes.into_iter().try_for_each(|o| o.map(drop))
}

/// Writes graph version `next = current + 1` of `decision` to Control: its documents, then the
/// version, each batch logged (fsynced) when `log` is given. On failure nothing of `next` remains
/// (its documents deleted, the version left at `current`) and the error says why: no reader sees
/// a version that was not accepted ([`write_version_with`]).
pub fn write_version(view: &mut View<&mut [u8]>, log: Option<&Path>, current: u64, decision: &Decision, by: &str) -> Result<(), String> {
    let next = current + 1;
    let docs = vec![
        Op::put_json(graph_key(next), &decision.optimised),
        Op::put_json(edited_graph_key(next), &decision.edited),
        Op::put_json(made_graph_key(next), &made_graph_doc(by)),
    ];
    write_version_with(
        |ops| apply_ops(view, ops, log).and_then(check),
        current,
        docs,
        Vec::new(),
        Vec::new(),
    )
}

/// How every graph version is written to Control, by the graph manager ([`write_version`]) and
/// by the service itself ([`crate::pipeline::install_graph`]): through `apply`, which runs a batch
/// on Control's `/control/` segment (logged) and fails unless all of it was done, `docs` (the
/// version's documents, puts) first, then the version `current + 1` with `marks` (puts that go
/// with it) in one batch: the version never names a version without documents.
///
/// On failure nothing of the version remains: the keys `docs` and `marks` put are deleted, the
/// version is put back to `current`, and `restore` (the values `marks` replace, as they were) is
/// applied; the error says why.
pub fn write_version_with(
    mut apply: impl FnMut(Vec<Op>) -> kv_region::KvResult<()>,
    current: u64,
    docs: Vec<Op>,
    marks: Vec<Op>,
    restore: Vec<Op>,
) -> Result<(), String> {
    let next = current + 1;
    let put_keys: Vec<String> = docs
        .iter()
        .chain(&marks)
        .filter_map(|op| match op {
            Op::Put { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    let mut with_version = vec![Op::put_json(GRAPH_VERSION_KEY, &next)];
    with_version.extend(marks);
    let failed = match apply(docs) {
        Err(err) => format!("writing graph version {next} to Control: {err}"),
        Ok(()) => match apply(with_version) {
            Ok(()) => return Ok(()),
            Err(err) => format!("writing the graph version ({next}) to Control: {err}"),
        },
    };
    // A batch changes the region before it is logged, and a failed put leaves the batch's other
    // puts in place: undo them all. In memory this cannot fail; should its log record not be
    // written either, a restart may find the documents of `next` again, above the version.
    let mut undo: Vec<Op> = put_keys.into_iter().map(|key| Op::Delete { key }).collect();
    undo.push(match current {
        0 => Op::Delete {
            key: GRAPH_VERSION_KEY.to_string(),
        },
        _ => Op::put_json(GRAPH_VERSION_KEY, &current),
    });
    undo.extend(restore);
    match apply(undo) {
        Ok(()) => Err(failed),
        Err(err) => Err(format!("{failed} (undone in memory; logging the undo failed too: {err})")),
    }
}

/// Region 0: Control's `/control/` segment (read-write).
/// A robust task: a failed attempt is retried (the requests it decided are written one by one with
/// the log fsynced, so a retry sees what an earlier attempt already installed).
pub(crate) fn graph_manager_task(ctx: &TaskContext, args: GraphManagerArgs) -> Result<Json<GraphManagerReport>, TaskError> {
    crate::robust::robustly(
        "graph_manager",
        &crate::robust::RetryPolicy::default(),
        |_| graph_manager_attempt(ctx, args.clone()),
        |report| &mut report.0.incidents,
    )
}

fn graph_manager_attempt(ctx: &TaskContext, args: GraphManagerArgs) -> Result<Json<GraphManagerReport>, TaskError> {
    let report = with_writer(&ctx.region(0)?, args.control_field, |view| {
        let mut version = read_json(view, GRAPH_VERSION_KEY)?.and_then(|v| v.as_u64()).unwrap_or(0);
        let mut current = if version > 0 { edited_graph(view, version)? } else { None };
        let mut answers = Vec::new();
        for PendingRequest { ticket, request, sender } in args.requests.0 {
            let empty = GraphSpec {
                nodes: Vec::new(),
                results: Vec::new(),
            };
            let decision = decide(&request, version, current.as_ref().unwrap_or(&empty), |v| {
                if v == 0 || v + RETAINED_GRAPH_VERSIONS <= version {
                    return None;
                }
                edited_graph(view, v).ok().flatten()
            });
            let decision = match decision {
                Ok(decision) => decision,
                Err(reasons) => {
                    answers.push((ticket, Answer::Rejected(Rejected::new(request.id, version, reasons))));
                    continue;
                }
            };
            let next = version + 1;
            let log = args.log.as_deref();
            if let Err(why) = write_version(view, log, version, &decision, &sender) {
                tracing::error!(
                    component = "graph_manager",
                    graph_version = next,
                    "request {} from {sender} rejected: {why}",
                    request.id
                );
                answers.push((
                    ticket,
                    Answer::Rejected(Rejected::new(request.id, version, vec![reason(ErrorCode::Internal, None, why)])),
                ));
                continue;
            }
            // The new version is durable: pushing the oldest out may fail without undoing it.
            let superseded = superseded_version_keys(next).into_iter().map(|key| Op::Delete { key }).collect();
            if let Err(err) = apply_ops(view, superseded, log).and_then(check) {
                tracing::error!(
                    component = "graph_manager",
                    graph_version = next,
                    "deleting the graph version no longer kept from Control: {err}"
                );
            }
            version = next;
            current = Some(decision.edited);
            answers.push((ticket, Answer::Accepted(Accepted { id: request.id, version })));
        }
        Ok(GraphManagerReport {
            incidents: Vec::new(),
            answers,
            version,
            graph: current,
        })
    })?;
    Ok(Json(report))
}

/// The driver's side: at most one graph manager task in flight; its answers are handed back
/// when its future is ready, never waited for in the middle of the event flow.
#[derive(Default)]
pub struct GraphManagerHook {
    in_flight: Option<InFlight>,
    /// Incidents of finished graph manager tasks, for the driver to record.
    pub incidents: Vec<crate::robust::Incident>,
}

struct InFlight {
    future: Future<Json<GraphManagerReport>>,
    /// (ticket, request id, base version) of the batch, to answer if the task fails.
    batch: Vec<(u64, u64, u64)>,
}

impl GraphManagerHook {
    /// Hands back the answers of a finished task, then launches one for the requests waiting.
    pub fn poll(&mut self, ctx: &TaskContext, stores: &Stores, requests: &mut dyn GraphRequests) -> Result<(), PipelineError> {
        if let Some(in_flight) = &self.in_flight {
            if !in_flight.future.is_ready() {
                return Ok(());
            }
            self.collect(requests);
        }
        let batch = requests.take_requests();
        if !batch.is_empty() {
            self.launch(ctx, stores, batch)?;
        }
        Ok(())
    }

    /// At the end of a run: waits for the task in flight and answers it, then decides the
    /// requests still waiting.
    pub fn finish(&mut self, ctx: &TaskContext, stores: &Stores, requests: &mut dyn GraphRequests) -> Result<(), PipelineError> {
        self.collect(requests);
        let batch = requests.take_requests();
        if !batch.is_empty() {
            self.launch(ctx, stores, batch)?;
            self.collect(requests);
        }
        Ok(())
    }

    fn launch(&mut self, ctx: &TaskContext, stores: &Stores, batch: Vec<PendingRequest>) -> Result<(), PipelineError> {
        let ids = batch.iter().map(|p| (p.ticket, p.request.id, p.request.base_version)).collect();
        let args = GraphManagerArgs {
            requests: Json(batch),
            control_field: stores.control.field(),
            log: stores.control.log_path("/control/"),
        };
        let future = ctx.execute(
            &TaskLauncher::new(tasks()?.graph_manager, &args)?
                .tag(crate::placement::tag(ami_mapper::TaskKind::GraphManager))
                .region(stores.control.requirement(ctx, "/control/", Privilege::ReadWrite)?),
        )?;
        self.in_flight = Some(InFlight { future, batch: ids });
        Ok(())
    }

    /// Waits for the task in flight (if any) and hands its answers back; a failed task rejects
    /// its whole batch with `internal` (nothing of a failed batch was acknowledged).
    fn collect(&mut self, requests: &mut dyn GraphRequests) {
        let Some(InFlight { future, batch }) = self.in_flight.take() else {
            return;
        };
        match future.get() {
            Ok(Json(mut report)) => {
                self.incidents.append(&mut report.incidents);
                requests.answer(report)
            }
            Err(err) => {
                tracing::error!("graph manager task failed: {err}");
                let answers = batch
                    .into_iter()
                    .map(|(ticket, id, base)| {
                        let reasons = vec![reason(ErrorCode::Internal, None, format!("the graph manager failed: {err}"))];
                        (ticket, Answer::Rejected(Rejected::new(id, base, reasons)))
                    })
                    .collect();
                requests.answer(GraphManagerReport {
                    incidents: Vec::new(),
                    answers,
                    version: 0,
                    graph: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
