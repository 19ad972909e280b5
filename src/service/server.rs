//! The TCP server: a tokio runtime on its own threads, one task per connection (a reader that
//! handles messages one at a time, in order, and a writer that drains the connection's
//! [`Outbox`]). Layers as in tokio's mini-redis: frames (protocol1) → connection → message →
//! server; semaphores cap the handshakes in progress and the connections; accept errors back off.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol1::{ClientMessage, Connection, ErrorCode, HandshakePolicy, ProtocolError, Refused, Role, ServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::hub::{Hub, Outbox};

/// How the server treats connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub policy: HandshakePolicy,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Bins queued per connection before the oldest are dropped.
    pub queue_bins: usize,
    /// Answers queued per connection before the connection is closed (`busy`).
    pub queue_answers: usize,
    /// Result names one connection may subscribe to.
    pub max_subscriptions: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            policy: HandshakePolicy::open(),
            max_connections: 64,
            idle_timeout: protocol1::DEFAULT_IDLE_TIMEOUT,
            max_frame_bytes: protocol1::MAX_FRAME_BYTES,
            queue_bins: protocol1::DEFAULT_SUBSCRIBER_QUEUE,
            queue_answers: protocol1::DEFAULT_SUBSCRIBER_QUEUE,
            max_subscriptions: 1024,
        }
    }
}

const SERVER_NAME: &str = concat!("ami2/", env!("CARGO_PKG_VERSION"));

/// How long a closing connection may take to write what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Connections that may be in their handshake at once, apart from `max_connections`: sockets
/// that never say hello (probes, stuck clients) wait out the handshake timeout without taking
/// the places of clients.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Accepts connections (once the hub is ready) until the runtime is dropped.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, config: ServerConfig) {
    hub.wait_ready().await;
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES.max(config.max_connections)));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(err) => {
                // Out of file descriptors and the like: wait, then try again.
                tracing::warn!("accept failed: {err}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match handshakes.clone().try_acquire_owned() {
            Ok(handshake) => {
                let (hub, config, slots) = (hub.clone(), config.clone(), slots.clone());
                tokio::spawn(async move { connection(stream, peer, &hub, &config, handshake, &slots).await });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut conn = Connection::new(stream);
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.send(&ServerMessage::Refused(busy()))).await;
                });
            }
        }
    }
}

/// The refusal of a connection there is no room for.
fn busy() -> Refused {
    Refused {
        code: ErrorCode::Busy,
        message: "too many connections".into(),
    }
}

/// Serves one connection: its handshake (holding `handshake`), then, with one of the `slots`
/// of connections, its messages (without a slot its hello is refused, `busy`).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    hub: &Arc<Hub>,
    config: &ServerConfig,
    handshake: tokio::sync::OwnedSemaphorePermit,
    slots: &Arc<Semaphore>,
) {
    let mut conn = Connection::with_max_frame_length(stream, config.max_frame_bytes);
    // A place among the connections is taken once the client has said hello.
    let mut slot = None;
    let admit = |_: &protocol1::Hello| {
        slot = Some(slots.clone().try_acquire_owned().map_err(|_| busy())?);
        Ok(())
    };
    let handshake_done = conn
        .server_handshake_admitting(&config.policy, SERVER_NAME, hub.graph_version(), admit)
        .await;
    drop(handshake);
    let hello = match handshake_done {
        Ok(hello) => hello,
        Err(err) => {
            tracing::info!(%peer, "handshake refused: {err}");
            return;
        }
    };
    let _slot = slot;
    tracing::info!(%peer, client = %hello.client, role = ?hello.role, "client connected");
    // Kept with every graph version this connection makes (`ami2 graph history`).
    let sender = format!("{} at {peer}", hello.client);
    let (mut recv, mut send) = conn.split();
    let outbox = Arc::new(Outbox::new(config.queue_bins, config.queue_answers));
    let id = hub.connect(outbox.clone());
    let writer_outbox = outbox.clone();
    let mut writer = tokio::spawn(async move {
        // Results whose bins were too large to send, logged once per connection each.
        let mut too_large = BTreeSet::new();
        while let Some(msg) = writer_outbox.next().await {
            match send.send(&msg).await {
                Ok(()) => {}
                Err(ProtocolError::FrameTooLarge { len, max }) if msg.is_push() => {
                    let result = match &msg {
                        ServerMessage::Bin(bin) => bin.result.clone(),
                        _ => String::new(),
                    };
                    if too_large.insert(result.clone()) {
                        tracing::warn!(%peer, result, "a bin of {len} bytes exceeds the frame cap of {max}: not sent (nor are later ones of this result that are as large)");
                    }
                    writer_outbox.note_too_large(&result, len, max as u64);
                }
                Err(ProtocolError::FrameTooLarge { len, max }) => {
                    let error = ServerMessage::error(
                        ErrorCode::FrameTooLarge,
                        format!("the answer ({len} bytes) exceeds the frame cap ({max} bytes)"),
                    );
                    if send.send(&error).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = send.close().await;
    });

    loop {
        let msg = match recv.recv_timeout::<ClientMessage>(config.idle_timeout).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(err) => {
                tracing::info!(%peer, "closing the connection: {err}");
                if !matches!(err, ProtocolError::Io(_) | ProtocolError::UnexpectedEof) {
                    let _ = outbox.push(ServerMessage::error(err.code(), err.to_string()));
                }
                break;
            }
        };
        let (answer, closing) = handle(msg, &sender, hello.role, id, hub, config).await;
        if outbox.push(answer).is_err() {
            tracing::info!(%peer, "closing the connection: it does not read its answers");
            break;
        }
        if closing {
            break;
        }
    }
    hub.disconnect(id);
    outbox.close();
    if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
    tracing::info!(%peer, "client disconnected");
}

/// The answer to one message, and whether the connection closes after it.
async fn handle(msg: ClientMessage, sender: &str, role: Role, id: u64, hub: &Hub, config: &ServerConfig) -> (ServerMessage, bool) {
    let internal = || ServerMessage::error(ErrorCode::ShuttingDown, "the service stopped before answering");
    let answer = match msg {
        ClientMessage::Hello(_) => {
            return (
                ServerMessage::error(ErrorCode::UnexpectedMessage, "hello was already received on this connection"),
                true,
            )
        }
        ClientMessage::Request(request) if role != Role::Editor => hub.reject_forbidden(request.id),
        ClientMessage::Request(request) => hub.submit(request, sender.to_string()).await.unwrap_or_else(|_| internal()),
        ClientMessage::GetGraph {} => hub.graph(),
        ClientMessage::GetStatus {} => ServerMessage::Status { status: hub.status() },
        ClientMessage::GetKey { key } => hub.read_key(key).await.unwrap_or_else(|_| internal()),
        ClientMessage::Subscribe { results } => {
            if results.iter().any(String::is_empty) {
                ServerMessage::error(ErrorCode::InvalidRequest, "empty result name")
            } else {
                match hub.subscribe(id, results, config.max_subscriptions) {
                    Ok(results) => ServerMessage::Subscribed { results },
                    Err(max) => ServerMessage::error(ErrorCode::Busy, format!("at most {max} subscriptions per connection")),
                }
            }
        }
        ClientMessage::Unsubscribe { results } => ServerMessage::Subscribed {
            results: hub.unsubscribe(id, results),
        },
        ClientMessage::Ping { nonce } => ServerMessage::Pong { nonce },
    };
    (answer, false)
}
