//! Client library for ami2: async (tokio, [`Client`]) and blocking ([`BlockingClient`]) APIs
//! that speak both protocols (docs/protocol.md) to the service, with reconnection.
//!
//! A client owns one connection, run by a background task: calls send a message and await its
//! answer (answers come in order); pushed `bin` and `dropped` messages go to an event queue
//! read with [`Client::next_event`]. When the connection breaks, calls in progress fail with
//! [`ClientError::Disconnected`] (a request's outcome is then unknown: read the graph to find
//! out), and, with [`ClientOptions::reconnect`], the task reconnects with backoff, subscribes
//! again to the same results and queues [`Event::Reconnected`]; later calls use the new
//! connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client_lib::ClientError> {
//! use client_lib::{Client, ClientOptions, Event};
//! let mut client = Client::connect("127.0.0.1:7820", ClientOptions::default()).await?;
//! let (version, graph) = client.graph().await?;
//! client.subscribe(&["energy_hist"]).await?;
//! while let Some(Event::Bin(bin)) = client.next_event().await {
//!     println!("{} {} {}", bin.result, bin.bin, bin.value);
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use protocol1::{
    Accepted, Bin, ClientMessage, Connection, Edit, ErrorCode, Hello, NodeDoc, ProtocolError, Rejected, Request, Role, ServerMessage,
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub use protocol1;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect, or the handshake failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: ProtocolError,
    },
    /// The connection broke before the answer came (the request may or may not have been applied).
    #[error("the connection to the service was lost")]
    Disconnected,
    /// The client was closed (its background task ended).
    #[error("the client is closed")]
    Closed,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with `error`.
    #[error("the service answered with an error ({code}): {message}")]
    Server { code: ErrorCode, message: String },
    /// The server answered with something else than the expected answer.
    #[error("unexpected answer `{0}`")]
    Unexpected(String),
    /// A document given as a graph is not one (nothing was sent).
    #[error("not a graph document: {0}")]
    NotAGraph(String),
    /// A message could not be sent (e.g. larger than the frame cap).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The client's name, for the service's logs.
    pub name: String,
    pub role: Role,
    /// The access token (needed when the service has one).
    pub token: Option<String>,
    /// Reconnect (and subscribe again) when the connection breaks.
    pub reconnect: bool,
    /// How long a call waits for its answer.
    pub timeout: Duration,
    /// Pushed messages kept for [`Client::next_event`]; beyond, the newest are dropped (and
    /// counted in an [`Event::Dropped`]).
    pub event_queue: usize,
    /// A `ping` is sent when nothing was sent for this long, so that the service does not close
    /// an idle connection (a subscriber only receives).
    pub keepalive: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: format!("client-lib/{}", env!("CARGO_PKG_VERSION")),
            role: Role::Editor,
            token: None,
            reconnect: true,
            timeout: Duration::from_secs(30),
            event_queue: 4096,
            keepalive: protocol1::PING_INTERVAL,
        }
    }
}

/// What arrives without being asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A finished bin of a subscribed result.
    Bin(Bin),
    /// Bins dropped (by the service for this slow client, or by this client's event queue).
    Dropped(u64),
    /// Bins the service could not send because they are too large for a frame (a result whose
    /// value is bigger than the protocol allows); they are counted in the `Dropped` that follows.
    TooLarge(protocol1::TooLarge),
    /// The connection broke and was established again; subscriptions were renewed. Bins
    /// published in between are missing.
    Reconnected,
}

/// The outcome of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Accepted(Accepted),
    Rejected(Rejected),
}

type Reply = oneshot::Sender<Result<ServerMessage, ClientError>>;

struct Call {
    msg: ClientMessage,
    reply: Reply,
}

