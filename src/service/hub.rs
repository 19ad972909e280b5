//! Where the two sides of the service meet: the socket side (tokio tasks, one per connection)
//! and the pipeline driver (a Legion task). Everything here is short work under a mutex; neither
//! side ever waits for the other through it.
//!
//! - Graph requests: connections [`submit`](Hub::submit) them and await a oneshot; the driver
//!   takes them ([`GraphRequests`](ami_tasks::graph_manager::GraphRequests)) and answers once the graph manager task made them durable.
//! - Key reads: same pattern; the driver reads the stores between rounds.
//! - Results: the driver [`publish`](Hub::publish)es finished bins into each subscribed
//!   connection's bounded [`Outbox`] (oldest bins dropped): a slow client only loses its own bins.
//! - Graph and status snapshots, kept up to date by the driver, answer `get_graph` and
//!   `get_status` without involving it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use ami_tasks::graph_manager::{Answer, GraphManagerReport, PendingRequest};
use ami_tasks::GlobalReport;
use protocol1::{Bin, ErrorCode, ProtocolError, Reason, Rejected, Request, ServerMessage, SubscriberQueue};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, Notify};

/// A connection's queue of messages to write: answers (never dropped, bounded) and bins
/// (bounded, oldest dropped), with a wake-up for its writer task.
pub struct Outbox {
    queue: Mutex<(SubscriberQueue, bool)>,
    notify: Notify,
}

