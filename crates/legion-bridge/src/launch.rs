//! Launching tasks (one, or one per point of a 1-D domain) and the futures they return.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::RangeInclusive;

use legion_sys as raw;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::encode;
use crate::region::{domain, RegionRequirement};
use crate::task::{raw_bytes, Outcome, TaskContext, TaskId};
use crate::{Error, Result};

/// Marks a handle as belonging to results of type `R` and to the launching task's thread.
type LocalMarker<R> = PhantomData<(fn() -> R, *const ())>;

fn buffer(bytes: &[u8]) -> raw::legion_untyped_buffer_t {
    // Legion copies the buffer and never writes through the pointer; an empty buffer is passed
    // as null, as C callers do.
    let args = if bytes.is_empty() {
        std::ptr::null_mut()
    } else {
        bytes.as_ptr() as *mut c_void
    };
    raw::legion_untyped_buffer_t { args, arglen: bytes.len() }
}

/// First byte of a point's argument-map entry: an argument follows, or there is none.
pub(crate) const POINT_ARG: u8 = 1;
pub(crate) const NO_POINT_ARG: [u8; 1] = [0];

/// A single task launch: the task, its arguments, its regions and the futures it waits for.
pub struct TaskLauncher<'f, A, R> {
    task: TaskId<A, R>,
    args: Vec<u8>,
    regions: Vec<RegionRequirement>,
    futures: Vec<&'f raw::legion_future_t>,
    tag: u64,
}

impl<'f, A: Serialize, R> TaskLauncher<'f, A, R> {
    /// Prepares a launch of `task` with `args`.
    pub fn new(task: TaskId<A, R>, args: &A) -> Result<Self> {
        Ok(Self {
            task,
            args: encode(args, "task arguments")?,
            regions: Vec::new(),
            futures: Vec::new(),
            tag: 0,
        })
    }
    /// Adds a region requirement (the task sees it as region number `n` in the order added).
    pub fn region(mut self, requirement: RegionRequirement) -> Self {
        self.regions.push(requirement);
        self
    }
    /// Makes the task wait for `future` and see its value ([`TaskContext::input_future`]).
    pub fn future<T>(mut self, future: &'f Future<T>) -> Self {
        self.futures.push(&future.raw);
        self
    }
    /// Sets the mapping tag (read by the mapper).
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }
}

/// A launch of one task per point of a 1-D domain.
pub struct IndexLauncher<'f, A, R> {
    task: TaskId<A, R>,
    points: RangeInclusive<i64>,
    args: Vec<u8>,
    point_args: Vec<(i64, Vec<u8>)>,
    regions: Vec<RegionRequirement>,
    futures: Vec<&'f raw::legion_future_t>,
    tag: u64,
}

impl<'f, A: Serialize, R> IndexLauncher<'f, A, R> {
    /// Prepares a launch of `task` over `points`, every point receiving `args`.
    pub fn new(task: TaskId<A, R>, points: RangeInclusive<i64>, args: &A) -> Result<Self> {
        if points.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "index launch of `{}` over an empty domain",
                task.name
            )));
        }
        Ok(Self {
            task,
            points,
            args: encode(args, "task arguments")?,
            point_args: Vec::new(),
            regions: Vec::new(),
            futures: Vec::new(),
            tag: 0,
        })
    }
    /// Gives point `point` its own argument ([`TaskContext::point_arg`]).
    pub fn point_arg<L: Serialize>(mut self, point: i64, arg: &L) -> Result<Self> {
        if !self.points.contains(&point) {
            return Err(Error::InvalidArgument(format!(
                "point {point} is outside the launch domain {:?}",
                self.points
            )));
        }
        let mut entry = vec![POINT_ARG];
        entry.extend(encode(arg, "point argument")?);
        self.point_args.push((point, entry));
        Ok(self)
    }
    /// Adds a region requirement (a partition requirement gives each point its subregion).
    pub fn region(mut self, requirement: RegionRequirement) -> Self {
        self.regions.push(requirement);
        self
    }
    /// Makes every point wait for `future` and see its value.
    pub fn future<T>(mut self, future: &'f Future<T>) -> Self {
        self.futures.push(&future.raw);
        self
    }
    /// Sets the mapping tag (read by the mapper).
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }
}

/// Launch operations of a running task.
impl TaskContext {
    /// Launches one task; its result arrives in the returned future.
    pub fn execute<A, R>(&self, launcher: &TaskLauncher<'_, A, R>) -> Result<Future<R>> {
        self.check_can_launch()?;
        // SAFETY: the launcher is created, filled and destroyed here; Legion copies the argument
        // buffer and region requirements at execute time; runtime and context are the task's.
        unsafe {
            let handle = raw::legion_task_launcher_create(
                launcher.task.id,
                buffer(&launcher.args),
                raw::legion_predicate_true(),
                0,
                launcher.tag,
            );
            let added = launcher.regions.iter().try_for_each(|r| r.add_to_task(handle));
            if let Err(e) = added {
                raw::legion_task_launcher_destroy(handle);
                return Err(e);
            }
            for future in &launcher.futures {
                raw::legion_task_launcher_add_future(handle, **future);
            }
            let future = raw::legion_task_launcher_execute(self.runtime, self.context, handle);
            raw::legion_task_launcher_destroy(handle);
            Ok(Future::from_raw(future))
        }
    }

