//! Registering Rust functions as Legion task variants, and what a running task sees.
//!
//! Every Rust task goes through one trampoline (`trampoline`): Legion calls it with the task's
//! serialized arguments and, as user data, a pointer to the `TaskEntry` made at registration.
//! The trampoline decodes the arguments, runs the Rust body inside `catch_unwind`, and hands Legion
//! the encoded `Outcome`: the value, or the failure (error or panic) that the launcher's
//! [`Future::get`](crate::Future::get) turns into [`Error::TaskFailed`].

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;

use legion_sys as raw;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::machine::{Machine, Processor};
use crate::region::{BorrowTable, PhysicalRegion};
use crate::{panic, runtime, Error, Result};

/// Typed name of a registered task: arguments `A`, result `R`.
pub struct TaskId<A, R> {
    pub(crate) id: u32,
    pub(crate) name: &'static str,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for TaskId<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, R> Copy for TaskId<A, R> {}

impl<A, R> fmt::Debug for TaskId<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({} `{}`)", self.id, self.name)
    }
}

impl<A, R> TaskId<A, R> {
    /// Legion's id of the task.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The name the task was registered under.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The same task under other argument and result types. Only for tests that check what happens
/// when the two ends of a launch disagree on types (the task reports a decode error).
#[doc(hidden)]
pub fn retype_for_tests<A, R, B, S>(task: TaskId<A, R>) -> TaskId<B, S> {
    TaskId {
        id: task.id,
        name: task.name,
        _types: PhantomData,
    }
}

/// How Legion may treat a task variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VariantOptions {
    /// Launches no sub-tasks (lets Legion skip bookkeeping).
    pub leaf: bool,
    /// Only launches sub-tasks, never touches region data itself.
    pub inner: bool,
    /// Safe to run twice (e.g. re-execution on failure).
    pub idempotent: bool,
    /// May be control-replicated (run on every shard of a multi-process job).
    pub replicable: bool,
    /// Largest result the task returns (encoded bytes). Declared to Legion, which then knows a
    /// bound on the task's future as soon as the task is mapped: a task waiting for that future
    /// is mapped (and its future's buffer made) while the producer still runs, instead of after
    /// it. A larger result is a task failure, reported like any other.
    pub max_result_bytes: Option<usize>,
    /// Also runs on Realm's IO processors (`-ll:io N`), besides CPU processors: for a task that
    /// waits for the outside world (a stream, a clock), so that its waits do not keep a CPU
    /// processor from other tasks. The mapper chooses the processor of each launch.
    pub io_processors: bool,
}

impl VariantOptions {
    /// A leaf task: computes, launches nothing.
    pub fn leaf() -> Self {
        Self {
            leaf: true,
            ..Self::default()
        }
    }
    /// An inner task: launches sub-tasks, maps no region data.
    pub fn inner() -> Self {
        Self {
            inner: true,
            ..Self::default()
        }
    }
    /// Marks the variant replicable as well.
    pub fn replicable(mut self) -> Self {
        self.replicable = true;
        self
    }
    /// Registers the variant for IO processors as well (see [`VariantOptions::io_processors`]).
    pub fn also_on_io_processors(mut self) -> Self {
        self.io_processors = true;
        self
    }
    /// The processor kinds the variant is registered for.
    fn processor_kinds(&self) -> &'static [raw::legion_processor_kind_t] {
        if self.io_processors {
            &[raw::LOC_PROC, raw::IO_PROC]
        } else {
            &[raw::LOC_PROC]
        }
    }
    /// Declares the largest result the task returns (see [`VariantOptions::max_result_bytes`]).
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = Some(bytes);
        self
    }
    /// The largest result this variant may return, if it is bounded.
    fn result_limit(&self) -> Option<usize> {
        self.max_result_bytes.or(self.leaf.then_some(MAX_LEAF_RESULT_BYTES))
    }
    fn to_raw(self) -> raw::legion_task_config_options_t {
        raw::legion_task_config_options_t {
            leaf: self.leaf,
            inner: self.inner,
            idempotent: self.idempotent,
            replicable: self.replicable,
        }
    }
}

/// The error a task body returns. Any `std::error::Error` converts into it with `?`.
pub struct TaskError {
    message: String,
    /// The task failed because a task it depends on did ([`TaskContext::input`]).
    input_failed: bool,
}