/// An async client (tokio). Cheap calls; one connection.
pub struct Client {
    calls: mpsc::Sender<Call>,
    events: mpsc::Receiver<Event>,
    timeout: Duration,
    welcome_version: u64,
    next_id: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Connects and completes the handshake (a refusal, e.g. a wrong token, is an error here).
    pub async fn connect(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let conn = open(addr, &options).await?;
        let welcome_version = conn.1;
        let (calls, calls_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(options.event_queue.max(1));
        let timeout = options.timeout;
        tokio::spawn(
            Driver {
                addr: addr.to_string(),
                options,
                events: events_tx,
                dropped: 0,
                subscriptions: BTreeSet::new(),
            }
            .run(conn.0, calls_rx),
        );
        Ok(Client {
            calls,
            events,
            timeout,
            welcome_version,
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The graph version the service announced when this client connected.
    pub fn welcome_version(&self) -> u64 {
        self.welcome_version
    }

    /// Sends any message and returns its answer (an `error` answer is returned as is).
    pub async fn call(&self, msg: ClientMessage) -> Result<ServerMessage, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.calls.send(Call { msg, reply }).await.map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    async fn call_ok(&self, msg: ClientMessage) -> Result<ServerMessage, ClientError> {
        match self.call(msg).await? {
            ServerMessage::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Ok(other),
        }
    }

    /// Sends a request (edits and/or results, based on `base_version`).
    pub async fn request(&self, base_version: u64, edits: Vec<Edit>, results: Option<Vec<String>>) -> Result<Answer, ClientError> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = Request {
            id,
            base_version,
            edits,
            results,
        };
        match self.call_ok(ClientMessage::Request(request)).await? {
            ServerMessage::Accepted(a) => Ok(Answer::Accepted(a)),
            ServerMessage::Rejected(r) => Ok(Answer::Rejected(r)),
            other => Err(ClientError::Unexpected(other.kind().into())),
        }
    }

    /// Replaces the whole graph by `graph` (`{"nodes": [...], "results": [...]}`): edits from
    /// the current graph (fetched first) to the new one, based on the current version.
    pub async fn submit_graph(&self, graph: &Value) -> Result<Answer, ClientError> {
        check_graph_document(graph).map_err(ClientError::NotAGraph)?;
        let (version, current) = self.graph().await?;
        let (edits, results) = edits_between(&current, graph).map_err(|e| ClientError::NotAGraph(e.to_string()))?;
        self.request(version, edits, Some(results)).await
    }

    /// The current graph and its version.
    pub async fn graph(&self) -> Result<(u64, Value), ClientError> {
        match self.call_ok(ClientMessage::GetGraph {}).await? {
            ServerMessage::Graph { version, graph } => Ok((version, graph)),
            other => Err(ClientError::Unexpected(other.kind().into())),
        }
    }

    /// The service's status.
    pub async fn status(&self) -> Result<Value, ClientError> {
        match self.call_ok(ClientMessage::GetStatus {}).await? {
            ServerMessage::Status { status } => Ok(status),
            other => Err(ClientError::Unexpected(other.kind().into())),
        }
    }

    /// A key of the Control or Results store (`None` when absent).
    pub async fn get_key(&self, key: &str) -> Result<Option<Value>, ClientError> {
        match self.call_ok(ClientMessage::GetKey { key: key.into() }).await? {
            ServerMessage::Value { value, .. } => Ok(value),
            other => Err(ClientError::Unexpected(other.kind().into())),
        }
    }

    /// A round trip; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.call_ok(ClientMessage::Ping { nonce: Some(1) }).await? {
            ServerMessage::Pong { .. } => Ok(started.elapsed()),
            other => Err(ClientError::Unexpected(other.kind().into())),
        }
    }

    /// Subscribes to results; returns every name subscribed to. Renewed after reconnects.
    pub async fn subscribe(&self, results: &[&str]) -> Result<Vec<String>, ClientError> {
        let results = results.iter().map(|s| s.to_string()).collect();
        self.subscribed(ClientMessage::Subscribe { results }).await
    }

    /// Unsubscribes from results (all when `None`).
    pub async fn unsubscribe(&self, results: Option<&[&str]>) -> Result<Vec<String>, ClientError> {
        let results = results.map(|r| r.iter().map(|s| s.to_string()).collect());
        self.subscribed(ClientMessage::Unsubscribe { results }).await
    }

    async fn subscribed(&self, msg: ClientMessage) -> Result<Vec<String>, ClientError> {
        match self.call_ok(msg).await? {
            ServerMessage::Subscribed { results } => Ok(results),
            other => Err(ClientError::Unexpected(other.kind().into())),
        }
    }

    /// The next pushed event; `None` once the client is closed (connection lost without
    /// reconnecting).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// [`next_event`](Self::next_event) waiting at most `timeout` (`Ok(None)`: closed).
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .map_err(|_| ClientError::Timeout(timeout))
    }
}

