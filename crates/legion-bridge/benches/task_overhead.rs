//! Cost of the bridge per task: launches many empty tasks through legion-bridge (typed arguments,
//! the panic-catching trampoline, bincode results) and the same number through raw legion-sys calls
//! (a C-style task function, untyped launcher), on the same runtime, interleaved in rounds, and
//! prints tasks/s for both and their ratio.
//!
//! Run: `cargo bench -p legion-bridge --bench task_overhead [-- --tasks N --rounds R]`
//! (defaults: 20000 tasks, 7 rounds; Legion arguments come from the cores present).

use std::ffi::{c_void, CString};
use std::time::Instant;

use legion_bridge::harness::option;
use legion_bridge::{register_task, runtime, TaskContext, TaskLauncher, VariantOptions};
use legion_sys as raw;

const BRIDGE_TASK: u32 = 50;
const RAW_TASK: u32 = 51;

/// An empty task written against the C API directly.
unsafe extern "C" fn raw_empty_task(
    data: *const c_void,
    datalen: usize,
    _userdata: *const c_void,
    _userlen: usize,
    proc_id: raw::realm_id_t,
) {
    let mut task = raw::legion_task_t {
        impl_: std::ptr::null_mut(),
    };
    let mut regions: *const raw::legion_physical_region_t = std::ptr::null();
    let mut num_regions = 0u32;
    let mut ctx = raw::legion_context_t {
        impl_: std::ptr::null_mut(),
    };
    let mut runtime = raw::legion_runtime_t {
        impl_: std::ptr::null_mut(),
    };
    // SAFETY: the standard preamble/postamble pair of a C task, with the arguments Legion passed.
    unsafe {
        raw::legion_task_preamble(
            data,
            datalen,
            proc_id,
            &mut task,
            &mut regions,
            &mut num_regions,
            &mut ctx,
            &mut runtime,
        );
        raw::legion_task_postamble(runtime, ctx, std::ptr::null(), 0);
    }
}

fn register_raw_task() {
    let name = CString::new("raw_empty").unwrap();
    // SAFETY: preregistration before the runtime starts; Legion copies the name; the constraint
    // sets are destroyed after Legion copied them.
    unsafe {
        let execution = raw::legion_execution_constraint_set_create();
        raw::legion_execution_constraint_set_add_processor_constraint(execution, raw::LOC_PROC);
        let layout = raw::legion_task_layout_constraint_set_create();
        let options = raw::legion_task_config_options_t {
            leaf: true,
            inner: false,
            idempotent: false,
            replicable: false,
        };
        raw::legion_runtime_preregister_task_variant_fnptr(
            RAW_TASK,
            raw::LEGION_AUTO_GENERATE_ID,
            name.as_ptr(),
            name.as_ptr(),
            execution,
            layout,
            options,
            Some(raw_empty_task),
            std::ptr::null(),
            0,
        );
        raw::legion_execution_constraint_set_destroy(execution);
        raw::legion_task_layout_constraint_set_destroy(layout);
    }
}

/// Launches `n` raw tasks and waits for all; returns tasks/s.
fn raw_round(ctx: &TaskContext, n: usize) -> f64 {
    let started = Instant::now();
    let (runtime, context) = (ctx.raw_runtime(), ctx.raw_context());
    // SAFETY: runtime and context belong to the running top-level task; each launcher is
    // destroyed after execute, each future after it has been waited on.
    unsafe {
        let futures: Vec<_> = (0..n)
            .map(|_| {
                let args = raw::legion_untyped_buffer_t {
                    args: std::ptr::null_mut(),
                    arglen: 0,
                };
                let launcher = raw::legion_task_launcher_create(RAW_TASK, args, raw::legion_predicate_true(), 0, 0);
                let future = raw::legion_task_launcher_execute(runtime, context, launcher);
                raw::legion_task_launcher_destroy(launcher);
                future
            })
            .collect();
        for future in futures {
            raw::legion_future_get_void_result(future);
            raw::legion_future_destroy(future);
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Launches `n` bridge tasks and waits for all (reading each result); returns tasks/s.
fn bridge_round(ctx: &TaskContext, task: legion_bridge::TaskId<(), ()>, n: usize) -> legion_bridge::Result<f64> {
    let started = Instant::now();
    let launcher = TaskLauncher::new(task, &())?;
    let futures = (0..n).map(|_| ctx.execute(&launcher)).collect::<legion_bridge::Result<Vec<_>>>()?;
    for future in &futures {
        future.get()?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let tasks = option("--tasks", 20_000);
    let rounds = option("--rounds", 7).max(1);
    register_raw_task();
    let empty = register_task(BRIDGE_TASK, "bridge_empty", VariantOptions::leaf(), |_, ()| Ok(())).unwrap();
    let args = runtime::default_args();
    println!(
        "task_overhead: {tasks} empty tasks per round, {rounds} rounds, Legion {} {}",
        legion_bridge::legion_version(),
        args.join(" ")
    );
    let (mut bridge, mut raw_rates) = runtime::start(&args, move |ctx| {
        // Warm-up: let the runtime reach a steady state before measuring.
        raw_round(ctx, tasks / 10 + 1);
        bridge_round(ctx, empty, tasks / 10 + 1)?;
        let mut bridge = Vec::new();
        let mut raw_rates = Vec::new();
        for round in 0..rounds {
            // Alternate which goes first so drift in the runtime favours neither.
            if round % 2 == 0 {
                raw_rates.push(raw_round(ctx, tasks));
                bridge.push(bridge_round(ctx, empty, tasks)?);
            } else {
                bridge.push(bridge_round(ctx, empty, tasks)?);
                raw_rates.push(raw_round(ctx, tasks));
            }
            println!(
                "  round {round}: raw {:>9.0} tasks/s   bridge {:>9.0} tasks/s",
                raw_rates[round], bridge[round]
            );
        }
        Ok((bridge, raw_rates))
    })
    .expect("benchmark runtime");
    let (bridge, raw) = (median(&mut bridge), median(&mut raw_rates));
    println!("median: raw legion-sys {raw:.0} tasks/s, legion-bridge {bridge:.0} tasks/s");
    println!(
        "bridge cost per task: {:+.1}% (ratio raw/bridge {:.3}; target at most +5%)",
        (raw / bridge - 1.0) * 100.0,
        raw / bridge
    );
}