impl TaskError {
    /// A failure described by `message`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            input_failed: false,
        }
    }

    /// A failure because an input failed (a task this one depends on), described by `message`.
    pub fn input_failed(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            input_failed: true,
        }
    }

    /// Whether the failure is an input's: a task it depends on failed, so running this one again
    /// cannot help (the failure to look at is that task's).
    pub fn is_input_failure(&self) -> bool {
        self.input_failed
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(error: E) -> Self {
        Self::msg(error)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskError({:?})", self.message)
    }
}

/// What a task hands back to Legion: its value, or why it has none. The `Failed` variant has the
/// same encoding whatever `R` is, which lets the (untyped) trampoline write it.
#[derive(Serialize, Deserialize)]
pub(crate) enum Outcome<R> {
    Done(R),
    Failed { task: String, message: String, panicked: bool },
}

impl<R: DeserializeOwned> Outcome<R> {
    /// Decodes a task's result bytes into the value or the task's failure.
    pub(crate) fn decode(bytes: &[u8]) -> Result<R> {
        match decode::<Outcome<R>>(bytes, "task result")? {
            Outcome::Done(value) => Ok(value),
            Outcome::Failed { task, message, panicked } => Err(Error::TaskFailed { task, message, panicked }),
        }
    }
}

type Body = dyn Fn(&TaskContext, &[u8]) -> Result<Vec<u8>, (String, Ending)> + Send + Sync;

/// How a task body ended without a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Failed,
    /// Failed because a task it depends on failed: logged quietly, that task's log says why.
    InputFailed,
    Panicked,
}

impl TaskError {
    fn ending(&self) -> Ending {
        if self.input_failed {
            Ending::InputFailed
        } else {
            Ending::Failed
        }
    }
}

/// What the trampoline finds behind its user-data pointer. Leaked at registration: Legion may call
/// the task until the process exits.
pub(crate) struct TaskEntry {
    name: &'static str,
    options: VariantOptions,
    body: Box<Body>,
}

/// Largest result a leaf task may return: Legion reserves no memory pool for leaf tasks, and
/// without one it caps their futures at this size (and aborts the process beyond it). Tasks with
/// larger results are registered as non-leaf.
pub const MAX_LEAF_RESULT_BYTES: usize = raw::LEGION_MAX_RETURN_SIZE as usize;

/// Size of `value` as a task's result, the bytes Legion gets (and that
/// [`VariantOptions::max_result_bytes`] bounds): for a task that must shrink its result to fit.
pub fn result_bytes<R: Serialize>(value: &R) -> Result<usize> {
    Ok(encode(&Outcome::Done(value), "task result")?.len())
}

/// Smallest declared largest result: a failure report (task name, a shortened message) must fit.
const MIN_RESULT_BOUND: usize = 256;

/// Task ids registered so far, so that a clash is reported instead of silently replacing a task.
static REGISTERED: Mutex<Option<HashMap<u32, &'static str>>> = Mutex::new(None);

/// Registers `body` as the only variant of task `id`, named `name`. Must happen before the
/// runtime starts (every process registers the same tasks under the same ids).
pub fn register_task<A, R, F>(id: u32, name: &str, options: VariantOptions, body: F) -> Result<TaskId<A, R>>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
    F: Fn(&TaskContext, A) -> Result<R, TaskError> + Send + Sync + 'static,
{
    if id == runtime::TOP_LEVEL_TASK_ID {
        return Err(Error::Registration(format!("task `{name}`: id {id} is the top-level task's")));
    }
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let erased = move |ctx: &TaskContext, bytes: &[u8]| -> Result<Vec<u8>, (String, Ending)> {
        let args: A = decode(bytes, "task arguments").map_err(|e| (e.to_string(), Ending::Failed))?;
        let value = body(ctx, args).map_err(|e| {
            let ending = e.ending();
            (e.message, ending)
        })?;
        encode(&Outcome::Done(value), "task result").map_err(|e| (e.to_string(), Ending::Failed))
    };
    register_erased(id, name, options, Box::new(erased))?;
    Ok(TaskId {
        id,
        name,
        _types: PhantomData,
    })
}

