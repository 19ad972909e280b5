//! The ami2 event pipeline as Legion tasks: data sources, future-triggered workers running the
//! computation graph, local and global reducers, results.
//!
//! - [`event`]: frames (events) and time bins.
//! - [`graph`]: the computation graph: JSON format, validation, compiled per-event evaluation,
//!   mergeable per-bin partial results.
//! - [`source`]: the `DataSource` trait and the synthetic, file and shared-memory sources.
pub mod event;
pub mod graph;
pub mod source;