/// Checks that `graph` has the shape of a graph document: an object with a `nodes` array and
/// a `results` array, and nothing else (a misspelt key would otherwise be ignored); and, when its
/// nodes and results are well formed, that it is within the size the service accepts
/// ([`protocol1::MAX_GRAPH_BYTES`], measured as the service does).
pub fn check_graph_document(graph: &Value) -> Result<(), String> {
    let Some(doc) = graph.as_object() else {
        return Err(format!(
            r#"a graph is a JSON object {{"nodes": [...], "results": [...]}}, not {}"#,
            json_kind(graph)
        ));
    };
    if let Some(key) = doc.keys().find(|k| *k != "nodes" && *k != "results") {
        return Err(format!("unknown key `{key}` (a graph has `nodes` and `results`)"));
    }
    for key in ["nodes", "results"] {
        match doc.get(key) {
            Some(Value::Array(_)) => {}
            Some(other) => return Err(format!("`{key}` must be an array, not {}", json_kind(other))),
            None => return Err(format!("`{key}` is missing")),
        }
    }
    // Ill-formed nodes are the service's to report, with every other problem.
    let nodes = serde_json::from_value::<Vec<NodeDoc>>(doc["nodes"].clone());
    let results = serde_json::from_value::<Vec<String>>(doc["results"].clone());
    if let (Ok(nodes), Ok(results)) = (nodes, results) {
        if let Some(why) = protocol1::graph_too_large(protocol1::graph_json_bytes(&nodes, &results)) {
            return Err(why);
        }
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Edits turning graph `from` into graph `to` (both `{"nodes", "results"}` documents): removed
/// nodes, replaced changed ones, added new ones; and `to`'s results.
pub fn edits_between(from: &Value, to: &Value) -> Result<(Vec<Edit>, Vec<String>), serde_json::Error> {
    let nodes = |g: &Value| -> Result<Vec<NodeDoc>, serde_json::Error> {
        match g.get("nodes") {
            Some(n) => serde_json::from_value(n.clone()),
            None => Ok(Vec::new()),
        }
    };
    let (old, new) = (nodes(from)?, nodes(to)?);
    let results: Vec<String> = serde_json::from_value(to.get("results").cloned().unwrap_or(Value::Null))?;
    let mut edits: Vec<Edit> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.id == o.id))
        .map(|o| Edit::RemoveNode { id: o.id.clone() })
        .collect();
    for node in new {
        match old.iter().find(|o| o.id == node.id) {
            Some(o) if *o == node => {}
            Some(_) => edits.push(Edit::ReplaceNode { node }),
            None => edits.push(Edit::AddNode { node }),
        }
    }
    Ok((edits, results))
}

type Conn = Connection<TcpStream>;

/// Connects and shakes hands; returns the connection and the welcome's graph version.
async fn open(addr: &str, options: &ClientOptions) -> Result<(Conn, u64), ClientError> {
    let fail = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let stream = tokio::time::timeout(options.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            fail(ProtocolError::Timeout {
                after_ms: options.timeout.as_millis() as u64,
            })
        })?
        .map_err(|e| fail(e.into()))?;
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(stream);
    let mut hello = Hello::new(options.name.clone(), options.role);
    hello.token = options.token.clone();
    let welcome = tokio::time::timeout(options.timeout, conn.client_handshake(&hello))
        .await
        .map_err(|_| {
            fail(ProtocolError::Timeout {
                after_ms: options.timeout.as_millis() as u64,
            })
        })?
        .map_err(fail)?;
    Ok((conn, welcome.graph_version))
}

/// The background task: owns the connection, matches answers to calls, queues pushes,
/// reconnects.
struct Driver {
    addr: String,
    options: ClientOptions,
    events: mpsc::Sender<Event>,
    /// Events that did not fit in the queue since the last `Dropped` event.
    dropped: u64,
    /// What the service last confirmed (`subscribed`), renewed after a reconnect.
    subscriptions: BTreeSet<String>,
}

/// What an awaited answer is for.
enum Waiter {
    Caller(Reply),
    /// The driver's own messages: the subscription renewal after a reconnect, keepalive pings.
    Internal,
}

impl Driver {
    async fn run(mut self, mut conn: Conn, mut calls: mpsc::Receiver<Call>) {
        loop {
            let broken = self.serve(&mut conn, &mut calls).await;
            if !broken || !self.options.reconnect {
                return;
            }
            match self.reconnect(&mut calls).await {
                Some(new) => conn = new,
                None => return,
            }
        }
    }

