//! Starting the Legion runtime (once per process) with a typed top-level task, and the
//! registration callbacks Legion runs on every process before any task (where mappers are
//! installed).

use std::any::Any;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use legion_sys as raw;

use crate::machine::{Machine, Processor};
use crate::task::{register_unit_task, TaskContext, TaskError, VariantOptions};
use crate::{panic, Error, Result};

/// Task id of the top-level task; application task ids must differ from it.
pub const TOP_LEVEL_TASK_ID: u32 = 1;

static STARTED: AtomicBool = AtomicBool::new(false);

type TopLevelBody = Box<dyn FnOnce(&TaskContext) -> Result<Box<dyn Any + Send>, TaskError> + Send>;
static TOP_LEVEL: Mutex<Option<TopLevelBody>> = Mutex::new(None);
static TOP_LEVEL_RESULT: Mutex<Option<Result<Box<dyn Any + Send>>>> = Mutex::new(None);
/// Set when the machine has fewer processes than the launch started (see [`expected_processes`]).
static MISSING_PEERS: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn has_started() -> bool {
    STARTED.load(Ordering::SeqCst)
}

/// Environment variables that say this process is one of several (an MPI launch, or Realm's p2p
/// bootstrap); without any of them there is no network to set up.
const MULTI_PROCESS_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "WORKER_PEERS_INFO"];

/// True when this process is one of several of a Legion run (launched by `mpirun` or with
/// Realm's p2p bootstrap variables).
pub fn is_multi_process() -> bool {
    MULTI_PROCESS_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// The number of processes the launcher started (`mpirun`'s `OMPI_COMM_WORLD_SIZE` or
/// `PMI_SIZE`, or the peers of Realm's p2p bootstrap), when it says.
pub fn expected_processes() -> Option<u32> {
    let var = |name| std::env::var(name).ok();
    var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .and_then(|n| n.parse().ok())
        .or_else(|| var("WORKER_PEERS_INFO").map(|peers| peers.split_whitespace().count() as u32))
}

/// This process's rank in a multi-process launch (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`,
/// `PMIX_RANK`, or the position of `WORKER_SELF_INFO` among Realm's p2p peers), when launched so.
/// Rank 0 becomes address space 0, the process that runs the top-level task.
pub fn launch_rank() -> Option<u32> {
    let var = |name: &str| std::env::var(name).ok();
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|name| var(name).and_then(|v| v.parse().ok()))
        .or_else(|| {
            let me = var("WORKER_SELF_INFO")?;
            let peers = var("WORKER_PEERS_INFO")?;
            peers.split_whitespace().position(|peer| peer == me).map(|i| i as u32)
        })
}

/// Most processors Legion runs in one process, CPU, utility, IO and others together
/// (`LEGION_MAX_NUM_PROCS`, fixed when Legion was built): with more it aborts at start.
pub const MAX_LOCAL_PROCESSORS: usize = legion_sys::LEGION_MAX_NUM_PROCS as usize;

/// Processors Legion starts in one process with `args`, completed with the defaults: `-ll:cpu`,
/// `-ll:util`, `-ll:io`, `-ll:gpu`, `-ll:omp` and `-ll:py` together.
pub fn local_processors(args: &[String]) -> usize {
    let all = with_default_args(args);
    ["-ll:cpu", "-ll:util", "-ll:io", "-ll:gpu", "-ll:omp", "-ll:py"]
        .iter()
        .filter_map(|flag| flag_value(&all, flag)?.parse::<usize>().ok())
        .sum()
}

/// Megabytes of Realm system memory when the caller does not say (`-ll:csize`).
pub const DEFAULT_SYSTEM_MEMORY_MB: u64 = 1024;

