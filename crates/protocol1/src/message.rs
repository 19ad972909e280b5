//! The two message enums: everything a client sends ([`ClientMessage`]) and everything a server
//! sends ([`ServerMessage`]), on one connection, for both protocols.
//!
//! JSON encoding: **internally tagged**. Every message is a JSON object whose `"type"` member
//! (snake_case) names the message and whose other members are its fields, e.g.
//! `{"type": "accepted", "id": 7, "version": 13}`. Unknown members are errors (`bad_json`),
//! an unknown `"type"` is `unknown_message`. The same holds for the edits of a request
//! (`{"type": "add_node", "node": {...}}`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::ErrorCode;
use crate::handshake::{Hello, Refused, Welcome};
use crate::requests::{Accepted, Rejected, Request};
use crate::results::{Bin, Dropped};

/// A message from a client. The first one must be [`ClientMessage::Hello`]; after it, the
/// server answers every message in order (see docs/protocol.md for which answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The handshake (first frame only). Answer: `welcome` or `refused`.
    Hello(Hello),
    /// Protocol 1: edits and/or desired results. Answer: `accepted` or `rejected`.
    Request(Request),
    /// The current graph. Answer: `graph`.
    GetGraph {},
    /// The service's status. Answer: `status`.
    GetStatus {},
    /// One key of the Control or Results store. Answer: `value`.
    GetKey {
        /// The full key, e.g. `/results/roi_mean/000000000042`.
        key: String,
    },
    /// Protocol 2: adds result names to the connection's subscriptions. Answer: `subscribed`;
    /// then `bin` messages as bins of these results are published.
    Subscribe {
        /// Result names (node ids).
        results: Vec<String>,
    },
    /// Removes result names from the subscriptions (all of them when `results` is absent).
    /// Answer: `subscribed`.
    Unsubscribe {
        /// Result names; absent: all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        results: Option<Vec<String>>,
    },
    /// Liveness check. Answer: `pong` with the same nonce.
    Ping {
        /// Echoed in `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

impl ClientMessage {
    /// Every `"type"` of a client message.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "request",
        "get_graph",
        "get_status",
        "get_key",
        "subscribe",
        "unsubscribe",
        "ping",
    ];

    /// The message's `"type"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::Request(_) => "request",
            ClientMessage::GetGraph {} => "get_graph",
            ClientMessage::GetStatus {} => "get_status",
            ClientMessage::GetKey { .. } => "get_key",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::Ping { .. } => "ping",
        }
    }
}

impl From<Hello> for ClientMessage {
    fn from(hello: Hello) -> Self {
        ClientMessage::Hello(hello)
    }
}

impl From<Request> for ClientMessage {
    fn from(request: Request) -> Self {
        ClientMessage::Request(request)
    }
}

/// A message from the server: an answer to a client message, or a pushed `bin` / `dropped`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// `hello` accepted.
    Welcome(Welcome),
    /// `hello` refused; the server closes the connection.
    Refused(Refused),
    /// Protocol 1: the request was applied; the graph has a new version.
    Accepted(Accepted),
    /// Protocol 1: the request was not applied.
    Rejected(Rejected),
    /// The current graph (`{"nodes": [...], "results": [...]}`, docs/graph.md) and its version.
    Graph {
        /// The graph's version.
        version: u64,
        /// The graph.
        graph: Value,
    },
    /// The service's status, free-form JSON.
    Status {
        /// The status.
        status: Value,
    },
    /// A store key's value: `value` absent when the key does not exist (present, possibly
    /// `null`, when it does).
    Value {
        /// The key asked for.
        key: String,
        /// The value, if the key exists.
        #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
    /// The connection's subscriptions after a `subscribe` or `unsubscribe` (sorted).
    Subscribed {
        /// Every subscribed result name.
        results: Vec<String>,
    },
    /// The answer to `ping`.
    Pong {
        /// The `ping`'s nonce.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// Protocol 2: a finished time bin of a subscribed result.
    Bin(Bin),
    /// Protocol 2: bins dropped for this (slow) subscriber since the previous notice.
    Dropped(Dropped),
    /// A failure not tied to a request: the answer to a message that could not be handled, or a
    /// notice before the server closes the connection.
    Error {
        /// Why.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
}

/// A present member (even `null`) is `Some`; an absent one is `None` via `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl ServerMessage {
    /// Every `"type"` of a server message.
    pub const TYPES: &'static [&'static str] = &[
        "welcome",
        "refused",
        "accepted",
        "rejected",
        "graph",
        "status",
        "value",
        "subscribed",
        "pong",
        "bin",
        "dropped",
        "error",
    ];

    /// The message's `"type"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Refused(_) => "refused",
            ServerMessage::Accepted(_) => "accepted",
            ServerMessage::Rejected(_) => "rejected",
            ServerMessage::Graph { .. } => "graph",
            ServerMessage::Status { .. } => "status",
            ServerMessage::Value { .. } => "value",
            ServerMessage::Subscribed { .. } => "subscribed",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Bin(_) => "bin",
            ServerMessage::Dropped(_) => "dropped",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// Whether the server pushes this message on its own (not an answer).
    pub fn is_push(&self) -> bool {
        matches!(self, ServerMessage::Bin(_) | ServerMessage::Dropped(_))
    }
}

