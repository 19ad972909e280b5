//! Safe Rust over the Legion task runtime: everything in ami2 that is a task goes through here.
//!
//! - [`runtime`]: start Legion once per process with a typed top-level task
//!   ([`runtime::start`]), registration callbacks (where mappers get installed).
//! - [`task`]: register Rust functions as task variants ([`register_task`]); one trampoline runs
//!   them, catches panics and errors, and reports them to the launcher as [`Error::TaskFailed`].
//! - [`launch`]: single and index launches with typed (bincode) arguments, futures and future
//!   maps, futures as launch dependencies.
//! - [`region`]: 1-D index spaces, field spaces, logical regions, partitions (equal or by explicit
//!   ranges), region requirements, typed accessors with slices over dense layouts.
//! - [`machine`]: processors, memories and address spaces.
//! - [`mapper`]: a Rust placement policy behind a C++ mapper (where tasks run, which memory
//!   their instances use), installed on every process.
//! - [`streaming`]: memory hints for large arrays in region instances: non-temporal stores to
//!   write them, prefetches to read them in pieces.
//! - [`simd`]: hot loops compiled for AVX2 where the CPU has it ([`simd::with_avx2`]).
//!
//! `unsafe` code of the workspace lives here and in `legion-sys` only; `raw` below is the short
//! alias that makes every FFI call visible.
//!
//! ```no_run
//! use legion_bridge::{register_task, runtime, TaskLauncher, VariantOptions};
//!
//! let square = register_task(10, "square", VariantOptions::leaf(), |_ctx, x: i64| Ok(x * x)).unwrap();
//! let value = runtime::start(&runtime::default_args(), move |ctx| {
//!     Ok(ctx.execute(&TaskLauncher::new(square, &7)?)?.get()?)
//! })
//! .unwrap();
//! assert_eq!(value, 49);
//! ```

mod codec;
mod error;
pub mod harness;
pub mod launch;
pub mod machine;
pub mod mapper;
mod panic;
pub mod region;
pub mod runtime;
pub mod simd;
pub mod streaming;
mod system_memory;
pub mod task;

pub use error::{Error, Result};
pub use launch::{Future, FutureMap, IndexLauncher, TaskLauncher};
pub use machine::{Machine, Memory, MemoryKind, Processor, ProcessorKind};
pub use panic::catch as catch_panic;
pub use region::{
    Coherence, Field, FieldSpace, IndexPartition, IndexSpace, LogicalPartition, LogicalRegion, Owned, PhysicalRegion, Privilege,
    ReadAccessor, RegionRequirement, WriteAccessor,
};
pub use runtime::Registration;
pub use task::{register_task, TaskContext, TaskError, TaskId, VariantOptions};

/// Version of the Legion runtime this crate was built against.
pub fn legion_version() -> &'static str {
    legion_sys::RUNTIME_VERSION
}
