//! Placement policy of ami2, in plain Rust and independent of Legion. ami2 runs its data sources,
//! workers, reducers, graph manager and robustness monitors as Legion tasks; this crate decides where
//! each of them runs and where its region instances live. Telemetry partitions are spread over the
//! *data nodes*: a partition's data source, worker and segment persistence run on the node owning it,
//! on the same CPU (the data source on an IO processor when the node has some), and its subregion lives
//! in that node's memory. The graph manager, global reducer,
//! results publisher and robustness monitors run on the *service nodes* (one monitor per service node).
//! With one address space everything runs there.
//!
//! How a mapper uses it: the C++ mapper shim, given the Legion machine at startup, builds a [`Machine`]
//! and a [`Placement`] once (per process; every process gets the same answers). Every task carries its
//! [`TaskKind`] in its mapping tag ([`TaskKind::to_tag`]); in `select_task_options` / `map_task` the shim
//! decodes the tag ([`TaskKind::from_tag`]) and asks [`Placement::processor_for`] (or [`Placement::place`]),
//! in `slice_task` it asks [`Placement::slice_index_launch`], and for each region requirement it asks
//! [`Placement::memory_for`] (or [`Placement::memory_on`]) for the target memory of the instance. A tag
//! that is not an ami2 task kind (Legion's default tag 0, say) decodes to `None`, and what to do with such
//! a task is the shim's choice. See [`Placement`] for the rules.
//!
//! ```
//! use ami_mapper::{Machine, Placement, Roles, TaskKind};
//!
//! // 3 nodes of 4 CPUs: nodes 0 and 1 hold data, node 2 serves; 4 partitions.
//! let placement = Placement::new(Machine::uniform(3, 4), Roles { service_nodes: 1 }, 4)?;
//! assert_eq!(placement.owner_of_partition(3)?, 1);
//! assert_eq!(placement.node_for(&TaskKind::GraphManager)?, 2);
//! let worker = TaskKind::Worker { partition: 3 };
//! assert_eq!(TaskKind::from_tag(worker.to_tag()), Some(worker));
//! let source = TaskKind::DataSource { partition: 3 };
//! assert_eq!(placement.processor_for(&worker)?, placement.processor_for(&source)?);
//!
//! // With IO processors, a partition's data source runs on one of its node's.
//! let with_io = Placement::new(Machine::uniform(3, 4).with_io_processors(2), Roles { service_nodes: 1 }, 4)?;
//! assert!(with_io.on_io_processor(&source)? && !with_io.on_io_processor(&worker)?);
//! assert_eq!(with_io.node_for(&source)?, with_io.node_for(&worker)?);
//! # Ok::<(), ami_mapper::PolicyError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod machine;
mod placement;
mod task;

pub use error::PolicyError;
pub use machine::{Machine, Mem, MemKind, Node, Proc, ProcKind, DEFAULT_SYSTEM_BYTES};
pub use placement::{Placement, Roles, Target};
pub use task::{SegmentOwner, Sharing, StoreKind, TaskKind, TAG_MARKER};
