//! Wire protocols between clients and the ami2 service. Clients talk to the service over TCP in
//! length-prefixed frames of JSON: **protocol 1** carries graph modifications and the list of
//! desired results (answered with the new graph version, or rejected with reasons — a request
//! names the graph version it was based on, so that concurrent edits by several clients are
//! detected as conflicts), plus read-only queries (graph, status, store keys); **protocol 2**
//! pushes every finished time bin of the results a client subscribed to, dropping the oldest
//! bins of a slow subscriber and telling it how many. This crate holds the message types, the
//! framing ([`FrameCodec`], [`Connection`]), the handshake and access policy, and the server's
//! per-connection bounded queue; the service and `client-lib` build on it. It knows nothing of
//! Legion: graphs travel as JSON. The specification, precise enough for clients in other
//! languages, is `docs/protocol.md` at the root of the workspace.
//!
//! ```
//! use protocol1::{ClientMessage, Edit, NodeDoc, Request, ServerMessage};
//! use serde_json::json;
//!
//! let msg = ClientMessage::Request(Request {
//!     id: 1,
//!     base_version: 12,
//!     edits: vec![Edit::AddNode { node: NodeDoc::new("roi_sum", "sum", &["roi"], json!(null)) }],
//!     results: Some(vec!["roi_sum".into()]),
//! });
//! let frame = protocol1::encode_frame(&msg, protocol1::MAX_FRAME_BYTES).unwrap();
//! assert_eq!(protocol1::decode_client_frame(&frame, protocol1::MAX_FRAME_BYTES).unwrap(), vec![msg]);
//! let answer: ServerMessage = serde_json::from_str(r#"{"type": "accepted", "id": 1, "version": 13}"#).unwrap();
//! assert_eq!(answer, ServerMessage::Accepted(protocol1::Accepted { id: 1, version: 13 }));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod framing;
pub mod handshake;
pub mod message;
pub mod requests;
pub mod results;

use std::time::Duration;

pub use error::{ErrorCode, ProtocolError};
pub use framing::{
    decode_client_frame, decode_frames, decode_message, encode_frame, encode_message, Connection, FrameCodec, RecvHalf, SendHalf,
    LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES,
};
pub use handshake::{HandshakePolicy, Hello, Refused, Role, Welcome, DEFAULT_HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};
pub use message::{ClientMessage, ServerMessage};
pub use requests::{
    check_base_version, graph_json_bytes, graph_too_large, Accepted, Edit, NodeDoc, Reason, Rejected, Request, MAX_GRAPH_BYTES,
    MAX_LISTED_REASONS, MAX_REASON_TEXT_BYTES,
};
pub use results::{value_bytes, Bin, Dropped, SubscriberQueue, TooLarge, DEFAULT_SUBSCRIBER_QUEUE, SUBSCRIBER_QUEUE_BYTES};

/// The address the service listens on by default (loopback only; any other address needs an
/// access token, see [`HandshakePolicy::for_listen_addr`]).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7820";

/// A server closes a connection from which nothing arrived for this long (after an `error`
/// with code `idle_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A client with nothing else to send pings at least this often.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
