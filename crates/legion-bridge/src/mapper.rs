//! Placement policies: a Rust [`PlacementPolicy`] decides where tasks run and where their region
//! instances live, and a small C++ mapper (`mapper_shim.cc`, a subclass of Legion's default
//! mapper, one per local processor) asks it and honours the answer.
//!
//! The bridge stays generic: it knows task ids, mapping tags and index points, not what they mean.
//! The shim asks the policy
//! - in `select_task_options`, for the processor of a single task (its initial processor);
//! - in `slice_task`, for the processor of every point of a 1-D index launch (one slice per point);
//! - in `map_task`, again for the processor (the default `map_task` may move a task to any local
//!   CPU, so the policy's processor is put back) and for the memory of the task's instances.
//!
//! A task the policy answers `None` for keeps the default mapper's behaviour; an answer the shim
//! cannot honour (not a CPU or IO processor, a memory of another process) is counted in [`MapperStats::rejected`]
//! and also falls back to the default.

use std::ffi::c_int;
use std::sync::{Arc, OnceLock};

use legion_sys as raw;

use crate::runtime::{add_registration_callback, Registration};
use crate::{panic, Result};

/// What the mapper knows about a task when it asks the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskQuery {
    /// Legion's id of the task.
    pub task_id: u32,
    /// The task's mapping tag (set with `TaskLauncher::tag` / `IndexLauncher::tag`).
    pub tag: u64,
    /// The point, for a point of a 1-D index launch.
    pub point: Option<i64>,
}

/// Where tasks run: answers in Realm ids (see [`crate::Processor::id`], [`crate::Memory::id`]).
/// Called from mapper calls on Legion's utility threads: keep answers fast and never block.
pub trait PlacementPolicy: Send + Sync {
    /// The processor for `task`, or `None` for the default mapper's choice: a CPU processor, or an
    /// IO processor for a task registered for them ([`crate::VariantOptions::io_processors`]).
    fn processor(&self, task: &TaskQuery) -> Option<u64>;
    /// The memory for the instances of `task`, which runs on `processor`, or `None` for the
    /// default mapper's choice.
    fn memory(&self, task: &TaskQuery, processor: u64) -> Option<u64>;
    /// Whether the other CPUs of `processor`'s process with affinity to the task's memory may run
    /// `task` too (placement by node: Legion queues the task for all of them, the named one
    /// first). By default the task runs on the named processor only. Asked only for tasks placed
    /// on a CPU: a task placed on an IO processor runs there.
    fn shares_node(&self, _task: &TaskQuery) -> bool {
        false
    }
}

/// What the mapper shim measured in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapperStats {
    /// Tasks and index-launch points the policy placed, counted where they were launched.
    pub placed_tasks: u64,
    /// Mapper calls (`select_task_options`, `slice_task`, `map_task`) for tasks the policy placed.
    pub placed_calls: u64,
    /// Wall time of those calls, default-mapper work included.
    pub placed_nanos: u64,
    /// Calls into the policy.
    pub policy_calls: u64,
    /// Wall time spent in the policy.
    pub policy_nanos: u64,
    /// Answers that could not be honoured (not a CPU or IO processor, not a memory of the task's process).
    pub rejected: u64,
}

#[repr(C)]
struct Callbacks {
    processor: unsafe extern "C" fn(u32, u64, c_int, i64, *mut u64) -> c_int,
    memory: unsafe extern "C" fn(u32, u64, c_int, i64, u64, *mut u64) -> c_int,
    shares_node: unsafe extern "C" fn(u32, u64, c_int, i64) -> c_int,
}

#[repr(C)]
#[derive(Default)]
struct RawStats {
    placed_tasks: u64,
    placed_calls: u64,
    placed_nanos: u64,
    policy_calls: u64,
    policy_nanos: u64,
    rejected: u64,
}

extern "C" {
    fn ami2_install_policy_mapper(
        machine: raw::legion_machine_t,
        runtime: raw::legion_runtime_t,
        procs: *const raw::legion_processor_t,
        count: u32,
        callbacks: Callbacks,
    );
    fn ami2_policy_mapper_stats() -> RawStats;
    fn ami2_memory_capacity(id: u64) -> u64;
}