    /// Serves one connection; returns whether it broke (`false`: the client was dropped).
    async fn serve(&mut self, conn: &mut Conn, calls: &mut mpsc::Receiver<Call>) -> bool {
        let mut waiting: VecDeque<Waiter> = VecDeque::new();
        if !self.subscriptions.is_empty() {
            let results = self.subscriptions.iter().cloned().collect();
            if conn.send(&ClientMessage::Subscribe { results }).await.is_err() {
                return true;
            }
            waiting.push_back(Waiter::Internal);
        }
        let mut keepalive = tokio::time::interval(self.options.keepalive.max(Duration::from_millis(10)));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        let mut sent = false;
        let fail_all = |waiting: &mut VecDeque<Waiter>| {
            for waiter in waiting.drain(..) {
                if let Waiter::Caller(reply) = waiter {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
            }
        };
        loop {
            tokio::select! {
                call = calls.recv() => {
                    let Some(Call { msg, reply }) = call else { return false };
                    sent = true;
                    match conn.send(&msg).await {
                        Ok(()) => waiting.push_back(Waiter::Caller(reply)),
                        Err(err) if !err.is_fatal() || matches!(err, ProtocolError::FrameTooLarge { .. }) => {
                            let _ = reply.send(Err(err.into()));
                        }
                        Err(_) => {
                            let _ = reply.send(Err(ClientError::Disconnected));
                            fail_all(&mut waiting);
                            return true;
                        }
                    }
                }
                _ = keepalive.tick() => {
                    if !std::mem::take(&mut sent) {
                        if conn.send(&ClientMessage::Ping { nonce: None }).await.is_err() {
                            fail_all(&mut waiting);
                            return true;
                        }
                        waiting.push_back(Waiter::Internal);
                    }
                }
                msg = conn.recv::<ServerMessage>() => {
                    let msg = match msg {
                        Ok(Some(msg)) => msg,
                        Ok(None) | Err(_) => {
                            fail_all(&mut waiting);
                            return true;
                        }
                    };
                    match msg {
                        ServerMessage::Bin(bin) => self.push(Event::Bin(bin)),
                        ServerMessage::Dropped(d) => {
                            if let Some(too_large) = d.too_large {
                                self.push(Event::TooLarge(too_large));
                            }
                            self.push(Event::Dropped(d.count));
                        }
                        answer => {
                            if let ServerMessage::Subscribed { results } = &answer {
                                self.subscriptions = results.iter().cloned().collect();
                            }
                            match waiting.pop_front() {
                                Some(Waiter::Caller(reply)) => {
                                    let _ = reply.send(Ok(answer));
                                }
                                Some(Waiter::Internal) => {}
                                // A closing `error` not tied to a call (idle timeout, shutdown).
                                None => tracing::debug!("message from the service: {answer:?}"),
                            }
                        }
                    }
                }
            }
        }
    }

    fn push(&mut self, event: Event) {
        if self.dropped > 0 && self.events.try_send(Event::Dropped(self.dropped)).is_ok() {
            self.dropped = 0;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.dropped += 1;
        }
    }

    /// Reconnects with backoff (100 ms doubling to 2 s) until it works or the client is dropped;
    /// calls made meanwhile fail with `Disconnected`.
    async fn reconnect(&mut self, calls: &mut mpsc::Receiver<Call>) -> Option<Conn> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match open(&self.addr, &self.options).await {
                Ok((conn, _)) => {
                    self.push(Event::Reconnected);
                    return Some(conn);
                }
                Err(ClientError::Connect {
                    source: ProtocolError::Handshake { code, message },
                    ..
                }) if code == ErrorCode::Unauthorized || code == ErrorCode::ProtocolVersion => {
                    tracing::error!("reconnecting to {}: refused ({code}): {message}", self.addr);
                    return None;
                }
                Err(err) => tracing::debug!("reconnecting: {err}"),
            }
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    call = calls.recv() => match call {
                        Some(call) => { let _ = call.reply.send(Err(ClientError::Disconnected)); }
                        None => return None,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// The same API, blocking: runs a small tokio runtime of its own.
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    /// Connects (see [`Client::connect`]).
    pub fn connect(addr: &str, options: ClientOptions) -> Result<BlockingClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ami2-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol(e.into()))?;
        let client = runtime.block_on(Client::connect(addr, options))?;
        Ok(BlockingClient { runtime, client })
    }

    pub fn welcome_version(&self) -> u64 {
        self.client.welcome_version()
    }

    pub fn call(&self, msg: ClientMessage) -> Result<ServerMessage, ClientError> {
        self.runtime.block_on(self.client.call(msg))
    }