/// Legion arguments that fit this machine: one CPU processor per core left after one utility
/// processor (two on larger machines) and the runtime's own threads, at least one of each; Realm's
/// log on stderr; 1 GiB of system memory for region instances; no automatic tracing; and, in a
/// single-process run, no network module (Realm would otherwise try to bootstrap UCX and log
/// failures); with several processes on a machine of at most 4 cores, one background worker.
pub fn default_args() -> Vec<String> {
    let cores = cores();
    let util = if cores > 8 { 2 } else { 1 };
    let cpus = cores.saturating_sub(util + 1).clamp(1, MAX_LOCAL_PROCESSORS - util);
    // Realm logs to stdout unless told otherwise; stdout belongs to the program.
    let mut args = vec![
        "-ll:cpu".into(),
        cpus.to_string(),
        "-ll:util".into(),
        util.to_string(),
        "-logfile".into(),
        "stderr".into(),
        // Region instances live in Realm's system memory. Realm touches all of it at start-up
        // (about 0.5 s per GiB here), so the default is modest; programs that know they need
        // more (large images) pass their own `-ll:csize`.
        "-ll:csize".into(),
        DEFAULT_SYSTEM_MEMORY_MB.to_string(),
    ];
    // Automatic tracing keeps a hash of every operation a parent task launches, for as long as
    // that task runs: ami2's top-level task runs for days, so its memory would grow without end.
    args.push("-lg:no_auto_tracing".into());
    if legion_sys::cuda_stand_in() {
        // The stand-in answers "no device", which Realm's GPU module reports as a warning and
        // an error at every start: news only on a machine that was meant to have GPUs.
        args.extend(["-level".into(), "gpu=6".into()]);
    }
    if !is_multi_process() {
        args.extend(["-ll:networks".into(), "none".into()]);
    } else if cores <= 4 {
        // Realm's background workers poll; with several processes on a small machine, one per
        // process leaves the cores to the tasks (a 2-process run on 2 cores: 13 s → 4 s).
        args.extend(["-ll:bgwork".into(), "1".into()]);
    }
    args
}

/// The value of `flag` in Legion arguments (its last occurrence: the one Legion keeps).
pub fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.windows(2).rev().find(|w| w[0] == flag).map(|w| w[1].as_str())
}

/// Cores this process may run on (1 when that cannot be known).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU processors (`-ll:cpu`) Legion starts with from `args`, completed with the defaults.
pub fn cpu_processors(args: &[String]) -> usize {
    flag_value(&with_default_args(args), "-ll:cpu")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// `args` completed with the [`default_args`] flags (with their values) that `args` does not set.
pub fn with_default_args(args: &[String]) -> Vec<String> {
    let mut all = args.to_vec();
    let defaults = default_args();
    let mut i = 0;
    while i < defaults.len() {
        // A flag takes the next item as its value unless that item is another flag.
        let takes_value = defaults.get(i + 1).is_some_and(|next| !next.starts_with('-'));
        let width = if takes_value { 2 } else { 1 };
        if !args.iter().any(|a| a == &defaults[i]) {
            all.extend_from_slice(&defaults[i..i + width]);
        }
        i += width;
    }
    all
}

/// Starts Legion with the command-line `legion_args` (e.g. `-ll:cpu 1`; flags it does not set
/// come from [`default_args`]), runs `top_level` as the top-level task and returns its value once
/// the runtime has shut down.
///
/// Tasks must be registered before this call. Legion cannot start twice in one process: a second
/// call returns [`Error::AlreadyStarted`]. A panic or error in `top_level` comes back as
/// [`Error::TaskFailed`].
pub fn start<T, F>(legion_args: &[String], top_level: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&TaskContext) -> Result<T, TaskError> + Send + 'static,
{
    start_rank(legion_args, top_level)?.ok_or(Error::RuntimeExit { code: 0 })
}

/// [`start`] for a process that may be one of several (an `mpirun` or p2p launch): Legion runs the
/// top-level task in one process only (address space 0), and the others serve its sub-tasks until
/// the runtime shuts down. Returns `Some(value)` in the process that ran `top_level`, `None` in
/// the others.
pub fn start_rank<T, F>(legion_args: &[String], top_level: F) -> Result<Option<T>>
where
    T: Send + 'static,
    F: FnOnce(&TaskContext) -> Result<T, TaskError> + Send + 'static,
{
    if STARTED.load(Ordering::SeqCst) {
        return Err(Error::AlreadyStarted);
    }
    let body: TopLevelBody = Box::new(move |ctx| top_level(ctx).map(|v| Box::new(v) as Box<dyn Any + Send>));
    *TOP_LEVEL.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
    register_unit_task(TOP_LEVEL_TASK_ID, "top_level", VariantOptions::inner(), run_top_level)?;
    add_trampoline();
    if STARTED.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyStarted);
    }

    let program = std::env::args().next().unwrap_or_else(|| "ami2".into());
    let legion_args = with_default_args(legion_args);
    let csize = flag_value(&legion_args, "-ll:csize").and_then(|v| v.parse().ok());
    *SYSTEM_MEMORY_MIB.lock().unwrap_or_else(|e| e.into_inner()) = csize;
    let argv: Vec<CString> = std::iter::once(program)
        .chain(legion_args.iter().cloned())
        .map(|a| CString::new(a).map_err(|_| Error::InvalidArgument("a Legion argument contains NUL".into())))
        .collect::<Result<_>>()?;
    // Legion keeps argv for the life of the process (get_input_args), so it is leaked on purpose.
    let argv: &'static mut [*mut c_char] = Box::leak(argv.into_iter().map(CString::into_raw).collect::<Vec<_>>().into_boxed_slice());
    tracing::debug!(args = ?legion_args, "starting Legion");
    // SAFETY: the top-level task is registered; argv is a leaked array of leaked C strings;
    // `background = false` makes the call return only after the runtime has shut down.
    let code = unsafe {
        raw::legion_runtime_set_top_level_task_id(TOP_LEVEL_TASK_ID);
        raw::legion_runtime_start(argv.len() as i32, argv.as_mut_ptr(), false)
    };
    match TOP_LEVEL_RESULT.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(Ok(value)) => Ok(Some(*value.downcast::<T>().expect("the top-level result has the type of `start`"))),
        Some(Err(error)) => Err(error),
        // Another process ran the top-level task; this one served it and shut down cleanly.
        None if code == 0 && TOP_LEVEL.lock().unwrap_or_else(|e| e.into_inner()).is_some() => Ok(None),
        None => Err(Error::RuntimeExit { code }),
    }
}