/// Registers a task whose argument buffer is not bincode (the top-level task receives Legion's
/// command line there) and that returns nothing.
pub(crate) fn register_unit_task(
    id: u32,
    name: &str,
    options: VariantOptions,
    body: impl Fn(&TaskContext) -> Result<(), TaskError> + Send + Sync + 'static,
) -> Result<()> {
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let erased = move |ctx: &TaskContext, _bytes: &[u8]| -> Result<Vec<u8>, (String, Ending)> {
        body(ctx).map_err(|e| {
            let ending = e.ending();
            (e.message, ending)
        })?;
        encode(&Outcome::Done(()), "task result").map_err(|e| (e.to_string(), Ending::Failed))
    };
    register_erased(id, name, options, Box::new(erased))
}

fn register_erased(id: u32, name: &'static str, options: VariantOptions, body: Box<Body>) -> Result<()> {
    if runtime::has_started() {
        return Err(Error::Registration(format!("task `{name}` registered after the runtime started")));
    }
    if id == 0 || id == raw::LEGION_AUTO_GENERATE_ID {
        return Err(Error::Registration(format!("task `{name}`: id {id} is reserved")));
    }
    if let Some(bound) = options.max_result_bytes.filter(|&b| b < MIN_RESULT_BOUND) {
        return Err(Error::Registration(format!(
            "task `{name}`: a largest result of {bound} bytes leaves no room for a failure report (at least {MIN_RESULT_BOUND})"
        )));
    }
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    let registered = registered.get_or_insert_with(HashMap::new);
    if let Some(other) = registered.get(&id) {
        return Err(Error::Registration(format!(
            "task id {id} is taken by `{other}`, cannot register `{name}`"
        )));
    }
    let c_name = CString::new(name).map_err(|_| Error::Registration(format!("task name {name:?} contains NUL")))?;
    let entry: &'static TaskEntry = Box::leak(Box::new(TaskEntry { name, options, body }));
    let entry_ptr = entry as *const TaskEntry as usize;
    let userdata = entry_ptr.to_ne_bytes();
    // One variant per processor kind, all with the same body.
    for &kind in options.processor_kinds() {
        // SAFETY: preregistration before the runtime starts (checked above); the registrar and
        // the execution constraint set are created here and destroyed after Legion copied them;
        // the name and the user data are copied by Legion; the user data is the address of a
        // leaked entry.
        unsafe { preregister_variant(id, &c_name, kind, options, &userdata) };
    }
    registered.insert(id, name);
    Ok(())
}

/// Preregisters a variant of task `id` for processors of `kind`, calling the trampoline with
/// `userdata`.
///
/// # Safety
/// Only before the runtime starts.
unsafe fn preregister_variant(id: u32, c_name: &CString, kind: raw::legion_processor_kind_t, options: VariantOptions, userdata: &[u8]) {
    // SAFETY: see the caller; every handle made here is destroyed here, after Legion copied it.
    unsafe {
        let registrar = raw::legion_task_variant_registrar_create(id, true, c_name.as_ptr());
        let execution = raw::legion_execution_constraint_set_create();
        raw::legion_execution_constraint_set_add_processor_constraint(execution, kind);
        raw::legion_task_variant_registrar_set_execution_constraints(registrar, execution);
        raw::legion_task_variant_registrar_set_options(registrar, options.to_raw());
        raw::legion_runtime_preregister_task_variant_fnptr_with_registrar(
            registrar,
            Some(trampoline),
            raw::LEGION_AUTO_GENERATE_ID,
            c_name.as_ptr(),
            userdata.as_ptr() as *const c_void,
            userdata.len(),
            options.max_result_bytes.unwrap_or(0),
            options.max_result_bytes.is_some(),
        );
        raw::legion_execution_constraint_set_destroy(execution);
        raw::legion_task_variant_registrar_destroy(registrar);
    }
}

