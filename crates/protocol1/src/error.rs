//! Error codes (stable numbers and names, sent on the wire) and the crate's error type.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $desc:literal; )*) => {
        /// Why something failed: a typed code with a stable number ([`ErrorCode::number`]) and a
        /// stable snake_case name ([`ErrorCode::name`]).
        ///
        /// On the wire a code is its name (`"conflict"`); a number (`21`) is accepted too when
        /// decoding. Numbers and names never change meaning; new codes come only with a new
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION). Codes marked *local* describe what a
        /// peer observes about the connection itself and are never sent.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl ErrorCode {
            /// Every code, in number order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable number.
            pub const fn number(self) -> u16 {
                self as u16
            }

            /// The stable name, as sent on the wire.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// A one-line description.
            pub const fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $desc,)* }
            }

            /// The code with this number, if any.
            pub fn from_number(number: u64) -> Option<ErrorCode> {
                match number { $($num => Some(ErrorCode::$variant),)* _ => None }
            }

            /// The code with this name, if any.
            pub fn from_name(name: &str) -> Option<ErrorCode> {
                match name { $($name => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// A frame that cannot be read (bad length prefix, connection unusable after a framing error).
    BadFrame = 1, "bad_frame", "the frame could not be read";
    /// A frame whose length prefix exceeds the receiver's cap.
    FrameTooLarge = 2, "frame_too_large", "the frame is longer than the size cap";
    /// A payload that is not valid JSON for any message, or a message with missing, unknown or
    /// ill-typed fields.
    BadJson = 3, "bad_json", "the payload is not a valid JSON message";
    /// A JSON object whose `type` names no message of this protocol version.
    UnknownMessage = 4, "unknown_message", "the message type is unknown";
    /// A valid message at the wrong time (anything before `hello`, a second `hello`, an answer
    /// other than `welcome`/`refused` to `hello`).
    UnexpectedMessage = 5, "unexpected_message", "the message is not allowed at this point";
    /// *Local*: the peer closed the connection in the middle of a frame.
    UnexpectedEof = 6, "unexpected_eof", "the peer closed the connection in the middle of a frame";
    /// *Local*: the peer closed the connection where a message was required.
    Closed = 7, "closed", "the connection is closed";
    /// *Local*: an I/O error on the transport.
    Io = 8, "io", "an I/O error on the transport";
    /// `hello.protocol` differs from the server's protocol version.
    ProtocolVersion = 10, "protocol_version", "unsupported protocol version";
    /// Missing or wrong access token.
    Unauthorized = 11, "unauthorized", "missing or wrong access token";
    /// The connection's role does not allow this message (a subscriber sending `request`).
    Forbidden = 12, "forbidden", "not allowed for this role";
    /// A structurally invalid request (nothing to do, empty ids, duplicate result names,
    /// parameters that are not an object, ...).
    InvalidRequest = 20, "invalid_request", "the request is malformed";
    /// The request's `base_version` is not the current graph version.
    Conflict = 21, "conflict", "the request is based on an outdated graph version";
    /// The graph resulting from the request does not validate.
    InvalidGraph = 22, "invalid_graph", "the resulting graph is invalid";
    /// An edit names a node that does not exist.
    UnknownNode = 23, "unknown_node", "no such node";
    /// `add_node` with the id of an existing node.
    DuplicateNode = 24, "duplicate_node", "a node with this id exists";
    /// The thing asked for does not exist.
    NotFound = 25, "not_found", "not found";
    /// The server is overloaded (or a connection's queue of answers is full).
    Busy = 30, "busy", "the server is busy";
    /// Nothing was received for too long (or a handshake took too long).
    IdleTimeout = 31, "idle_timeout", "the connection was idle too long";
    /// The server is stopping.
    ShuttingDown = 32, "shutting_down", "the server is shutting down";
    /// A bug or an unexpected failure in the server.
    Internal = 33, "internal", "internal error";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;
        impl Visitor<'_> for CodeVisitor {
            type Value = ErrorCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error code name or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ErrorCode, E> {
                ErrorCode::from_name(v).ok_or_else(|| E::custom(format!("unknown error code `{}`", truncate(v, 64))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ErrorCode, E> {
                ErrorCode::from_number(v).ok_or_else(|| E::custom(format!("unknown error code {v}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ErrorCode, E> {
                u64::try_from(v)
                    .ok()
                    .and_then(ErrorCode::from_number)
                    .ok_or_else(|| E::custom(format!("unknown error code {v}")))
            }
        }
        deserializer.deserialize_any(CodeVisitor)
    }
}

/// What can go wrong when speaking the protocols. Every variant maps to an [`ErrorCode`]
/// ([`ProtocolError::code`]); [`ProtocolError::is_fatal`] tells whether the connection can go on.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// An I/O error on the transport.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than the cap (announced by a peer's length prefix, or about to be sent).
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    FrameTooLarge {
        /// The frame's length (announced, or of the payload to send).
        len: u64,
        /// The cap.
        max: usize,
    },
    /// A frame that cannot be read; the connection is unusable.
    #[error("bad frame: {reason}")]
    BadFrame {
        /// What is wrong.
        reason: String,
    },
    /// A payload that is not the expected JSON message (or a message that cannot be encoded).
    #[error("bad JSON message: {reason}")]
    BadJson {
        /// The JSON error (truncated to 256 bytes).
        reason: String,
    },
    /// A JSON object whose `type` is not a message of this protocol version.
    #[error("unknown message type `{kind}`")]
    UnknownMessage {
        /// The `"type"` received (truncated to 64 bytes).
        kind: String,
    },
    /// A valid message where another one was required.
    #[error("unexpected message: expected {expected}, got `{got}`")]
    UnexpectedMessage {
        /// What was required.
        expected: &'static str,
        /// The `"type"` received.
        got: String,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("the peer closed the connection in the middle of a frame")]
    UnexpectedEof,
    /// The peer closed the connection where a message was required.
    #[error("the connection is closed")]
    Closed,
    /// The handshake failed: refused by the server (with its code), or refused by us.
    #[error("handshake failed ({code}): {message}")]
    Handshake {
        /// Why (from `refused`).
        code: ErrorCode,
        /// The explanation.
        message: String,
    },
    /// The peer reported an error (`error` message) where an answer was expected.
    #[error("peer error ({code}): {message}")]
    Remote {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
    /// Nothing was received in time.
    #[error("nothing received for {after_ms} ms")]
    Timeout {
        /// How long we waited.
        after_ms: u64,
    },
    /// A connection's outgoing queue is full of messages that cannot be dropped.
    #[error("outgoing queue full ({cap} messages)")]
    QueueFull {
        /// The queue's capacity for such messages.
        cap: usize,
    },
    /// A listening address that is not loopback without an access token.
    #[error("listening on {addr} (not loopback) needs an access token")]
    InsecureListen {
        /// The address.
        addr: std::net::SocketAddr,
    },
}

impl ProtocolError {
    /// The error code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Io(_) => ErrorCode::Io,
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::BadFrame { .. } => ErrorCode::BadFrame,
            ProtocolError::BadJson { .. } => ErrorCode::BadJson,
            ProtocolError::UnknownMessage { .. } => ErrorCode::UnknownMessage,
            ProtocolError::UnexpectedMessage { .. } => ErrorCode::UnexpectedMessage,
            ProtocolError::UnexpectedEof => ErrorCode::UnexpectedEof,
            ProtocolError::Closed => ErrorCode::Closed,
            ProtocolError::Handshake { code, .. } | ProtocolError::Remote { code, .. } => *code,
            ProtocolError::Timeout { .. } => ErrorCode::IdleTimeout,
            ProtocolError::QueueFull { .. } => ErrorCode::Busy,
            ProtocolError::InsecureListen { .. } => ErrorCode::Unauthorized,
        }
    }

    /// Whether the connection cannot be used after this error. Only errors about one frame's
    /// content (`BadJson`, `UnknownMessage`, `UnexpectedMessage`, `Remote`) leave the framing
    /// intact; a server still disconnects a client that sends such frames (see docs/protocol.md).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ProtocolError::BadJson { .. }
                | ProtocolError::UnknownMessage { .. }
                | ProtocolError::UnexpectedMessage { .. }
                | ProtocolError::Remote { .. }
                | ProtocolError::QueueFull { .. }
        )
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_are_unique_and_round_trip() {
        let mut numbers = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(numbers.insert(code.number()));
            assert!(names.insert(code.name()));
            assert_eq!(ErrorCode::from_number(u64::from(code.number())), Some(code));
            assert_eq!(ErrorCode::from_name(code.name()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.name()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(serde_json::from_str::<ErrorCode>(&code.number().to_string()).unwrap(), code);
        }
    }

    #[test]
    fn stable_numbers() {
        assert_eq!(ErrorCode::BadFrame.number(), 1);
        assert_eq!(ErrorCode::FrameTooLarge.number(), 2);
        assert_eq!(ErrorCode::Conflict.number(), 21);
        assert_eq!(ErrorCode::Internal.number(), 33);
        assert_eq!(ErrorCode::Conflict.to_string(), "conflict");
    }

    #[test]
    fn unknown_codes_are_errors() {
        assert!(serde_json::from_str::<ErrorCode>("\"nope\"").is_err());
        assert!(serde_json::from_str::<ErrorCode>("999").is_err());
        assert!(serde_json::from_str::<ErrorCode>("-1").is_err());
        assert!(serde_json::from_str::<ErrorCode>("1.5").is_err());
        assert!(serde_json::from_str::<ErrorCode>("null").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
