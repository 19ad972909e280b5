//! The handshake: the client's first frame is `hello`; the server answers `welcome` or
//! `refused` (then closes). Also the server's access policy ([`HandshakePolicy`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};
use crate::message::ClientMessage;

/// The protocol version this crate speaks (`hello.protocol`, `welcome.protocol`).
pub const PROTOCOL_VERSION: u32 = 1;

/// What a connection is for. An editor may send every message; a subscriber every message
/// except `request` (it is read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Edits the graph (protocol 1) and may also read and subscribe.
    Editor,
    /// Reads and subscribes to results (protocol 2); cannot edit.
    Subscriber,
}

impl Role {
    /// Whether a connection with this role may send `msg` after the handshake.
    pub fn allows(self, msg: &ClientMessage) -> bool {
        match msg {
            ClientMessage::Hello(_) => false,
            ClientMessage::Request(_) => self == Role::Editor,
            _ => true,
        }
    }
}

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the client speaks: [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// A free-form name of the client, for logs (e.g. `"ami2-gui/0.1 on host7"`).
    pub client: String,
    /// The access token, required when the server has one.
    #[serde(default)]
    pub token: Option<String>,
    /// What the connection is for.
    pub role: Role,
}

impl Hello {
    /// A `hello` for this crate's protocol version, without a token.
    pub fn new(client: impl Into<String>, role: Role) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            client: client.into(),
            token: None,
            role,
        }
    }

    /// The same with an access token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// The server's answer to an accepted `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The protocol version the server speaks (equal to the client's).
    pub protocol: u32,
    /// A free-form name of the server (e.g. `"ami2/0.1.0"`).
    pub server: String,
    /// The current graph version, to use as the first request's `base_version`.
    pub graph_version: u64,
}

/// The server's answer to a refused `hello`; the server closes the connection after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refused {
    /// `protocol_version`, `unauthorized`, `unexpected_message`, `idle_timeout`, `busy`, ...
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// How long a server waits for `hello` by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may connect (the server's access token, if any) and how long the handshake may take.
///
/// Rule: a server listening on a loopback address may run without a token; one listening on any
/// other address must have a token ([`HandshakePolicy::for_listen_addr`]); a server with a
/// token requires it in every `hello`, loopback clients included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakePolicy {
    token: Option<String>,
    timeout: Duration,
}

impl Default for HandshakePolicy {
    fn default() -> Self {
        HandshakePolicy::open()
    }
}

impl HandshakePolicy {
    /// No token: for loopback listeners only.
    pub fn open() -> Self {
        HandshakePolicy {
            token: None,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Every client must present `token` (an empty token counts as none).
    pub fn with_token(token: impl Into<String>) -> Self {
        let token = token.into();
        HandshakePolicy {
            token: (!token.is_empty()).then_some(token),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The same policy with another handshake timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the server waits for `hello`.
    pub fn handshake_timeout(&self) -> Duration {
        self.timeout
    }

    /// The policy for a listener bound to `addr`: refuses a non-loopback address without a
    /// (non-empty) token.
    pub fn for_listen_addr(addr: SocketAddr, token: Option<String>) -> Result<Self, ProtocolError> {
        let policy = token.map(HandshakePolicy::with_token).unwrap_or_default();
        if policy.token.is_none() && !addr.ip().is_loopback() {
            return Err(ProtocolError::InsecureListen { addr });
        }
        Ok(policy)
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a `hello`: protocol version first, then the token.
    pub fn check(&self, hello: &Hello) -> Result<(), Refused> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Refused {
                code: ErrorCode::ProtocolVersion,
                message: format!("the server speaks protocol {PROTOCOL_VERSION}, not {}", hello.protocol),
            });
        }
        if let Some(expected) = &self.token {
            let ok = hello
                .token
                .as_deref()
                .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes()));
            if !ok {
                let message = if hello.token.is_some() {
                    "wrong access token"
                } else {
                    "an access token is required"
                };
                return Err(Refused {
                    code: ErrorCode::Unauthorized,
                    message: message.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Compares without stopping at the first difference (the length is not hidden).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_checks_version_then_token() {
        let hello = Hello::new("t", Role::Editor);
        assert_eq!(HandshakePolicy::open().check(&hello), Ok(()));
        let old = Hello {
            protocol: 0,
            ..hello.clone()
        };
        assert_eq!(
            HandshakePolicy::with_token("s3cret").check(&old).unwrap_err().code,
            ErrorCode::ProtocolVersion
        );
        let policy = HandshakePolicy::with_token("s3cret");
        assert!(policy.requires_token());
        assert_eq!(policy.check(&hello).unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(
            policy.check(&hello.clone().with_token("s3creT")).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            policy.check(&hello.clone().with_token("s3cret!")).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(policy.check(&hello.clone().with_token("s3cret")), Ok(()));
        // A token sent to an open server is ignored.
        assert_eq!(HandshakePolicy::open().check(&hello.with_token("x")), Ok(()));
    }

    #[test]
    fn non_loopback_listeners_need_a_token() {
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(HandshakePolicy::for_listen_addr(lo, None).unwrap(), HandshakePolicy::open());
        assert!(HandshakePolicy::for_listen_addr(lo6, None).is_ok());
        let err = HandshakePolicy::for_listen_addr(any, None).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthorized);
        assert!(HandshakePolicy::for_listen_addr(any, Some(String::new())).is_err());
        assert!(HandshakePolicy::for_listen_addr(any, Some("t".into())).unwrap().requires_token());
        assert!(HandshakePolicy::for_listen_addr(lo, Some("t".into())).unwrap().requires_token());
    }

    #[test]
    fn roles() {
        let req = ClientMessage::Request(crate::Request {
            id: 1,
            base_version: 0,
            edits: vec![],
            results: None,
        });
        assert!(Role::Editor.allows(&req));
        assert!(!Role::Subscriber.allows(&req));
        let sub = ClientMessage::Subscribe { results: vec!["a".into()] };
        assert!(Role::Editor.allows(&sub) && Role::Subscriber.allows(&sub));
        assert!(!Role::Editor.allows(&ClientMessage::Hello(Hello::new("x", Role::Editor))));
    }
}