/// The entry point Legion calls for every Rust task.
unsafe extern "C" fn trampoline(data: *const c_void, datalen: usize, userdata: *const c_void, userlen: usize, proc_id: raw::realm_id_t) {
    let mut task = raw::legion_task_t {
        impl_: std::ptr::null_mut(),
    };
    let mut regions: *const raw::legion_physical_region_t = std::ptr::null();
    let mut num_regions: u32 = 0;
    let mut context = raw::legion_context_t {
        impl_: std::ptr::null_mut(),
    };
    let mut runtime = raw::legion_runtime_t {
        impl_: std::ptr::null_mut(),
    };
    // SAFETY: Legion passes the task's Realm arguments; the preamble fills the out-pointers with
    // handles valid until the postamble.
    unsafe {
        raw::legion_task_preamble(
            data,
            datalen,
            proc_id,
            &mut task,
            &mut regions,
            &mut num_regions,
            &mut context,
            &mut runtime,
        );
    }
    debug_assert_eq!(userlen, std::mem::size_of::<usize>());
    // SAFETY: the user data is the bytes of the address of a leaked `TaskEntry` (register_erased).
    let entry: &'static TaskEntry = unsafe {
        let mut bytes = [0u8; std::mem::size_of::<usize>()];
        std::ptr::copy_nonoverlapping(userdata as *const u8, bytes.as_mut_ptr(), bytes.len());
        &*(usize::from_ne_bytes(bytes) as *const TaskEntry)
    };
    let region_slice: &[raw::legion_physical_region_t] = if regions.is_null() || num_regions == 0 {
        &[]
    } else {
        // SAFETY: the preamble hands an array of `num_regions` handles living until the postamble.
        unsafe { std::slice::from_raw_parts(regions, num_regions as usize) }
    };
    let ctx = TaskContext {
        runtime,
        context,
        task,
        regions: region_slice,
        entry,
        borrows: BorrowTable::default(),
    };

    let outcome = panic::catch(|| {
        // SAFETY: the task's argument buffer lives as long as the task.
        let args = unsafe { raw_bytes(raw::legion_task_get_args(task), raw::legion_task_get_arglen(task)) };
        (entry.body)(&ctx, args)
    });
    let bytes = match outcome {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(failure)) => Err(failure),
        Err(message) => Err((message, Ending::Panicked)),
    }
    .and_then(|bytes| match entry.options.result_limit() {
        Some(limit) if bytes.len() > limit => Err((
            format!(
                "result of {} bytes is over the task's limit of {limit} bytes (the leaf-task limit, or its declared largest result)",
                bytes.len()
            ),
            Ending::Failed,
        )),
        _ => Ok(bytes),
    })
    .unwrap_or_else(|(message, ending)| {
        match ending {
            Ending::Panicked => tracing::error!(task = entry.name, "task panicked: {message}"),
            Ending::Failed => tracing::warn!(task = entry.name, "task failed: {message}"),
            Ending::InputFailed => tracing::debug!(task = entry.name, "task failed: {message}"),
        }
        failure_bytes(entry.name, message, ending == Ending::Panicked, entry.options.result_limit())
    });
    drop(ctx);
    // SAFETY: ends the task begun by the preamble; Legion copies the result buffer.
    unsafe { raw::legion_task_postamble(runtime, context, bytes.as_ptr() as *const c_void, bytes.len()) };
}

/// The encoded `Outcome::Failed`; a failure to encode it is impossible for plain strings, but the
/// trampoline must not panic, so it falls back to an empty result (decoded as an error).
fn failure_bytes(task: &str, mut message: String, panicked: bool, limit: Option<usize>) -> Vec<u8> {
    loop {
        let bytes = encode(
            &Outcome::<()>::Failed {
                task: task.to_string(),
                message: message.clone(),
                panicked,
            },
            "task failure",
        )
        .unwrap_or_default();
        // A failure must fit the task's result limit too: its message is shortened until it does.
        match limit {
            Some(limit) if bytes.len() > limit && !message.is_empty() => {
                let keep = (0..=message.len() / 2).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
                message.truncate(keep);
            }
            _ => return bytes,
        }
    }
}

/// A byte slice from a C pointer and length, empty for a null pointer.
///
/// # Safety
/// `ptr` must point to `len` readable bytes that outlive the returned slice.
pub(crate) unsafe fn raw_bytes<'a>(ptr: *const c_void, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
    }
}

/// What a running task sees: its context, its mapped regions, its launch inputs. Valid only while
/// the task runs (it is handed to the body by reference and cannot escape).
pub struct TaskContext {
    pub(crate) runtime: raw::legion_runtime_t,
    pub(crate) context: raw::legion_context_t,
    pub(crate) task: raw::legion_task_t,
    regions: &'static [raw::legion_physical_region_t],
    entry: &'static TaskEntry,
    pub(crate) borrows: BorrowTable,
}