/// The policy of this process (one per process: the registration callback runs once).
static POLICY: OnceLock<Arc<dyn PlacementPolicy>> = OnceLock::new();

/// Installs a policy mapper on every process: once the machine is known, `make_policy` builds
/// the policy (return `None` to keep Legion's default mapper, e.g. for a machine the policy cannot
/// serve) and the shim replaces the default mapper of every local processor. Call before
/// [`crate::runtime::start`].
pub fn install<F>(make_policy: F) -> Result<()>
where
    F: Fn(&Registration) -> Option<Arc<dyn PlacementPolicy>> + Send + Sync + 'static,
{
    add_registration_callback(move |registration| {
        let Some(policy) = make_policy(registration) else {
            return;
        };
        if POLICY.set(policy).is_err() {
            tracing::error!("a placement policy is already installed in this process; keeping the first");
            return;
        }
        let procs: Vec<raw::legion_processor_t> = registration
            .local_processors()
            .iter()
            .map(|p| raw::legion_processor_t { id: p.id })
            .collect();
        let callbacks = Callbacks {
            processor: policy_processor,
            memory: policy_memory,
            shares_node: policy_shares_node,
        };
        // SAFETY: runtime and machine are the live handles of the registration callback; the
        // processor array outlives the call; the callbacks are plain functions that catch panics.
        unsafe {
            ami2_install_policy_mapper(
                registration.raw_machine(),
                registration.raw_runtime(),
                procs.as_ptr(),
                procs.len() as u32,
                callbacks,
            )
        };
    })
}

/// True once a policy mapper is installed in this process.
pub fn is_installed() -> bool {
    POLICY.get().is_some()
}

/// What the mapper shim of this process measured so far.
pub fn stats() -> MapperStats {
    // SAFETY: reads atomic counters; callable at any time.
    let raw = unsafe { ami2_policy_mapper_stats() };
    MapperStats {
        placed_tasks: raw.placed_tasks,
        placed_calls: raw.placed_calls,
        placed_nanos: raw.placed_nanos,
        policy_calls: raw.policy_calls,
        policy_nanos: raw.policy_nanos,
        rejected: raw.rejected,
    }
}

/// Capacity of a memory in bytes (0 if there is no such memory).
pub(crate) fn memory_capacity(id: u64) -> u64 {
    // SAFETY: the query only reads Realm's machine model for the id.
    unsafe { ami2_memory_capacity(id) }
}

fn query(task_id: u32, tag: u64, has_point: c_int, point: i64) -> TaskQuery {
    TaskQuery {
        task_id,
        tag,
        point: (has_point != 0).then_some(point),
    }
}

/// Writes `answer` to `out` and says whether there was one; a panic in the policy is logged and
/// counts as no answer (the default mapper decides).
fn answer(out: *mut u64, decide: impl FnOnce(&dyn PlacementPolicy) -> Option<u64>) -> c_int {
    let Some(policy) = POLICY.get() else {
        return 0;
    };
    match panic::catch(|| decide(policy.as_ref())) {
        Ok(Some(id)) if !out.is_null() => {
            // SAFETY: the shim passes a pointer to a local u64.
            unsafe { *out = id };
            1
        }
        Ok(_) => 0,
        Err(message) => {
            tracing::error!("the placement policy panicked: {message}");
            0
        }
    }
}

unsafe extern "C" fn policy_processor(task_id: u32, tag: u64, has_point: c_int, point: i64, out: *mut u64) -> c_int {
    answer(out, |policy| policy.processor(&query(task_id, tag, has_point, point)))
}

unsafe extern "C" fn policy_memory(task_id: u32, tag: u64, has_point: c_int, point: i64, processor: u64, out: *mut u64) -> c_int {
    answer(out, |policy| policy.memory(&query(task_id, tag, has_point, point), processor))
}

unsafe extern "C" fn policy_shares_node(task_id: u32, tag: u64, has_point: c_int, point: i64) -> c_int {
    let Some(policy) = POLICY.get() else {
        return 0;
    };
    match panic::catch(|| policy.shares_node(&query(task_id, tag, has_point, point))) {
        Ok(shared) => c_int::from(shared),
        Err(message) => {
            tracing::error!("the placement policy panicked: {message}");
            0
        }
    }
}
