//! Keeping Rust panics on the Rust side of the FFI boundary.
//!
//! Every function Legion calls runs its Rust body through [`catch`]: a panic becomes a value the
//! caller reports (a failed task result, a logged callback error) instead of unwinding into C++.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`, turning a panic into `Err(message)`.
pub fn catch<T>(body: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(body)).map_err(|payload| message(payload.as_ref()))
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}