    pub fn request(&self, base_version: u64, edits: Vec<Edit>, results: Option<Vec<String>>) -> Result<Answer, ClientError> {
        self.runtime.block_on(self.client.request(base_version, edits, results))
    }

    pub fn submit_graph(&self, graph: &Value) -> Result<Answer, ClientError> {
        self.runtime.block_on(self.client.submit_graph(graph))
    }

    pub fn graph(&self) -> Result<(u64, Value), ClientError> {
        self.runtime.block_on(self.client.graph())
    }

    pub fn status(&self) -> Result<Value, ClientError> {
        self.runtime.block_on(self.client.status())
    }

    pub fn get_key(&self, key: &str) -> Result<Option<Value>, ClientError> {
        self.runtime.block_on(self.client.get_key(key))
    }

    pub fn ping(&self) -> Result<Duration, ClientError> {
        self.runtime.block_on(self.client.ping())
    }

    pub fn subscribe(&self, results: &[&str]) -> Result<Vec<String>, ClientError> {
        self.runtime.block_on(self.client.subscribe(results))
    }

    pub fn unsubscribe(&self, results: Option<&[&str]>) -> Result<Vec<String>, ClientError> {
        self.runtime.block_on(self.client.unsubscribe(results))
    }

    /// The next event, waiting at most `timeout` (`Ok(None)`: the client is closed).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        self.runtime.block_on(self.client.next_event_timeout(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_graph_documents_are_submitted() {
        assert_eq!(check_graph_document(&json!({"nodes": [], "results": []})), Ok(()));
        // Nodes as short as they come (`inputs` and `params` left out) count as the service
        // stores them, with `"inputs":[]` and `"params":null`.
        let nodes = |n: usize| (0..n).map(|k| json!({"id": format!("n{k:05}"), "op": "sum"})).collect::<Vec<_>>();
        let empty = r#"{"nodes":[],"results":[]}"#.len();
        let one = protocol1::graph_json_bytes(&[NodeDoc::new("n00001", "sum", &[], Value::Null)], &[]) - empty;
        // `n` nodes and the commas between them: the most within the bound, then one more.
        let within = (protocol1::MAX_GRAPH_BYTES - empty + 1) / (one + 1);
        assert_eq!(check_graph_document(&json!({"nodes": nodes(within), "results": []})), Ok(()));
        let too_large = json!({"nodes": nodes(within + 1), "results": []});
        for (doc, why) in [
            (json!([]), "not an array"),
            (json!(null), "not null"),
            (json!("s"), "not a string"),
            (json!({"nodes": [], "results": [], "extra": 1}), "unknown key `extra`"),
            (json!({"nodes": {}, "results": []}), "`nodes` must be an array, not an object"),
            (json!({"nodes": []}), "`results` is missing"),
            (too_large, "the graph is too large"),
        ] {
            let error = check_graph_document(&doc).unwrap_err();
            assert!(error.contains(why), "{doc}: {error}");
        }
    }

    #[test]
    fn edits_between_graphs() {
        let from = json!({"nodes": [
            {"id": "a", "op": "select", "params": {"field": "x", "kind": "scalar"}},
            {"id": "b", "op": "strip_chart", "inputs": ["a"]},
            {"id": "c", "op": "histogram", "inputs": ["a"], "params": {"bins": 2, "low": 0, "high": 1}}],
            "results": ["b", "c"]});
        let to = json!({"nodes": [
            {"id": "a", "op": "select", "params": {"field": "x", "kind": "scalar"}},
            {"id": "c", "op": "histogram", "inputs": ["a"], "params": {"bins": 4, "low": 0, "high": 1}},
            {"id": "d", "op": "strip_chart", "inputs": ["a"]}],
            "results": ["c", "d"]});
        let (edits, results) = edits_between(&from, &to).unwrap();
        let kinds: Vec<(&str, &str)> = edits
            .iter()
            .map(|e| {
                let kind = match e {
                    Edit::RemoveNode { .. } => "remove",
                    Edit::ReplaceNode { .. } => "replace",
                    Edit::AddNode { .. } => "add",
                    _ => "other",
                };
                (kind, e.node_id())
            })
            .collect();
        assert_eq!(kinds, vec![("remove", "b"), ("replace", "c"), ("add", "d")]);
        assert_eq!(results, vec!["c", "d"]);
        assert!(edits_between(&from, &json!({"nodes": 3})).is_err());
    }
}
