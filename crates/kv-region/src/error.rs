//! Errors of the key-value store.

use std::path::PathBuf;

use thiserror::Error;

/// Everything a store operation can refuse or fail with. A refused operation leaves the store
/// unchanged.
#[derive(Debug, Error)]
pub enum KvError {
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("value for {key:?} is not valid JSON: {reason}")]
    InvalidJson { key: String, reason: String },
    #[error("value for {key:?} is {len} bytes, over the limit of {max} bytes")]
    ValueTooLarge { key: String, len: usize, max: usize },
    #[error("store segment {prefix:?} is full: {what} (needed {needed}, free {free}); give it more capacity")]
    StoreFull {
        prefix: String,
        what: &'static str,
        needed: usize,
        free: usize,
    },
    #[error("key {key:?} is not in the part of the store this task holds")]
    KeyNotInView { key: String },
    #[error("no part of the store is under prefix {prefix:?}")]
    UnknownPrefix { prefix: String },
    #[error("value of {key:?} is stored as {found}, not {wanted}")]
    WrongCodec {
        key: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("store layout: {0}")]
    Layout(String),
    #[error("{path}: corrupt or truncated {what}: {reason}")]
    Corrupt { path: PathBuf, what: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A segment's files cannot be loaded without losing data silently (no snapshot verifies,
    /// or the log continues a snapshot that is not there). Loading again fails the same way.
    #[error("segment {prefix:?} cannot be loaded: {reason}. To recover: {recovery}")]
    CannotLoad { prefix: String, reason: String, recovery: String },
    /// Loading a store from its data directory failed ([`KvError::CannotLoad`], an unreadable
    /// file, too little capacity for what it holds): starting again fails the same way until
    /// the files or the configuration are changed.
    #[error("store {store:?} cannot be loaded from {dir}: {message}")]
    LoadFailed { store: String, dir: PathBuf, message: String },
    /// A snapshot could not be written (the logs, if any, still hold every change).
    #[error("snapshot of store {store:?} failed: {reason}")]
    SnapshotFailed { store: String, reason: String },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error(transparent)]
    Legion(#[from] legion_bridge::Error),
}

impl KvError {
    /// True for a store that could not be loaded from its data directory: trying again without
    /// changing the files (or the store's capacity) fails the same way.
    pub fn is_load_failure(&self) -> bool {
        matches!(self, Self::LoadFailed { .. } | Self::CannotLoad { .. })
    }
}

/// Result type of the store.
pub type KvResult<T> = Result<T, KvError>;
