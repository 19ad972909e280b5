//! Key-value store for JSON documents kept in Legion logical regions: the Telemetry, Control and
//! Results stores of ami2.
//!
//! - [`store`]: [`KeyValueStore`], one logical region over a 1-D index space cut into segments, one
//!   per owning key prefix (a contiguous range of points, so a partition by prefix hands each
//!   component exactly its part); operations run as Legion tasks on the segment they touch.
//! - [`segment`]: the layout of a segment inside its points (header, hash directory, allocation
//!   bitmap, values spanning consecutive points): the directory lives in the region itself.
//! - [`view`]: how a task that holds part of a store reads and writes it.
//! - [`persist`]: snapshots (checksummed, written atomically) and the append-only log of logged
//!   stores, used to rebuild the stores on start.
//! - [`typed`]: `TelemetryStore`, `ControlStore`, `ResultStore` with key helpers.
//! - [`key`]: key and prefix validation.
//!
//! Call [`register_tasks`] before starting the runtime.
mod error;
pub mod key;
pub mod persist;
pub mod segment;
pub mod store;
mod tasks;
pub mod typed;
pub mod view;

pub use error::{KvError, KvResult};
pub use segment::{Codec, SegmentSpec, Slot, SLOT_BYTES};
pub use store::{KeyValueStore, MappingTags, StoreConfig, DEFAULT_MAX_VALUE_BYTES};
pub use tasks::{register_tasks, LoadStats, Op, Outcome, SnapshotStats, KV_TASK_BASE};
pub use typed::{ControlStore, FieldValue, Frame, ResultStore, TelemetryCapacity, TelemetryStore};