/// Body of the top-level task: runs the closure given to [`start`] and keeps its result (or
/// failure) for `start` to return.
fn run_top_level(ctx: &TaskContext) -> Result<(), TaskError> {
    let body = TOP_LEVEL.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(body) = body else {
        return Err(TaskError::msg("the top-level task ran twice"));
    };
    if let Some(message) = MISSING_PEERS.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        // SAFETY: sets the process exit code Legion reports; callable from any task.
        unsafe { raw::legion_runtime_set_return_code(1) };
        *TOP_LEVEL_RESULT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Err(Error::MissingPeers(message)));
        return Ok(());
    }
    let result = match panic::catch(|| body(ctx)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Error::TaskFailed {
            task: "top_level".into(),
            message: error.to_string(),
            panicked: false,
        }),
        Err(message) => Err(Error::TaskFailed {
            task: "top_level".into(),
            message,
            panicked: true,
        }),
    };
    if result.is_err() {
        // SAFETY: sets the process exit code Legion reports; callable from any task.
        unsafe { raw::legion_runtime_set_return_code(1) };
    }
    *TOP_LEVEL_RESULT.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    Ok(())
}

/// What a registration callback sees: the machine and the processors of this process.
pub struct Registration {
    runtime: raw::legion_runtime_t,
    machine: raw::legion_machine_t,
    local_processors: Vec<Processor>,
}

impl Registration {
    /// The processors of this process (one mapper per processor is installed from here).
    pub fn local_processors(&self) -> &[Processor] {
        &self.local_processors
    }
    /// Every processor and memory of the machine.
    pub fn machine(&self) -> Machine {
        Machine::query(self.machine)
    }
    /// Raw runtime handle (for installing a mapper through `legion-sys`).
    pub fn raw_runtime(&self) -> raw::legion_runtime_t {
        self.runtime
    }
    /// Raw machine handle (for constructing a mapper through `legion-sys`).
    pub fn raw_machine(&self) -> raw::legion_machine_t {
        self.machine
    }
}

/// `-ll:csize` of this process, to map Realm's system memory in full at start.
static SYSTEM_MEMORY_MIB: Mutex<Option<u64>> = Mutex::new(None);

