//! The one error type of the bridge.

use thiserror::Error;

/// Everything that can go wrong when driving Legion from Rust.
#[derive(Debug, Error)]
pub enum Error {
    /// A task ended by panicking or by returning an error; `task` is its registered name.
    #[error("task `{task}` {}: {message}", if *.panicked { "panicked" } else { "failed" })]
    TaskFailed { task: String, message: String, panicked: bool },
    /// Task arguments or results could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// Task arguments or results could not be decoded (wrong type at the two ends of a launch?).
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// Registering a task variant or callback went wrong.
    #[error("registration: {0}")]
    Registration(String),
    /// The runtime was already started in this process (Legion starts once per process).
    #[error("the Legion runtime was already started in this process; it cannot be started twice")]
    AlreadyStarted,
    /// The runtime stopped without running the top-level task to completion.
    #[error("the Legion runtime exited with code {code} before the top-level task finished")]
    RuntimeExit { code: i32 },
    /// This process is one of several of a launch, but the runtime came up without its peers
    /// (the network module failed to start): it refuses to run alone.
    #[error("{0}")]
    MissingPeers(String),
    /// A caller passed something Legion would reject or crash on.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A point outside the bounds an accessor covers.
    #[error("point {point} is outside {lo}..={hi}")]
    OutOfBounds { point: i64, lo: i64, hi: i64 },
    /// The region requirement does not grant what the accessor needs.
    #[error("region {index} was requested with {granted:?}, which does not allow {wanted}")]
    Privilege {
        index: usize,
        granted: crate::Privilege,
        wanted: &'static str,
    },
}

/// Result type of the bridge.
pub type Result<T, E = Error> = std::result::Result<T, E>;
