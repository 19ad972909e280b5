//! `ami2 doctor`: starts the real Legion runtime, runs a single launch, an index launch and a
//! region round trip (written by one index launch over a partition, read back by another task),
//! and prints what it found. The first thing to run on a new machine or cluster.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use legion_bridge::{
    register_task, runtime, Field, IndexLauncher, LogicalRegion, Machine, Privilege, Processor, ProcessorKind, RegionRequirement, TaskId,
    TaskLauncher, VariantOptions,
};
use serde::Serialize;

#[derive(Args)]
pub struct DoctorArgs {
    /// Points in the test region.
    #[arg(long, default_value_t = 10_000)]
    points: i64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Arguments for Legion (after `--`), e.g. `-- -ll:cpu 1 -ll:util 1`; processor counts not
    /// given are chosen from the cores present.
    #[arg(last = true)]
    legion_args: Vec<String>,
}

/// What the doctor found.
#[derive(Serialize)]
struct Report {
    legion_version: &'static str,
    legion_lib_dir: &'static str,
    legion_args: Vec<String>,
    address_spaces: u32,
    processors: Vec<Processor>,
    memories: Vec<legion_bridge::Memory>,
    /// Processor that ran the single launch.
    single_launch_processor: Processor,
    /// Index launch: points launched, and how many distinct processors ran them.
    index_points: i64,
    index_processors: usize,
    /// Region round trip: points, parts, expected and read-back sums.
    region_points: i64,
    region_parts: usize,
    region_expected_sum: f64,
    region_read_sum: f64,
    elapsed_ms: f64,
}

const TASK_WHERE: u32 = 100;
const TASK_FILL: u32 = 101;
const TASK_SUM: u32 = 102;

/// The value the fill task writes at point `p`.
fn fill_value(p: i64) -> f64 {
    (p as f64) * 0.5
}

struct Tasks {
    where_am_i: TaskId<(), Processor>,
    fill: TaskId<Field<f64>, i64>,
    sum: TaskId<Field<f64>, f64>,
}

fn register() -> Result<Tasks> {
    let where_am_i = register_task(TASK_WHERE, "doctor_where", VariantOptions::leaf(), |ctx, ()| {
        Ok(ctx.executing_processor())
    })?;
    let fill = register_task(TASK_FILL, "doctor_fill", VariantOptions::leaf(), |ctx, field: Field<f64>| {
        let region = ctx.region(0)?;
        let mut values = region.write(field)?;
        let bounds = values.bounds();
        for p in bounds.clone() {
            values.set(p, fill_value(p))?;
        }
        Ok(bounds.count() as i64)
    })?;
    let sum = register_task(TASK_SUM, "doctor_sum", VariantOptions::leaf(), |ctx, field: Field<f64>| {
        let region = ctx.region(0)?;
        let values = region.read(field)?;
        let slice = values
            .as_slice()
            .ok_or_else(|| legion_bridge::TaskError::msg("region is not dense"))?;
        Ok(slice.iter().sum())
    })?;
    Ok(Tasks { where_am_i, fill, sum })
}