type Callback = Box<dyn Fn(&Registration) + Send + Sync>;
static CALLBACKS: Mutex<Vec<Callback>> = Mutex::new(Vec::new());

/// Runs `callback` on every process once the machine is known and before any task runs (the
/// place to install mappers). Must be added before [`start`].
pub fn add_registration_callback(callback: impl Fn(&Registration) + Send + Sync + 'static) -> Result<()> {
    if has_started() {
        return Err(Error::Registration("registration callback added after the runtime started".into()));
    }
    add_trampoline();
    CALLBACKS.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(callback));
    Ok(())
}

/// Registers [`registration_trampoline`] with Legion once per process (it also checks that the
/// runtime found every process of a launch).
fn add_trampoline() {
    static ADDED: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function before the runtime starts.
    ADDED.call_once(|| unsafe { raw::legion_runtime_add_registration_callback(Some(registration_trampoline)) });
}

unsafe extern "C" fn registration_trampoline(
    machine: raw::legion_machine_t,
    runtime: raw::legion_runtime_t,
    local_procs: *const raw::legion_processor_t,
    num_local_procs: u32,
) {
    let procs = if local_procs.is_null() {
        &[][..]
    } else {
        // SAFETY: Legion passes an array of `num_local_procs` processors valid during the call.
        unsafe { std::slice::from_raw_parts(local_procs, num_local_procs as usize) }
    };
    let registration = Registration {
        runtime,
        machine,
        local_processors: procs.iter().copied().map(Processor::from_raw).collect(),
    };
    let found = registration.machine().address_spaces();
    if let Some(expected) = expected_processes().filter(|&n| n > found) {
        // Realm runs alone when its network module fails to start: every process would then
        // run the whole program by itself. The top-level task refuses instead.
        let message = format!(
            "this process was launched as one of {expected}, but the Legion runtime found {found} (its network module did not start; see Realm's messages above)"
        );
        tracing::error!("{message}");
        *MISSING_PEERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        return;
    }
    if let Some(mib) = *SYSTEM_MEMORY_MIB.lock().unwrap_or_else(|e| e.into_inner()) {
        // On the side (about 0.3 s per GiB): the start of the runtime, and so a restart after a
        // crash, does not wait for it.
        let spawned = std::thread::Builder::new().name("ami2-sysmem".into()).spawn(move || {
            let started = std::time::Instant::now();
            match crate::system_memory::populate(mib) {
                Ok(bytes) => tracing::debug!(
                    mib = bytes >> 20,
                    millis = started.elapsed().as_millis() as u64,
                    "Realm system memory mapped"
                ),
                Err(why) => tracing::debug!("Realm system memory not mapped up front: {why}"),
            }
        });
        if let Err(error) = spawned {
            tracing::debug!("Realm system memory not mapped up front: {error}");
        }
    }
    let callbacks = CALLBACKS.lock().unwrap_or_else(|e| e.into_inner());
    for callback in callbacks.iter() {
        if let Err(message) = panic::catch(|| callback(&registration)) {
            tracing::error!("a registration callback panicked: {message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_processors_are_the_callers_or_the_defaults() {
        let given: Vec<String> = ["-ll:util", "1", "-ll:cpu", "3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(cpu_processors(&given), 3);
        let default = flag_value(&default_args(), "-ll:cpu").map(|v| v.parse::<usize>().unwrap());
        assert_eq!(Some(cpu_processors(&[])), default);
        assert!(cpu_processors(&[]) >= 1 && cpu_processors(&[]) < cores().max(2));
    }

    #[test]
    fn the_gpu_logger_is_quiet_only_with_the_stand_in_and_a_callers_level_wins() {
        let quiet = flag_value(&default_args(), "-level") == Some("gpu=6");
        assert_eq!(quiet, legion_sys::cuda_stand_in());
        let given: Vec<String> = ["-level", "legion_spy=2"].iter().map(|s| s.to_string()).collect();
        let all = with_default_args(&given);
        assert_eq!(all.iter().filter(|a| *a == "-level").count(), 1, "{all:?}");
        assert_eq!(flag_value(&all, "-level"), Some("legion_spy=2"));
    }
}
