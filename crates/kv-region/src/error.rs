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
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error(transparent)]
    Legion(#[from] legion_bridge::Error),
}

/// Result type of the store.
pub type KvResult<T> = Result<T, KvError>;