    /// Waits until every operation this task launched so far has finished (an execution fence):
    /// for a task that stops using its launches' results part-way, before it frees what they use.
    pub fn wait_for_launched(&self) -> Result<()> {
        self.check_can_launch()?;
        // SAFETY: runtime and context are the running task's; the fence's future is waited on
        // and released here.
        unsafe {
            let fence = raw::legion_runtime_issue_execution_fence(self.runtime, self.context);
            raw::legion_future_get_void_result(fence);
            raw::legion_future_destroy(fence);
        }
        Ok(())
    }

    /// Launches one task per point; results arrive in the returned future map.
    pub fn execute_index<A, R>(&self, launcher: &IndexLauncher<'_, A, R>) -> Result<FutureMap<R>> {
        self.check_can_launch()?;
        // SAFETY: argument map and launcher are created, filled and destroyed here; Legion copies
        // every buffer; runtime and context are the task's.
        unsafe {
            let map = raw::legion_argument_map_create();
            if !launcher.point_args.is_empty() {
                // With Legion 25.8 a point missing from a non-empty argument map never starts,
                // and an empty entry crashes the launch, so every point gets a non-empty entry.
                let given: std::collections::HashMap<i64, &[u8]> = launcher.point_args.iter().map(|(p, b)| (*p, b.as_slice())).collect();
                for point in launcher.points.clone() {
                    let dp = raw::legion_domain_point_from_point_1d(raw::legion_point_1d_t { x: [point] });
                    let entry = given.get(&point).copied().unwrap_or(&NO_POINT_ARG);
                    raw::legion_argument_map_set_point(map, dp, buffer(entry), true);
                }
            }
            let handle = raw::legion_index_launcher_create(
                launcher.task.id,
                domain(&launcher.points),
                buffer(&launcher.args),
                map,
                raw::legion_predicate_true(),
                false,
                0,
                launcher.tag,
            );
            for requirement in &launcher.regions {
                requirement.add_to_index(handle);
            }
            for future in &launcher.futures {
                raw::legion_index_launcher_add_future(handle, **future);
            }
            let futures = raw::legion_index_launcher_execute(self.runtime, self.context, handle);
            raw::legion_index_launcher_destroy(handle);
            raw::legion_argument_map_destroy(map);
            Ok(FutureMap {
                raw: futures,
                points: launcher.points.clone(),
                _type: PhantomData,
            })
        }
    }
}

/// The eventual result of a task. Not `Send`: it belongs to the task that launched it.
pub struct Future<R> {
    pub(crate) raw: raw::legion_future_t,
    _type: LocalMarker<R>,
}

impl<R> Future<R> {
    pub(crate) fn from_raw(raw: raw::legion_future_t) -> Self {
        Self { raw, _type: PhantomData }
    }

    /// True once the task has finished.
    pub fn is_ready(&self) -> bool {
        // SAFETY: `raw` is a live future owned by self.
        unsafe { raw::legion_future_is_ready(self.raw) }
    }
}

impl<R: DeserializeOwned> Future<R> {
    /// Waits for the task and returns its value, or [`Error::TaskFailed`] if it panicked or
    /// returned an error.
    pub fn get(&self) -> Result<R> {
        // SAFETY: `raw` is a live future; the value's buffer lives as long as the future.
        let bytes = unsafe {
            raw_bytes(
                raw::legion_future_get_untyped_pointer(self.raw),
                raw::legion_future_get_untyped_size(self.raw),
            )
        };
        Outcome::decode(bytes)
    }
}

impl<R> Clone for Future<R> {
    /// Another handle on the same future (e.g. one to wait on, one to pass to a later launch).
    fn clone(&self) -> Self {
        // SAFETY: `raw` is a live future; the copy is a new reference released by its own drop.
        Self::from_raw(unsafe { raw::legion_future_copy(self.raw) })
    }
}

impl<R> Drop for Future<R> {
    fn drop(&mut self) {
        // SAFETY: releases this handle's reference; the future's value lives on for other holders.
        unsafe { raw::legion_future_destroy(self.raw) }
    }
}

/// The results of an index launch, one per point.
pub struct FutureMap<R> {
    raw: raw::legion_future_map_t,
    points: RangeInclusive<i64>,
    _type: LocalMarker<R>,
}

impl<R> FutureMap<R> {
    /// The points of the launch.
    pub fn points(&self) -> RangeInclusive<i64> {
        self.points.clone()
    }

    /// The future of one point.
    pub fn future(&self, point: i64) -> Result<Future<R>> {
        if !self.points.contains(&point) {
            return Err(Error::InvalidArgument(format!(
                "point {point} is outside the launch domain {:?}",
                self.points
            )));
        }
        // SAFETY: `raw` is a live future map and the point is in its domain; the returned handle
        // is owned by the new `Future`.
        let future = unsafe {
            raw::legion_future_map_get_future(
                self.raw,
                raw::legion_domain_point_from_point_1d(raw::legion_point_1d_t { x: [point] }),
            )
        };
        Ok(Future::from_raw(future))
    }

    /// Waits until every point has finished.
    pub fn wait_all(&self) {
        // SAFETY: `raw` is a live future map.
        unsafe { raw::legion_future_map_wait_all_results(self.raw) }
    }
}

impl<R: DeserializeOwned> FutureMap<R> {
    /// The value of one point.
    pub fn get(&self, point: i64) -> Result<R> {
        self.future(point)?.get()
    }

    /// The values of all points, in point order; the first failure is returned as the error.
    pub fn collect(&self) -> Result<Vec<R>> {
        self.points.clone().map(|p| self.get(p)).collect()
    }
}

impl<R> Drop for FutureMap<R> {
    fn drop(&mut self) {
        // SAFETY: releases this handle's reference to the future map.
        unsafe { raw::legion_future_map_destroy(self.raw) }
    }
}
