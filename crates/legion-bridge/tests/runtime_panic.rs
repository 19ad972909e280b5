//! Failures inside Rust tasks: a panic or an error is caught by the trampoline, reported to the
//! launcher as a typed error, and the runtime keeps working. A panicking top-level task is
//! reported by `runtime::start` (checked in a child process: the runtime starts once per process).

use std::process::{Command, ExitCode};

use legion_bridge::harness::{case, check, run};
use legion_bridge::{register_task, runtime, Error, IndexLauncher, TaskError, TaskLauncher, VariantOptions};

/// Set in the child process that runs a panicking top-level task.
const CHILD_ENV: &str = "LEGION_BRIDGE_TEST_TOP_LEVEL_PANIC";

fn child_with_panicking_top_level() -> ExitCode {
    let result = runtime::start::<(), _>(&[], |_| panic!("top-level gave up"));
    match result {
        Err(Error::TaskFailed {
            task,
            message,
            panicked: true,
        }) => {
            println!("reported: task={task} message={message}");
            ExitCode::SUCCESS
        }
        other => {
            println!("unexpected: {other:?}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_with_panicking_top_level();
    }
    // Panics when asked to, at one point of an index launch, or on odd numbers.
    let fragile = register_task(30, "fragile", VariantOptions::leaf(), |ctx, n: i64| {
        if ctx.index_point() == Some(2) || n % 2 == 1 {
            panic!("fragile task hit {n}");
        }
        Ok(n * 10)
    })
    .unwrap();
    let refuses = register_task(31, "refuses", VariantOptions::leaf(), |_, n: i64| -> Result<i64, TaskError> {
        Err(TaskError::msg(format!("{n} is not acceptable")))
    })
    .unwrap();
    let consumer = register_task(32, "consumer", VariantOptions::leaf(), |ctx, ()| {
        Ok(match ctx.input_future::<i64>(0) {
            Ok(v) => format!("value {v}"),
            Err(e) => format!("upstream error: {e}"),
        })
    })
    .unwrap();
    let consumer_of_bytes = register_task(38, "consumer_of_bytes", VariantOptions::leaf(), |ctx, ()| {
        Ok(ctx.input_future::<Vec<u8>>(0)?.len())
    })
    .unwrap();
    let blob = |options| {
        register_task(
            if options == VariantOptions::leaf() { 34 } else { 35 },
            "blob",
            options,
            |_, n: usize| Ok(vec![7u8; n]),
        )
    };
    let leaf_blob = blob(VariantOptions::leaf()).unwrap();
    let inner_blob = blob(VariantOptions::default()).unwrap();
    // A leaf with a declared largest result: more than the leaf limit, and enforced.
    let bounded_blob = register_task(
        36,
        "bounded_blob",
        VariantOptions::leaf().max_result_bytes(64 << 10),
        |_, n: usize| Ok(vec![7u8; n]),
    )
    .unwrap();
    let bounded_refuses = register_task(
        37,
        "bounded_refuses",
        VariantOptions::leaf().max_result_bytes(256),
        |_, n: usize| -> Result<u8, TaskError> { Err(TaskError::msg("x".repeat(n))) },
    )
    .unwrap();
    let expects_text = register_task(33, "expects_text", VariantOptions::leaf(), |_, s: String| Ok(s.len())).unwrap();

    let cases = vec![
        case("panicking_task_is_reported_as_typed_error", move |ctx| {
            let result = ctx.execute(&TaskLauncher::new(fragile, &7)?)?.get();
            match result {
                Err(Error::TaskFailed { task, message, panicked }) => {
                    check(task == "fragile", format!("task {task}"))?;
                    check(panicked, "not marked as a panic")?;
                    check(message.contains("fragile task hit 7"), format!("message {message:?}"))
                }
                other => Err(TaskError::msg(format!("expected a task failure, got {other:?}"))),
            }
        }),
        case("runtime_keeps_working_after_panics", move |ctx| {
            for n in 0..10 {
                let result = ctx.execute(&TaskLauncher::new(fragile, &n)?)?.get();
                match (n % 2, result) {
                    (0, Ok(v)) => check(v == n * 10, format!("fragile({n}) = {v}"))?,
                    (1, Err(Error::TaskFailed { panicked: true, .. })) => {}
                    (_, other) => return Err(TaskError::msg(format!("fragile({n}) gave {other:?}"))),
                }
            }
            Ok(())
        }),
        case("returned_error_is_reported_without_panic_flag", move |ctx| {
            match ctx.execute(&TaskLauncher::new(refuses, &3)?)?.get() {
                Err(Error::TaskFailed {
                    task,
                    message,
                    panicked: false,
                }) => check(task == "refuses" && message == "3 is not acceptable", format!("{task}: {message}")),
                other => Err(TaskError::msg(format!("expected a task error, got {other:?}"))),
            }
        }),
        case("one_panicking_point_leaves_other_points_intact", move |ctx| {
            let map = ctx.execute_index(&IndexLauncher::new(fragile, 0..=4, &4)?)?;
            check(
                matches!(map.collect(), Err(Error::TaskFailed { .. })),
                "collect hid the failed point",
            )?;
            for p in [0, 1, 3, 4] {
                check(map.get(p)? == 40, format!("point {p}"))?;
            }
            check(
                matches!(map.get(2), Err(Error::TaskFailed { panicked: true, .. })),
                "point 2 did not fail",
            )
        }),
        case("failure_reaches_dependent_task_through_its_future", move |ctx| {
            let failed = ctx.execute(&TaskLauncher::new(fragile, &1)?)?;
            let seen = ctx.execute(&TaskLauncher::new(consumer, &())?.future(&failed))?.get()?;
            check(seen.contains("upstream error") && seen.contains("fragile task hit 1"), seen)
        }),
        case("mismatched_argument_type_is_a_decode_error", move |ctx| {
            // Launch with bytes of a different type than the task expects (an i64 where a String is
            // wanted): the task reports it cannot decode its arguments.
            let wrong: legion_bridge::TaskId<i64, usize> = retyped(expects_text);
            match ctx.execute(&TaskLauncher::new(wrong, &-1)?)?.get() {
                Err(Error::TaskFailed {
                    message, panicked: false, ..
                }) => check(message.contains("cannot decode task arguments"), message),
                other => Err(TaskError::msg(format!("expected a decode failure, got {other:?}"))),
            }
        }),
        case("oversized_leaf_result_is_an_error_not_an_abort", move |ctx| {
            check(
                ctx.execute(&TaskLauncher::new(leaf_blob, &100)?)?.get()?.len() == 100,
                "small leaf result",
            )?;
            match ctx.execute(&TaskLauncher::new(leaf_blob, &5000)?)?.get() {
                Err(Error::TaskFailed {
                    message, panicked: false, ..
                }) => check(message.contains("leaf-task limit"), message)?,
                other => return Err(TaskError::msg(format!("expected a size failure, got {:?}", other.map(|v| v.len())))),
            }
            // `result_bytes` measures what the bound limits: the largest blob that fits is
            // returned whole, one byte more fails.
            let mut largest = 64 << 10;
            while legion_bridge::task::result_bytes(&vec![7u8; largest])? > 64 << 10 {
                largest -= 1;
            }
            let fits = ctx.execute(&TaskLauncher::new(bounded_blob, &largest)?)?.get()?;
            check(fits.len() == largest, format!("{} of {largest} bytes", fits.len()))?;
            check(
                matches!(
                    ctx.execute(&TaskLauncher::new(bounded_blob, &(largest + 1))?)?.get(),
                    Err(Error::TaskFailed { .. })
                ),
                "a result one byte over the bound was accepted",
            )?;
            check(
                ctx.execute(&TaskLauncher::new(inner_blob, &(1 << 20))?)?.get()?.len() == 1 << 20,
                "large non-leaf result",
            )
        }),
        case("declared_result_bound_is_honoured_and_enforced", move |ctx| {
            let within = ctx.execute(&TaskLauncher::new(bounded_blob, &(40 << 10))?)?;
            // A task waiting for the bounded future gets all of it.
            let echo = ctx.execute(&TaskLauncher::new(consumer_of_bytes, &())?.future(&within))?;
            check(echo.get()? == 40 << 10, "a consumer sees the whole bounded result")?;
            match ctx.execute(&TaskLauncher::new(bounded_blob, &(100 << 10))?)?.get() {
                Err(Error::TaskFailed {
                    message, panicked: false, ..
                }) => check(message.contains("limit of 65536 bytes"), message)?,
                other => return Err(TaskError::msg(format!("expected a size failure, got {:?}", other.map(|v| v.len())))),
            }
            // A failure longer than the bound is shortened, not an abort.
            match ctx.execute(&TaskLauncher::new(bounded_refuses, &10_000)?)?.get() {
                Err(Error::TaskFailed {
                    message, panicked: false, ..
                }) => check(
                    message.starts_with("xxx") && message.len() < 256,
                    format!("{} bytes", message.len()),
                ),
                other => Err(TaskError::msg(format!("expected a failure, got {other:?}"))),
            }
        }),
        case("panicking_top_level_task_is_reported_by_start", |_| {
            let exe = std::env::current_exe()?;
            let output = Command::new(exe).env(CHILD_ENV, "1").output()?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            check(output.status.success(), format!("child failed: {stdout}"))?;
            check(
                stdout.contains("task=top_level message=top-level gave up"),
                format!("child said {stdout:?}"),
            )
        }),
    ];
    run(&[], cases)
}

/// A task id with other argument types, as a client built against a stale task table would hold.
fn retyped<A, R, B, S>(task: legion_bridge::TaskId<A, R>) -> legion_bridge::TaskId<B, S> {
    legion_bridge::task::retype_for_tests(task)
}