pub fn run(args: DoctorArgs) -> Result<()> {
    if args.points < 1 {
        bail!("--points must be at least 1");
    }
    let tasks = register()?;
    let legion_args = runtime::with_default_args(&args.legion_args);
    let points = args.points;
    let started = Instant::now();
    let shown_args = legion_args.clone();
    // Under `ami2 launch` / mpirun, the process of address space 0 reports for the whole run.
    let report = runtime::start_rank(&legion_args, move |ctx| {
        let machine: Machine = ctx.machine();
        let single = ctx.execute(&TaskLauncher::new(tasks.where_am_i, &())?)?.get()?;

        let cpus = machine.processors_of(ProcessorKind::Cpu).count().max(1);
        let index_points = 4 * cpus as i64;
        let ran_on = ctx
            .execute_index(&IndexLauncher::new(tasks.where_am_i, 0..=index_points - 1, &())?)?
            .collect()?;
        let mut distinct: Vec<u64> = ran_on.iter().map(|p| p.id).collect();
        distinct.sort_unstable();
        distinct.dedup();

        let space = ctx.create_index_space(0..=points - 1);
        let fields = ctx.create_field_space();
        let field = ctx.allocate_field::<f64>(*fields, None)?;
        let region = ctx.create_region(*space, *fields);
        let parts = (cpus * 2).min(points as usize);
        let partition = ctx.partition_equal(*space, parts)?;
        let lpart = ctx.logical_partition(*region, *partition);
        let filled = ctx.execute_index(
            &IndexLauncher::new(tasks.fill, 0..=parts as i64 - 1, &field)?
                .region(RegionRequirement::partition(lpart, *region, Privilege::WriteDiscard).field(field)),
        )?;
        let written: i64 = filled.collect()?.iter().sum();
        if written != points {
            return Err(legion_bridge::TaskError::msg(format!(
                "fill wrote {written} points, expected {points}"
            )));
        }
        let read_sum = read_back(ctx, tasks.sum, *region, field)?;
        Ok(Report {
            legion_version: legion_bridge::legion_version(),
            legion_lib_dir: legion_sys::LIB_DIR,
            legion_args: Vec::new(),
            address_spaces: machine.address_spaces(),
            processors: machine.processors,
            memories: machine.memories,
            single_launch_processor: single,
            index_points,
            index_processors: distinct.len(),
            region_points: points,
            region_parts: parts,
            region_expected_sum: (0..points).map(fill_value).sum(),
            region_read_sum: read_sum,
            elapsed_ms: 0.0,
        })
    })
    .context("running the Legion runtime")?;
    let Some(mut report) = report else {
        return Ok(());
    };
    report.legion_args = shown_args;
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.region_read_sum != report.region_expected_sum {
        bail!(
            "region round trip read {} but wrote {}",
            report.region_read_sum,
            report.region_expected_sum
        );
    }
    Ok(())
}

fn read_back(
    ctx: &legion_bridge::TaskContext,
    sum: TaskId<Field<f64>, f64>,
    region: LogicalRegion,
    field: Field<f64>,
) -> legion_bridge::Result<f64> {
    ctx.execute(&TaskLauncher::new(sum, &field)?.region(RegionRequirement::region(region, Privilege::ReadOnly).field(field)))?
        .get()
}

fn print_report(r: &Report) {
    println!("Legion {} (libraries in {})", r.legion_version, r.legion_lib_dir);
    println!("arguments: {}", r.legion_args.join(" "));
    println!("address spaces: {}", r.address_spaces);
    let count = |kind| r.processors.iter().filter(|p| p.kind == kind).count();
    println!(
        "processors: {} ({} CPU, {} utility, {} GPU, {} I/O)",
        r.processors.len(),
        count(ProcessorKind::Cpu),
        count(ProcessorKind::Utility),
        count(ProcessorKind::Gpu),
        count(ProcessorKind::Io)
    );
    for p in &r.processors {
        println!("  {:#018x} {:?} in address space {}", p.id, p.kind, p.address_space);
    }
    println!("memories: {}", r.memories.len());
    for m in &r.memories {
        println!("  {:#018x} {:?} in address space {}", m.id, m.kind, m.address_space);
    }
    println!("single launch ran on {:#018x}", r.single_launch_processor.id);
    println!("index launch: {} points ran on {} processor(s)", r.index_points, r.index_processors);
    let verdict = if r.region_read_sum == r.region_expected_sum {
        "ok"
    } else {
        "MISMATCH"
    };
    println!(
        "region round trip: {} points in {} parts, wrote sum {}, read back {} ({verdict})",
        r.region_points, r.region_parts, r.region_expected_sum, r.region_read_sum
    );
    println!("took {:.0} ms", r.elapsed_ms);
}
