//! The policy mapper against the real runtime (two CPU processors and an IO processor): tagged tasks and index-launch
//! points run on the processor the Rust policy names, their region instances work in the memory
//! it names, and tasks it does not place (no answer, an answer that is not a CPU, a panic) still
//! run where the default mapper puts them. A task registered for IO processors runs on one when
//! the policy names it, and on a CPU otherwise.

use std::process::ExitCode;
use std::sync::Arc;

use legion_bridge::harness::{case, check, run};
use legion_bridge::mapper::{self, PlacementPolicy, TaskQuery};
use legion_bridge::{
    register_task, Field, IndexLauncher, MemoryKind, Privilege, ProcessorKind, RegionRequirement, TaskLauncher, VariantOptions,
};

/// Tags the test policy understands: `PLACE | k` runs on CPU `k % cpus` (or, in an index
/// launch, CPU `point % cpus`); `SHARED` names the first CPU and lets the node's other CPUs run
/// the task too; `UTILITY` names a utility processor (cannot be honoured); `PANIC` makes the
/// policy panic. Anything else is not placed.
const PLACE: u64 = 0x7E57_0000_0000;
const SHARED: u64 = 0x7E5A_0000_0000;
const UTILITY: u64 = 0x7E58_0000_0000;
const PANIC: u64 = 0x7E59_0000_0000;
/// Names the IO processor.
const IO: u64 = 0x7E5B_0000_0000;

struct TestPolicy {
    cpus: Vec<u64>,
    io: u64,
    utility: u64,
    system_memory: u64,
}

impl PlacementPolicy for TestPolicy {
    fn processor(&self, task: &TaskQuery) -> Option<u64> {
        match task.tag & !0xFFFF {
            PLACE => {
                let k = task.point.unwrap_or((task.tag & 0xFFFF) as i64) as usize;
                Some(self.cpus[k % self.cpus.len()])
            }
            SHARED => Some(self.cpus[0]),
            IO => Some(self.io),
            UTILITY => Some(self.utility),
            PANIC => panic!("the test policy panics on purpose"),
            _ => None,
        }
    }
    fn memory(&self, task: &TaskQuery, _processor: u64) -> Option<u64> {
        matches!(task.tag & !0xFFFF, PLACE | SHARED | IO).then_some(self.system_memory)
    }
    fn shares_node(&self, task: &TaskQuery) -> bool {
        // Asked of IO placements too, to check that the shim does not spread those to CPUs.
        matches!(task.tag & !0xFFFF, SHARED | IO)
    }
}

