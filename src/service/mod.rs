//! The client-facing service inside `ami2 run` / `ami2 demo`: a TCP server speaking both
//! protocols (docs/protocol.md) on tokio threads of its own, and the pipeline observer that
//! connects it to the Legion side (graph requests to the graph manager task, finished bins to
//! subscribers, key reads, status).
//!
//! It lives in the binary, not in a library crate: it is process wiring (a tokio runtime,
//! sockets, command-line options, a port file) around the Legion pipeline, and keeping it here
//! keeps `ami-tasks` free of networking. The Legion-facing logic it relies on (deciding and
//! installing graph edits) is `ami_tasks::graph_manager`.

mod hub;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ami_tasks::graph_manager::{edited_graph_key, GraphManagerReport, GraphRequests, PendingRequest};
use ami_tasks::pipeline::{current_graph_version, Flow, Observer};
use ami_tasks::stores::{graph_key, Stores};
use ami_tasks::{GlobalReport, PipelineError};
use anyhow::{bail, Context, Result};
use clap::Args;
use legion_bridge::TaskContext;
use protocol1::{ErrorCode, HandshakePolicy, ServerMessage};
use serde_json::Value;

pub use hub::Hub;
pub use server::ServerConfig;

/// The server's options (part of `run` and `demo`).
#[derive(Args, Clone, Debug)]
pub struct ServiceArgs {
    /// Address for clients (protocols 1 and 2). Port 0 picks a free port (see --port-file).
    /// Any address other than loopback needs --token-file.
    #[arg(long, default_value = protocol1::DEFAULT_ADDR)]
    listen: String,
    /// Do not listen for clients.
    #[arg(long, conflicts_with_all = ["listen", "token_file"])]
    no_listen: bool,
    /// File holding the access token clients must present (required off loopback).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Write the address actually listened on to this file once clients are served.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Most client connections at once.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// Close a client connection silent for this many seconds.
    #[arg(long, default_value_t = protocol1::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Bins queued per client before the oldest are dropped (fewer when they would take more than
    /// 32 MiB of memory).
    #[arg(long, default_value_t = protocol1::DEFAULT_SUBSCRIBER_QUEUE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    subscriber_queue: usize,
}

/// A running server: its tokio runtime (dropped with it) and the hub it shares with the driver.
pub struct Service {
    hub: Arc<Hub>,
    runtime: tokio::runtime::Runtime,
}

impl Service {
    /// Binds the listening socket (errors are reported now, before Legion starts) and starts
    /// serving once the driver published the first graph. `None` with `--no-listen`, or when
    /// the default address is taken (another ami2 runs: a warning, not an error).
    pub fn start(args: &ServiceArgs, bin_width_ns: u64) -> Result<Option<Service>> {
        let Some((addr, policy)) = Self::check(args)? else {
            return Ok(None);
        };
        let listener = match std::net::TcpListener::bind(addr) {
            Ok(listener) => listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && args.listen == protocol1::DEFAULT_ADDR => {
                tracing::warn!("{addr} is in use (another ami2?): not serving clients; choose another with --listen");
                eprintln!("ami2: {addr} is in use, not serving clients (use --listen ADDR)");
                return Ok(None);
            }
            Err(err) => return Err(err).with_context(|| format!("listening on {addr}")),
        };
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ami2-server")
            .enable_all()
            .build()
            .context("starting the server's runtime")?;
        let hub = Hub::new(bin_width_ns);
        hub.set_listen(local.to_string());
        let config = ServerConfig {
            policy,
            max_connections: args.max_connections,
            idle_timeout: Duration::from_secs(args.idle_timeout),
            queue_bins: args.subscriber_queue,
            ..ServerConfig::default()
        };
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(server::serve(listener, hub.clone(), config));
        let port_file = args.port_file.clone();
        let token_file = args.token_file.clone();
        let ready = hub.clone();
        runtime.spawn(async move {
            ready.wait_ready().await;
            // Where to look from another terminal (`--connect` only off the default address).
            let mut connect = if local.to_string() == protocol1::DEFAULT_ADDR {
                String::new()
            } else {
                format!(" --connect {local}")
            };
            if let Some(path) = &token_file {
                connect.push_str(&format!(" --token-file {}", path.display()));
            }
            eprintln!("ami2: serving clients on {local}; results live in another terminal: ami2 watch --table{connect}");
            if let Some(path) = port_file {
                if let Err(err) = write_atomically(&path, &local.to_string()) {
                    tracing::error!("writing {}: {err}", path.display());
                }
            }
        });
        Ok(Some(Service { hub, runtime }))
    }

