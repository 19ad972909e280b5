//! The ami2 event pipeline as Legion tasks: data sources, future-triggered workers running the
//! computation graph, local and global reducers, results.
//!
//! - [`event`]: frames (events) and time bins.
//! - [`graph`]: the computation graph: JSON format, validation, compiled per-event evaluation,
//!   mergeable per-bin partial results.
//! - [`source`]: the `DataSource` trait and the synthetic, file and shared-memory sources.
//! - [`stores`]: how the pipeline lays out the Telemetry, Control and Results stores.
//! - [`tasks`]: the Legion tasks (data source, worker, local and global reducer).
//! - [`retention`]: which bins Results holds, kept small enough to travel in a future.
//! - [`graph_manager`]: clients' graph edits: decided, optimised, written durably to Control.
//! - [`pipeline`]: running it: graph installation, rounds of launches, observers;
//!   [`batch_tuner`]: the batch size, tuned while the sources are behind;
//!   [`partition_change`]: the sources' saved positions converted at a start with another
//!   partition count.
//! - [`robust`], [`health`], [`monitor`], [`fault`]: retries and incidents, heartbeats, the
//!   robustness monitor, fault injection for tests; [`incident_log`]: incidents kept in Control.
//! - `rate_limited`: counts of repeated conditions, logged once per interval.
//! - [`metrics`]: the service's metrics (updated by the pipeline's driver) and their summary;
//!   [`task_cpu`]: the CPU time of the sources' and workers' own work.
//! - [`placement`]: the ami-mapper placement policy plugged into the bridge's mapper.
//!
//! Call [`register_tasks`] before starting the runtime.
pub mod batch_tuner;
pub mod event;
pub mod fault;
pub mod frame_chunk;
pub mod graph;
pub mod graph_manager;
pub mod health;
pub mod incident_log;
mod json_values;
pub mod metrics;
pub mod monitor;
pub mod partition_change;
pub mod pipeline;
pub mod placement;
mod rate_limited;
pub mod retention;
pub mod robust;
pub mod source;
pub mod stores;
pub mod task_cpu;
pub mod tasks;

pub use graph_manager::{GraphManagerReport, GraphRequests, PendingRequest};
pub use pipeline::{install_graph, run, Flow, Observer, PipelineConfig, RunSummary, RunToEnd};
pub use tasks::{register_tasks, EmittedBin, GlobalReport};

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid graph: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidGraph(Vec<graph::GraphError>),
    #[error("configuration: {0}")]
    Config(String),
    #[error("ami_tasks::register_tasks() was not called before the runtime started")]
    NotRegistered,
    #[error(transparent)]
    Store(#[from] kv_region::KvError),
    /// A graph version could not be written to Control (nothing of it was kept).
    #[error("{0}")]
    GraphNotWritten(String),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Legion(#[from] legion_bridge::Error),
}