macro_rules! into_server_message {
    ($($ty:ident),*) => {$(
        impl From<$ty> for ServerMessage {
            fn from(msg: $ty) -> Self {
                ServerMessage::$ty(msg)
            }
        }
    )*};
}
into_server_message!(Welcome, Refused, Accepted, Rejected, Bin, Dropped);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::Role;
    use serde_json::json;

    fn client(v: Value) -> Result<ClientMessage, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn tagging_and_unknown_fields() {
        assert_eq!(client(json!({"type": "get_graph"})).unwrap(), ClientMessage::GetGraph {});
        assert_eq!(client(json!({"type": "ping"})).unwrap(), ClientMessage::Ping { nonce: None });
        assert!(client(json!({"type": "get_graph", "x": 1})).is_err());
        assert!(client(json!({"type": "ping", "nonce": 1, "x": 1})).is_err());
        assert!(client(json!({"type": "hello", "protocol": 1, "client": "c", "role": "editor", "x": 1})).is_err());
        assert!(client(json!({"type": "hello", "protocol": 1, "client": "c", "role": "admin"})).is_err());
        assert!(client(json!({"type": "nope"})).is_err());
        assert!(client(json!({"protocol": 1})).is_err());
        let hello = client(json!({"type": "hello", "protocol": 1, "client": "c", "role": "subscriber"})).unwrap();
        assert_eq!(hello, ClientMessage::Hello(Hello::new("c", Role::Subscriber)));
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            json!({"type": "hello", "protocol": 1, "client": "c", "token": null, "role": "subscriber"})
        );
    }

    #[test]
    fn value_distinguishes_absent_from_null() {
        let absent = ServerMessage::Value {
            key: "/k".into(),
            value: None,
        };
        let null = ServerMessage::Value {
            key: "/k".into(),
            value: Some(Value::Null),
        };
        assert_eq!(serde_json::to_value(&absent).unwrap(), json!({"type": "value", "key": "/k"}));
        assert_eq!(
            serde_json::to_value(&null).unwrap(),
            json!({"type": "value", "key": "/k", "value": null})
        );
        for msg in [absent, null] {
            let back: ServerMessage = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn kinds_match_tags() {
        let msgs = [
            ClientMessage::Hello(Hello::new("c", Role::Editor)),
            ClientMessage::Request(Request {
                id: 1,
                base_version: 2,
                edits: vec![],
                results: None,
            }),
            ClientMessage::GetGraph {},
            ClientMessage::GetStatus {},
            ClientMessage::GetKey { key: "/k".into() },
            ClientMessage::Subscribe { results: vec![] },
            ClientMessage::Unsubscribe { results: None },
            ClientMessage::Ping { nonce: None },
        ];
        for (msg, ty) in msgs.iter().zip(ClientMessage::TYPES) {
            assert_eq!(msg.kind(), *ty);
            assert_eq!(serde_json::to_value(msg).unwrap()["type"], json!(ty));
        }
        assert_eq!(msgs.len(), ClientMessage::TYPES.len());
    }
}