impl TaskContext {
    /// Name the running task was registered under.
    pub fn task_name(&self) -> &'static str {
        self.entry.name
    }

    /// The point of an index launch this task runs for, `None` for a single launch.
    pub fn index_point(&self) -> Option<i64> {
        // SAFETY: `task` is the live task of this context.
        unsafe {
            if !raw::legion_task_get_is_index_space(self.task) {
                return None;
            }
            let point = raw::legion_task_get_index_point(self.task);
            Some(point.point_data[0])
        }
    }

    /// The per-point argument an index launch gave this point, if any.
    pub fn point_arg<L: DeserializeOwned>(&self) -> Result<Option<L>> {
        // SAFETY: the local argument buffer lives as long as the task.
        let bytes = unsafe {
            raw_bytes(
                raw::legion_task_get_local_args(self.task),
                raw::legion_task_get_local_arglen(self.task),
            )
        };
        match bytes.split_first() {
            Some((&crate::launch::POINT_ARG, arg)) => decode(arg, "point argument").map(Some),
            _ => Ok(None),
        }
    }

    /// The mapping tag the launcher set (what the mapper reads).
    pub fn tag(&self) -> u64 {
        // SAFETY: `task` is the live task of this context.
        unsafe { raw::legion_task_get_tag(self.task) }
    }

    /// How many futures the launcher attached.
    pub fn input_future_count(&self) -> usize {
        // SAFETY: `task` is the live task of this context.
        unsafe { raw::legion_task_get_futures_size(self.task) as usize }
    }

    /// The value of the `index`-th attached future (it is complete before the task starts). A
    /// failed producer shows up here as [`Error::TaskFailed`].
    pub fn input_future<R: DeserializeOwned>(&self, index: usize) -> Result<R> {
        if index >= self.input_future_count() {
            return Err(Error::InvalidArgument(format!(
                "task `{}` has no input future {index}",
                self.task_name()
            )));
        }
        // SAFETY: index checked; the future handle is owned here and destroyed by `Future`'s drop.
        let future = unsafe { raw::legion_task_get_future(self.task, index as u32) };
        crate::Future::<R>::from_raw(future).get()
    }

    /// [`input_future`](Self::input_future) as a task body uses it: a failed producer becomes an
    /// error that says it is an input's ([`TaskError::is_input_failure`]).
    pub fn input<R: DeserializeOwned>(&self, index: usize) -> std::result::Result<R, TaskError> {
        self.input_future(index).map_err(|error| match error {
            Error::TaskFailed { .. } => TaskError::input_failed(error),
            other => TaskError::from(other),
        })
    }

    /// The processor running this task.
    pub fn executing_processor(&self) -> Processor {
        // SAFETY: runtime and context belong to the running task.
        Processor::from_raw(unsafe { raw::legion_runtime_get_executing_processor(self.runtime, self.context) })
    }

    /// The process (address space, MPI rank) running this task.
    pub fn address_space(&self) -> u32 {
        self.executing_processor().address_space
    }

    /// Every processor and memory of the machine.
    pub fn machine(&self) -> Machine {
        Machine::current()
    }

    /// Number of regions this task was launched with.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// The `index`-th region requirement's physical region.
    pub fn region(&self, index: usize) -> Result<PhysicalRegion<'_>> {
        let raw_region = *self.regions.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "task `{}` has {} regions, not {}",
                self.task_name(),
                self.regions.len(),
                index + 1
            ))
        })?;
        PhysicalRegion::new(self, index, raw_region)
    }

    pub(crate) fn check_can_launch(&self) -> Result<()> {
        if self.entry.options.leaf {
            return Err(Error::InvalidArgument(format!(
                "task `{}` is a leaf task and cannot launch tasks",
                self.task_name()
            )));
        }
        Ok(())
    }

    /// Raw runtime handle, for code that calls `legion-sys` directly (benchmarks, the mapper).
    pub fn raw_runtime(&self) -> raw::legion_runtime_t {
        self.runtime
    }

    /// Raw context handle, for code that calls `legion-sys` directly (benchmarks, the mapper).
    pub fn raw_context(&self) -> raw::legion_context_t {
        self.context
    }
}