    /// Checks the options without binding: the address to listen on and the clients' handshake,
    /// `None` with `--no-listen`. An error is a refused command line, not worth a restart.
    pub fn check(args: &ServiceArgs) -> Result<Option<(SocketAddr, HandshakePolicy)>> {
        if args.no_listen {
            return Ok(None);
        }
        let addr: SocketAddr = args
            .listen
            .parse()
            .with_context(|| format!("--listen {:?} is not an address like 127.0.0.1:7820", args.listen))
            .map_err(crate::refused)?;
        let token = match &args.token_file {
            Some(path) => Some(read_token(path).map_err(crate::refused)?),
            None => None,
        };
        let policy = HandshakePolicy::for_listen_addr(addr, token).map_err(|_| {
            crate::refused(anyhow::anyhow!(
                "listening on {addr} (not loopback) needs --token-file: clients off this machine must present a token"
            ))
        })?;
        Ok(Some((addr, policy)))
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// The pipeline ended: answers what is still waiting, gives writers a moment to send it.
    pub fn stop(self) {
        self.hub.stop();
        self.runtime.shutdown_timeout(Duration::from_millis(500));
    }
}

/// The token: the file's content without surrounding whitespace; an empty one is an error.
fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Wraps the run's own observer (table or JSON lines) and serves the hub from the driver.
pub struct ServiceObserver<O> {
    pub inner: O,
    pub hub: Option<Arc<Hub>>,
    started: bool,
}

impl<O> ServiceObserver<O> {
    pub fn new(inner: O, hub: Option<Arc<Hub>>) -> Self {
        ServiceObserver {
            inner,
            hub,
            started: false,
        }
    }
}

/// Stores a client may read with `get_key`.
const READABLE_PREFIXES: [&str; 4] = ["/control/", "/component/", "/incident/", "/results/"];

fn read_key(ctx: &TaskContext, stores: &Stores, key: &str) -> ServerMessage {
    if !READABLE_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return ServerMessage::error(
            ErrorCode::Forbidden,
            format!("keys readable by clients start with one of {}", READABLE_PREFIXES.join(", ")),
        );
    }
    let store = if key.starts_with("/results/") {
        &stores.results
    } else {
        &stores.control
    };
    if let Err(err) = kv_region::key::validate_key(key).and_then(|_| store.segment_of(key).map(drop)) {
        return ServerMessage::error(ErrorCode::InvalidRequest, err.to_string());
    }
    match store.get(ctx, key) {
        Ok(value) => ServerMessage::Value {
            key: key.to_string(),
            value,
        },
        Err(err) => ServerMessage::error(ErrorCode::Internal, err.to_string()),
    }
}

impl<O: Observer> Observer for ServiceObserver<O> {
    fn on_report(&mut self, ctx: &TaskContext, stores: &Stores, report: &GlobalReport) -> Result<Flow, PipelineError> {
        let flow = self.inner.on_report(ctx, stores, report)?;
        let Some(hub) = &self.hub else { return Ok(flow) };
        // At start, and when a graph failed at run time: then the driver may have installed
        // the built-in graph fitted again, and the workers run an earlier version.
        if !self.started || !report.failures.is_empty() {
            let version = current_graph_version(ctx, stores)?;
            if !self.started || version != hub.graph_version() {
                let doc = match stores.control.get(ctx, &edited_graph_key(version))? {
                    Some(doc) => doc,
                    None => stores.control.get(ctx, &graph_key(version))?.unwrap_or(Value::Null),
                };
                hub.set_graph(version, doc);
            }
            hub.set_graph_running(graph_running(ctx, stores, version)?);
            self.started = true;
        }
        hub.publish(report);
        for (key, reply) in hub.take_key_reads() {
            let _ = reply.send(read_key(ctx, stores, &key));
        }
        Ok(flow)
    }

    fn graph_requests(&mut self) -> Option<&mut dyn GraphRequests> {
        if self.hub.is_some() {
            Some(self)
        } else {
            None
        }
    }
}

impl<O> GraphRequests for ServiceObserver<O> {
    fn take_requests(&mut self) -> Vec<PendingRequest> {
        self.hub.as_ref().map(|h| h.take_requests()).unwrap_or_default()
    }

    fn answer(&mut self, report: GraphManagerReport) {
        if let Some(hub) = &self.hub {
            hub.answer(report);
        }
    }
}

/// The version the workers run when `current` is the current one: `current` unless it is
/// marked failed, then the version its mark says they reverted to, followed the same way.
fn graph_running(ctx: &TaskContext, stores: &Stores, current: u64) -> Result<Option<u64>, PipelineError> {
    let mut version = current;
    for _ in 0..ami_tasks::graph_manager::RETAINED_GRAPH_VERSIONS {
        match stores.control.get(ctx, &ami_tasks::stores::bad_graph_key(version))? {
            Some(mark) => match mark["reverted_to"].as_u64() {
                Some(earlier) => version = earlier,
                None => return Ok(None),
            },
            None => return Ok(Some(version)),
        }
    }
    Ok(None)
}