fn main() -> ExitCode {
    mapper::install(|registration| {
        let machine = registration.machine();
        let mut cpus: Vec<u64> = machine.processors_of(ProcessorKind::Cpu).map(|p| p.id).collect();
        cpus.sort_unstable();
        let utility = machine.processors_of(ProcessorKind::Utility).next()?.id;
        let io = machine.processors_of(ProcessorKind::Io).next()?.id;
        let system_memory = machine.memories.iter().find(|m| m.kind == MemoryKind::System)?.id;
        Some(Arc::new(TestPolicy {
            cpus,
            io,
            utility,
            system_memory,
        }) as Arc<dyn PlacementPolicy>)
    })
    .unwrap();
    let where_am_i = register_task(40, "where_am_i", VariantOptions::leaf(), |ctx, ()| Ok(ctx.executing_processor().id)).unwrap();
    let which_kind = register_task(44, "which_kind", VariantOptions::leaf().also_on_io_processors(), |ctx, ()| {
        Ok(format!("{:?}", ctx.executing_processor().kind))
    })
    .unwrap();
    // Keeps its processor busy for 20 ms, then says which it was.
    let busy = register_task(43, "busy", VariantOptions::leaf(), |ctx, ()| {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        Ok(ctx.executing_processor().id)
    })
    .unwrap();
    // Writes `value` over its region and returns the processor it ran on.
    let fill = register_task(41, "fill", VariantOptions::leaf(), |ctx, (field, value): (Field<i64>, i64)| {
        let region = ctx.region(0)?;
        let mut values = region.write(field)?;
        for p in values.bounds() {
            values.set(p, value)?;
        }
        Ok(ctx.executing_processor().id)
    })
    .unwrap();
    let total = register_task(42, "total", VariantOptions::leaf(), |ctx, field: Field<i64>| {
        let region = ctx.region(0)?;
        let values = region.read(field)?;
        values.bounds().map(|p| values.get(p)).sum::<Result<i64, _>>().map_err(Into::into)
    })
    .unwrap();

    let cpus = |ctx: &legion_bridge::TaskContext| {
        let mut cpus: Vec<u64> = ctx.machine().processors_of(ProcessorKind::Cpu).map(|p| p.id).collect();
        cpus.sort_unstable();
        cpus
    };
    let cases = vec![
        case("the_policy_is_installed", |_| {
            check(mapper::is_installed(), "no policy in this process")
        }),
        case("tagged_tasks_run_on_the_policy_processor", move |ctx| {
            let cpus = cpus(ctx);
            check(cpus.len() == 2, format!("expected 2 CPUs, found {}", cpus.len()))?;
            let futures = (0..6u64)
                .map(|k| ctx.execute(&TaskLauncher::new(where_am_i, &())?.tag(PLACE | k)))
                .collect::<Result<Vec<_>, _>>()?;
            for (k, future) in futures.iter().enumerate() {
                let ran = future.get()?;
                check(ran == cpus[k % 2], format!("task {k} ran on {ran:#x}, not {:#x}", cpus[k % 2]))?;
            }
            Ok(())
        }),
        case("tasks_placed_by_node_share_its_cpus", move |ctx| {
            // Eight 20 ms tasks named to the first CPU: pinned, they would all run there; shared,
            // the second CPU takes some.
            let cpus = cpus(ctx);
            let futures = (0..8)
                .map(|_| ctx.execute(&TaskLauncher::new(busy, &())?.tag(SHARED)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut ran = std::collections::BTreeSet::new();
            for future in &futures {
                ran.insert(future.get()?);
            }
            check(
                ran == cpus.iter().copied().collect(),
                format!("shared tasks ran on {ran:x?}, not on both CPUs {cpus:x?}"),
            )?;
            let pinned = (0..8)
                .map(|_| ctx.execute(&TaskLauncher::new(busy, &())?.tag(PLACE)))
                .collect::<Result<Vec<_>, _>>()?;
            for future in &pinned {
                let at = future.get()?;
                check(at == cpus[0], format!("a pinned task ran on {at:#x}, not {:#x}", cpus[0]))?;
            }
            Ok(())
        }),
        case("index_points_are_sliced_to_the_policy_processors", move |ctx| {
            let cpus = cpus(ctx);
            let ran = ctx
                .execute_index(&IndexLauncher::new(where_am_i, 0..=7, &())?.tag(PLACE))?
                .collect()?;
            let expected: Vec<u64> = (0..8).map(|p| cpus[p % 2]).collect();
            check(ran == expected, format!("points ran on {ran:x?}, not {expected:x?}"))
        }),
        case("region_tasks_map_into_the_policy_memory", move |ctx| {
            let cpus = cpus(ctx);
            let space = ctx.create_index_space(0..=99);
            let fields = ctx.create_field_space();
            let field: Field<i64> = ctx.allocate_field(*fields, None)?;
            let region = ctx.create_region(*space, *fields);
            let before = mapper::stats();
            let write = RegionRequirement::region(*region, Privilege::WriteDiscard).field(field);
            let ran = ctx
                .execute(&TaskLauncher::new(fill, &(field, 3))?.tag(PLACE | 1).region(write))?
                .get()?;
            check(ran == cpus[1], format!("fill ran on {ran:#x}, not {:#x}", cpus[1]))?;
            let read = RegionRequirement::region(*region, Privilege::ReadOnly).field(field);
            let sum = ctx.execute(&TaskLauncher::new(total, &field)?.tag(PLACE).region(read))?.get()?;
            check(sum == 300, format!("sum {sum}, not 300"))?;
            let after = mapper::stats();
            check(after.placed_calls > before.placed_calls, "no placed mapper call counted")?;
            check(after.rejected == before.rejected, "an answer was rejected")
        }),
        case("a_task_registered_for_io_processors_runs_where_the_policy_says", move |ctx| {
            // Several at once: were the shim to spread them to the node's CPUs, some would run there.
            let on_io = (0..6)
                .map(|_| ctx.execute(&TaskLauncher::new(which_kind, &())?.tag(IO)))
                .collect::<Result<Vec<_>, _>>()?;
            for future in &on_io {
                let kind = future.get()?;
                check(kind == "Io", format!("placed on the IO processor, ran on a {kind} processor"))?;
            }
            let on_cpu = ctx.execute(&TaskLauncher::new(which_kind, &())?.tag(PLACE))?.get()?;
            check(on_cpu == "Cpu", format!("placed on a CPU, ran on a {on_cpu} processor"))?;
            let unplaced = ctx.execute(&TaskLauncher::new(which_kind, &())?)?.get()?;
            check(unplaced == "Cpu", format!("the default mapper ran it on a {unplaced} processor"))
        }),
        case(
            "a_task_without_an_io_variant_placed_on_the_io_processor_runs_on_a_cpu",
            move |ctx| {
                // The policy's answer cannot be honoured (Legion has no variant to run there): it is
                // counted as rejected and the default mapper places the task.
                let before = mapper::stats();
                let ran = ctx.execute(&TaskLauncher::new(where_am_i, &())?.tag(IO))?.get()?;
                check(cpus(ctx).contains(&ran), format!("ran on {ran:#x}, not a CPU"))?;
                check(mapper::stats().rejected > before.rejected, "the IO answer was not rejected")
            },
        ),
        case("tasks_the_policy_does_not_place_still_run", move |ctx| {
            let cpus = cpus(ctx);
            let before = mapper::stats();
            for tag in [0, UTILITY, PANIC] {
                let ran = ctx.execute(&TaskLauncher::new(where_am_i, &())?.tag(tag))?.get()?;
                check(cpus.contains(&ran), format!("tag {tag:#x}: ran on {ran:#x}, not a CPU"))?;
            }
            let after = mapper::stats();
            check(after.rejected > before.rejected, "the utility processor answer was not rejected")
        }),
    ];
    run(
        &[
            "-ll:cpu".into(),
            "2".into(),
            "-ll:util".into(),
            "1".into(),
            "-ll:io".into(),
            "1".into(),
        ],
        cases,
    )
}