impl Outbox {
    pub fn new(bins: usize, answers: usize) -> Self {
        Outbox {
            queue: Mutex::new((SubscriberQueue::new(bins, answers), false)),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (SubscriberQueue, bool)> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message; fails (`busy`) when the client lets answers pile up.
    pub fn push(&self, msg: ServerMessage) -> Result<(), ProtocolError> {
        let dropped = {
            let mut guard = self.lock();
            let before = guard.0.dropped_total();
            guard.0.push(msg)?;
            guard.0.dropped_total() - before
        };
        if dropped > 0 {
            ami_tasks::metrics::subscriber_messages_dropped(dropped);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Counts a bin of `result` that could not be sent: `bytes` as a message, over the frame
    /// cap `max`. The subscriber is told so in its next `dropped` notice.
    pub fn note_too_large(&self, result: &str, bytes: u64, max: u64) {
        self.lock().0.note_too_large(result, bytes, max);
        ami_tasks::metrics::subscriber_messages_dropped(1);
    }

    pub fn dropped_total(&self) -> u64 {
        self.lock().0.dropped_total()
    }

    /// No more messages: the writer sends what is queued, then ends.
    pub fn close(&self) {
        self.lock().1 = true;
        self.notify.notify_one();
    }

    /// The next message to write; `None` once closed and empty.
    pub async fn next(&self) -> Option<ServerMessage> {
        loop {
            {
                let mut guard = self.lock();
                if let Some(msg) = guard.0.pop() {
                    return Some(msg);
                }
                if guard.1 {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }
}

struct Subscriber {
    names: BTreeSet<String>,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    requests: Vec<PendingRequest>,
    waiting: HashMap<u64, oneshot::Sender<ServerMessage>>,
    key_reads: Vec<(String, oneshot::Sender<ServerMessage>)>,
    graph_version: u64,
    graph: Value,
    /// The version the workers run: `graph_version` unless it failed at run time (then the one
    /// they reverted to, or none).
    graph_running: Option<u64>,
    pipeline: Value,
    sources: Value,
    connections: BTreeMap<u64, Subscriber>,
    next_connection: u64,
    accepted: u64,
    rejected: u64,
    bins_published: u64,
    /// Bins dropped for connections that are gone.
    bins_dropped_closed: u64,
    stopped: bool,
}

/// The state shared by the server and the pipeline driver.
pub struct Hub {
    state: Mutex<State>,
    bin_width_ns: u64,
    ready: watch::Sender<bool>,
    listen: Mutex<Option<String>>,
}

impl Hub {
    pub fn new(bin_width_ns: u64) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            bin_width_ns,
            ready: watch::channel(false).0,
            listen: Mutex::new(None),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_listen(&self, addr: String) {
        *self.listen.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    /// Waits until the driver published the first graph snapshot.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    // ---- socket side ----

    /// Hands a request from `sender` (the client's name and address) to the graph manager; the
    /// receiver gets `accepted` or `rejected`.
    pub fn submit(&self, request: Request, sender: String) -> oneshot::Receiver<ServerMessage> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        if state.stopped {
            let _ = tx.send(shutting_down(&request, state.graph_version));
            return rx;
        }
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        state.requests.push(PendingRequest { ticket, request, sender });
        state.waiting.insert(ticket, tx);
        rx
    }

    /// Asks the driver for a store key; the receiver gets `value` or `error`.
    pub fn read_key(&self, key: String) -> oneshot::Receiver<ServerMessage> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        if state.stopped {
            let _ = tx.send(ServerMessage::error(ErrorCode::ShuttingDown, "the service is stopping"));
        } else {
            state.key_reads.push((key, tx));
        }
        rx
    }

    pub fn graph_version(&self) -> u64 {
        self.state().graph_version
    }

    pub fn graph(&self) -> ServerMessage {
        let state = self.state();
        ServerMessage::Graph {
            version: state.graph_version,
            graph: state.graph.clone(),
        }
    }

    /// The `status` answer: graph, pipeline, sources, server counters, the metrics summary and the
    /// heartbeats of this process (what the cron watchdog checks).
    pub fn status(&self) -> Value {
        let state = self.state();
        let subscribers = state.connections.values().filter(|c| !c.names.is_empty()).count();
        let dropped: u64 = state.bins_dropped_closed + state.connections.values().map(|c| c.outbox.dropped_total()).sum::<u64>();
        json!({
            "graph_version": state.graph_version,
            "graph_running": state.graph_running,
            "pipeline": state.pipeline,
            "sources": state.sources,
            "server": {
                "listen": *self.listen.lock().unwrap_or_else(|e| e.into_inner()),
                "connections": state.connections.len(),
                "subscribers": subscribers,
                "subscriptions": state.connections.values().map(|c| c.names.len()).sum::<usize>(),
                "requests_accepted": state.accepted,
                "requests_rejected": state.rejected,
                "requests_pending": state.waiting.len(),
                "bins_published": state.bins_published,
                "bins_dropped": dropped,
            },
            "metrics": crate::metrics::summary(),
            "health": ami_tasks::health::snapshot(),
        })
    }

    /// A new connection; returns its id.
    pub fn connect(&self, outbox: Arc<Outbox>) -> u64 {
        let mut state = self.state();
        state.next_connection += 1;
        let id = state.next_connection;
        state.connections.insert(
            id,
            Subscriber {
                names: BTreeSet::new(),
                outbox,
            },
        );
        id
    }

    pub fn disconnect(&self, id: u64) {
        let mut state = self.state();
        if let Some(gone) = state.connections.remove(&id) {
            state.bins_dropped_closed += gone.outbox.dropped_total();
        }
    }

    /// Adds result names to a connection's subscriptions; returns them all, or `Err(max)` when
    /// there would be more than `max`.
    pub fn subscribe(&self, id: u64, names: Vec<String>, max: usize) -> Result<Vec<String>, usize> {
        let mut state = self.state();
        let Some(conn) = state.connections.get_mut(&id) else {
            return Ok(Vec::new());
        };
        if conn.names.iter().chain(&names).collect::<BTreeSet<_>>().len() > max {
            return Err(max);
        }
        conn.names.extend(names);
        Ok(conn.names.iter().cloned().collect())
    }

    /// Removes names (all when `None`); returns the remaining ones.
    pub fn unsubscribe(&self, id: u64, names: Option<Vec<String>>) -> Vec<String> {
        let mut state = self.state();
        let Some(conn) = state.connections.get_mut(&id) else {
            return Vec::new();
        };
        match names {
            Some(names) => conn.names.retain(|n| !names.contains(n)),
            None => conn.names.clear(),
        }
        conn.names.iter().cloned().collect()
    }

    /// The service stops: every waiting request and read is answered `shutting_down`.
    pub fn stop(&self) {
        let mut state = self.state();
        state.stopped = true;
        let version = state.graph_version;
        let requests: HashMap<u64, Request> = state.requests.drain(..).map(|p| (p.ticket, p.request)).collect();
        for (ticket, tx) in state.waiting.drain() {
            let msg = match requests.get(&ticket) {
                Some(request) => shutting_down(request, version),
                None => ServerMessage::error(ErrorCode::ShuttingDown, "the service stopped before answering"),
            };
            let _ = tx.send(msg);
        }
        for (_, tx) in state.key_reads.drain(..) {
            let _ = tx.send(ServerMessage::error(ErrorCode::ShuttingDown, "the service is stopping"));
        }
    }

    // ---- driver side ----

    /// The graph (as edited) and version at start, or after the graph manager changed them. The
    /// graph manager's answer can come after the report of the new version's failure at run
    /// time: the version the workers run is then kept, and an older version changes nothing.
    pub fn set_graph(&self, version: u64, graph: Value) {
        let mut state = self.state();
        if version > state.graph_version || state.graph.is_null() {
            state.graph_version = version;
            state.graph = graph;
            state.graph_running = Some(version);
        } else if version == state.graph_version {
            state.graph = graph;
        }
        drop(state);
        self.ready.send_replace(true);
    }

    /// The version the workers run, after a graph failed at run time.
    pub fn set_graph_running(&self, running: Option<u64>) {
        self.state().graph_running = running;
    }

    pub fn take_requests(&self) -> Vec<PendingRequest> {
        std::mem::take(&mut self.state().requests)
    }

    pub fn take_key_reads(&self) -> Vec<(String, oneshot::Sender<ServerMessage>)> {
        std::mem::take(&mut self.state().key_reads)
    }

    pub fn answer(&self, report: GraphManagerReport) {
        if let Some(graph) = &report.graph {
            self.set_graph(report.version, serde_json::to_value(graph).expect("a graph serializes"));
        }
        let mut state = self.state();
        for (ticket, answer) in report.answers {
            let msg = match answer {
                Answer::Accepted(a) => {
                    state.accepted += 1;
                    ServerMessage::Accepted(a)
                }
                Answer::Rejected(r) => {
                    state.rejected += 1;
                    ServerMessage::Rejected(r)
                }
            };
            if let Some(tx) = state.waiting.remove(&ticket) {
                let _ = tx.send(msg);
            }
        }
    }

    /// The answer to an edit from a connection that may not edit (a subscriber's), counted with
    /// the other rejections.
    pub fn reject_forbidden(&self, id: u64) -> ServerMessage {
        let mut state = self.state();
        state.rejected += 1;
        ServerMessage::Rejected(Rejected::new(
            id,
            state.graph_version,
            vec![Reason::new(
                ErrorCode::Forbidden,
                None,
                "a subscriber connection cannot edit the graph",
            )],
        ))
    }

    /// Pushes a report's finished bins to their subscribers and updates the status snapshot.
    pub fn publish(&self, report: &GlobalReport) {
        let mut state = self.state();
        let s = &report.state;
        state.pipeline = json!({
            "events": s.events,
            "bins_emitted": s.bins_emitted,
            "late_partials": s.late_partials,
            "superseded_partials": s.superseded_partials,
        });
        if !report.sources.is_empty() {
            let sources: BTreeMap<String, Value> = report
                .sources
                .iter()
                .map(|(p, (position, stats))| (p.to_string(), json!({"position": position, "stats": stats})))
                .collect();
            state.sources = json!(sources);
        }
        for emitted in &report.emitted {
            for (name, value) in &emitted.values {
                let bin = Bin {
                    result: name.clone(),
                    bin: emitted.bin,
                    t_ns: emitted.bin.saturating_mul(self.bin_width_ns),
                    graph_version: emitted.graph_version,
                    events: emitted.events,
                    value: value.clone(),
                };
                state.bins_published += 1;
                for conn in state.connections.values().filter(|c| c.names.contains(name)) {
                    // Bins are never refused: the oldest queued one is dropped instead.
                    let _ = conn.outbox.push(ServerMessage::Bin(bin.clone()));
                }
            }
        }
    }
}

fn shutting_down(request: &Request, version: u64) -> ServerMessage {
    ServerMessage::Rejected(Rejected::new(
        request.id,
        version,
        vec![Reason::new(ErrorCode::ShuttingDown, None, "the service is stopping")],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(hub: &Hub) -> (Value, Value) {
        let status = hub.status();
        (status["graph_version"].clone(), status["graph_running"].clone())
    }

    #[test]
    fn the_graph_managers_late_answer_keeps_a_failure_reported_before_it() {
        let hub = Hub::new(50_000_000);
        hub.set_graph(1, json!({"results": ["a"]}));
        assert_eq!(running(&hub), (json!(1), json!(1)));
        // Version 2's failure at run time is reported first (the driver learns the version then)...
        hub.set_graph(2, json!({"results": ["b"]}));
        hub.set_graph_running(Some(1));
        // ...and the graph manager's answer that installed it comes after.
        hub.set_graph(2, json!({"results": ["b"]}));
        assert_eq!(running(&hub), (json!(2), json!(1)));
        // A newer version runs until it fails; an older one changes nothing.
        hub.set_graph(3, json!({"results": ["c"]}));
        assert_eq!(running(&hub), (json!(3), json!(3)));
        hub.set_graph(2, json!({"results": ["b"]}));
        assert_eq!(running(&hub), (json!(3), json!(3)));
        let ServerMessage::Graph { version, graph } = hub.graph() else {
            panic!("not a graph")
        };
        assert_eq!((version, graph), (3, json!({"results": ["c"]})));
    }
}
