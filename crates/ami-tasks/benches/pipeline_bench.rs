//! End-to-end throughput of the pipeline on this machine, data flowing through the telemetry
//! store: (a) scalar-only events, (b) 512×512 float64 images with a 256×256 region-of-interest
//! mean, each over a sweep of batch sizes; then the latency from a bin's last event to its
//! publication, with a paced source. With `--soak SECONDS`, instead runs a paced synthetic stream
//! for that long and prints the resident memory at the start and the end.
//!
//! Run: `cargo bench -p ami-tasks --bench pipeline_bench [-- --scalar-events N --images N --partitions P --cpus C]`
//! (`--cpus` sets `-ll:cpu`, `--csize` Realm's system memory in MiB (default 3072); the default leaves one core to Legion's utility processor;
//! `--io N` sets `-ll:io`, by default what `ami2 run` would give (`ami_tasks::placement::io_processors_for`): the placement runs the data sources on IO processors when there are some).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami_tasks::graph::{GraphSpec, NodeSpec};
use ami_tasks::pipeline::{automatic_tuned_batch, Flow, Observer, PipelineConfig};
use ami_tasks::source::{SourceConfig, SyntheticConfig};
use ami_tasks::stores::Stores;
use ami_tasks::{GlobalReport, PipelineError};
use legion_bridge::harness::{option, option_text};
use legion_bridge::{runtime, TaskContext};
use serde_json::json;

mod common;
use common::roi_graph;

fn scalar_graph() -> GraphSpec {
    GraphSpec {
        nodes: vec![
            NodeSpec::new("energy", "select", &[], json!({"field": "energy", "kind": "scalar"})),
            NodeSpec::new("energy_chart", "strip_chart", &["energy"], json!({})),
            NodeSpec::new(
                "energy_hist",
                "histogram",
                &["energy"],
                json!({"bins": 100, "low": 0.0, "high": 10.0}),
            ),
        ],
        results: vec!["energy_chart".into(), "energy_hist".into()],
    }
}

/// Records when each bin was published.
struct Timing {
    started: Instant,
    published: Vec<(u64, SystemTime)>,
    rss_kb: Vec<(f64, Rss)>,
    stop_after: Option<f64>,
    /// (seconds, events so far) at every report: the steady rate leaves out the start-up.
    progress: Vec<(f64, u64)>,
}

impl Timing {
    fn new(stop_after: Option<f64>) -> Self {
        Timing {
            started: Instant::now(),
            published: Vec::new(),
            rss_kb: Vec::new(),
            stop_after,
            progress: Vec::new(),
        }
    }

    /// Events per second between the first report after a quarter of the run and the last one.
    fn steady_rate(&self) -> Option<f64> {
        let (end, total) = *self.progress.last()?;
        let &(from, before) = self.progress.iter().find(|(t, _)| *t >= end / 4.0)?;
        (end > from).then(|| (total - before) as f64 / (end - from))
    }
}

impl Observer for Timing {
    fn on_report(&mut self, _: &TaskContext, _: &Stores, report: &GlobalReport) -> Result<Flow, PipelineError> {
        let now = self.started.elapsed().as_secs_f64();
        // Not in a soak: what the observer keeps must not grow the memory being measured.
        if self.stop_after.is_none() {
            self.progress.push((now, report.state.events));
            let at = SystemTime::now();
            self.published.extend(report.emitted.iter().map(|b| (b.bin, at)));
        }
        // Reading /proc costs tens of µs: at most twice a second, not every round.
        if self.rss_kb.last().is_none_or(|(at, _)| now - at >= 0.5) {
            self.rss_kb.push((now, rss_kb()));
        }
        Ok(if self.stop_after.is_some_and(|s| now >= s) {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// Resident memory in KiB: all of it, the process's private memory (heap, stacks), and the
/// shared memory: Realm's system memory (`-ll:csize`), which the bridge maps in full at start.
#[derive(Clone, Copy, Default)]
struct Rss {
    total: u64,
    private: u64,
    shared: u64,
}

fn rss_kb() -> Rss {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        total: field("VmRSS:"),
        private: field("RssAnon:"),
        shared: field("RssShmem:"),
    }
}

fn throughput(
    ctx: &TaskContext,
    source: SyntheticConfig,
    graph: GraphSpec,
    partitions: usize,
    batch: Batch,
) -> Result<Throughput, PipelineError> {
    let (batch_size, max_batch_size) = match batch {
        Batch::Fixed(size) => (size, None),
        Batch::Tuned { start, largest } => (start, Some(largest)),
    };
    let config = PipelineConfig {
        source: SourceConfig::Synthetic(source),
        partitions,
        batch_size,
        max_batch_size,
        graph: Some(graph),
        ..tuned(PipelineConfig::default())
    };
    let mut timing = Timing::new(None);
    let started = Instant::now();
    let summary = ami_tasks::run(ctx, &config, None, &mut timing)?;
    let rate = summary.events as f64 / started.elapsed().as_secs_f64();
    Ok(Throughput {
        rate,
        steady: timing.steady_rate().unwrap_or(rate),
        events: summary.events,
        final_batch: summary.batch_size,
        rounds_by_batch: rounds_by_batch(&summary.rounds_by_batch_size),
        cpu: CpuPerEvent::of(&summary),
    })
}

/// A fixed batch size, or the service's tuned one (from `start` up to `largest`).
#[derive(Clone, Copy)]
enum Batch {
    Fixed(usize),
    Tuned { start: usize, largest: usize },
}

struct Throughput {
    /// Over the whole run, and after its first quarter.
    rate: f64,
    steady: f64,
    events: u64,
    /// The batch size in use at the end.
    final_batch: usize,
    /// The share of the rounds at each batch size, e.g. `2: 91%, 1: 3%, 4: 3%, 16: 3%`.
    rounds_by_batch: String,
    cpu: CpuPerEvent,
}

/// Shares of the rounds by batch size, the most used first.
fn rounds_by_batch(rounds: &std::collections::BTreeMap<usize, u64>) -> String {
    let total = rounds.values().sum::<u64>().max(1) as f64;
    let mut shares: Vec<(usize, u64)> = rounds.iter().map(|(&size, &n)| (size, n)).collect();
    shares.sort_by_key(|&(size, n)| (std::cmp::Reverse(n), size));
    let shares: Vec<String> = shares
        .iter()
        .map(|&(size, n)| format!("{size}: {:.0}%", 100.0 * n as f64 / total))
        .collect();
    shares.join(", ")
}

/// Where an event's CPU went: the sources' and workers' own work, and the whole process's (the
/// rest is the runtime's, the reducers' and the driver's).
struct CpuPerEvent(Option<(f64, f64, f64)>);

impl CpuPerEvent {
    fn of(summary: &ami_tasks::RunSummary) -> Self {
        CpuPerEvent(
            summary
                .task_cpu
                .per_event_us(summary.events)
                .filter(|_| summary.process_cpu_ns > 0)
                .map(|(source, worker)| (source, worker, summary.process_cpu_ns as f64 / 1e3 / summary.events as f64)),
        )
    }
}

impl std::fmt::Display for CpuPerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((source, worker, all)) => {
                write!(
                    f,
                    "; CPU per event: sources {source:.2} µs + workers {worker:.2} µs of {all:.2} µs in all"
                )
            }
            None => Ok(()),
        }
    }
}

/// `--window N`, `--buffers N`, `--max-rounds-per-reduction N`, `--reduction-interval-us N` and
/// `--streaming-stores 0|1` (none or every frame streamed; default: automatic, or the first
/// `--cached-batch-kib N` KiB of each batch cached) and the other tuning options applied to
/// `config`.
fn tuned(config: PipelineConfig) -> PipelineConfig {
    let cached_batch_bytes = match option("--streaming-stores", 2) {
        0 => Some(usize::MAX),
        1 => Some(0),
        _ => option_text("--cached-batch-kib").map(|kib| kib.parse::<usize>().expect("--cached-batch-kib N") << 10),
    };
    PipelineConfig {
        cached_batch_bytes,
        batch_interval_us: option_text("--batch-interval-us").map(|v| v.parse().expect("--batch-interval-us N")),
        window: option("--window", config.window),
        buffers: option("--buffers", config.buffers),
        max_rounds_per_reduction: option("--max-rounds-per-reduction", config.max_rounds_per_reduction),
        reduction_interval_us: option("--reduction-interval-us", config.reduction_interval_us as usize) as u64,
        ..config
    }
}

/// The batch sizes to sweep: `--NAME 1,2,4`, or `default`.
fn batches(name: &str, default: &[usize]) -> Vec<usize> {
    match option_text(name) {
        Some(list) => list
            .split(',')
            .map(|b| b.trim().parse().expect("batch sizes are numbers"))
            .collect(),
        None => default.to_vec(),
    }
}

fn main() {
    let scalar_events = option("--scalar-events", 2_000_000) as u64;
    let images = option("--images", 20_000) as u64;
    let partitions = option("--partitions", 2);
    let soak = option("--soak", 0);
    let cpus = option("--cpus", 0);
    ami_tasks::register_tasks().unwrap();
    // The service's placement policy (as `ami2 run` installs it), or Legion's default mapper.
    if option("--placement", 1) == 1 {
        ami_tasks::placement::install(partitions, ami_mapper::Roles { service_nodes: 0 }).unwrap();
    }
    // Image buffers: partitions × 2 buffers × 64 frames × 2 MiB, with room to spare.
    let mut args = vec!["-ll:csize".to_string(), option("--csize", 3072).to_string()];
    if cpus > 0 {
        // More CPU processors than cores left after the utility one: partitions then run in
        // parallel at the price of sharing a core with the runtime.
        args.extend(["-ll:cpu".to_string(), cpus.to_string()]);
    }
    // The data sources' IO processors, as `ami2 run` gives them (0: sources on the CPUs).
    let io = option(
        "--io",
        ami_tasks::placement::io_processors_for(partitions, runtime::cpu_processors(&args), runtime::cores()),
    );
    if io > 0 {
        args.extend(["-ll:io".to_string(), io.to_string()]);
    }
    // Any other Legion flags, e.g. `--legion "-ll:util 0"`.
    if let Some(extra) = option_text("--legion") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    println!(
        "pipeline_bench: {partitions} partitions, Legion {}",
        runtime::with_default_args(&args).join(" ")
    );
    runtime::start(&args, move |ctx| {
        if soak > 0 {
            let shapes = if option("--scalars", 0) == 1 { SyntheticConfig::scalars_only() } else { SyntheticConfig::default() };
            let source = SyntheticConfig { rate_hz: Some(20_000.0), ..shapes };
            let config = PipelineConfig {
                source: SourceConfig::Synthetic(source),
                partitions,
                batch_size: option("--batch", 500),
                graph: (option("--scalars", 0) == 1).then(scalar_graph),
                ..PipelineConfig::default()
            };
            let mut timing = Timing::new(Some(soak as f64));
            let summary = ami_tasks::run(ctx, &config, None, &mut timing)?;
            let first = timing.rss_kb.iter().find(|(t, _)| *t >= 5.0).or(timing.rss_kb.first()).copied().unwrap_or_default();
            let last = timing.rss_kb.last().copied().unwrap_or_default();
            println!("soak: {} events in {soak} s at 20 kHz (default graph, 128x128 images)", summary.events);
            let mut next = 0.0;
            for (t, kb) in &timing.rss_kb {
                if *t >= next {
                    println!(
                        "  t = {t:>5.0} s  RSS {:>5} MiB  (private {:>5} MiB, Realm's system memory resident {:>4} MiB)",
                        kb.total / 1024,
                        kb.private / 1024,
                        kb.shared / 1024
                    );
                    next += 30.0;
                }
            }
            println!(
                "  RSS after {:.0} s: {} MiB (private {} MiB); at the end ({:.0} s): {} MiB (private {} MiB)",
                first.0,
                first.1.total / 1024,
                first.1.private / 1024,
                last.0,
                last.1.total / 1024,
                last.1.private / 1024
            );
            return Ok(());
        }
        println!("(a) scalar events ({scalar_events} per point), events/s:");
        for batch in batches("--scalar-batches", &[1_000, 10_000, 50_000]) {
            let source = SyntheticConfig { frames: Some(scalar_events), rate_hz: None, ..SyntheticConfig::scalars_only() };
            let Throughput { rate, steady, events, cpu, .. } = throughput(ctx, source, scalar_graph(), partitions, Batch::Fixed(batch))?;
            println!("  batch {batch:>6}: {rate:>12.0} events/s ({events} events; {steady:.0}/s after start-up{cpu})");
        }
        println!("(b) 512x512 f64 images, 256x256 ROI mean ({images} per point), frames/s:");
        for batch in batches("--image-batches", &[1, 2, 4, 16, 64]) {
            let source = SyntheticConfig { frames: Some(images), rate_hz: None, ..SyntheticConfig::images(512, 512) };
            let Throughput { rate, steady, events, cpu, .. } = throughput(ctx, source, roi_graph(), partitions, Batch::Fixed(batch))?;
            println!("  batch {batch:>6}: {rate:>12.0} frames/s ({events} frames; {steady:.0}/s after start-up{cpu})");
        }
        // The service's own choice: the automatic batch, tuned while the sources are behind.
        let tuned_images = option("--tuned-images", 5 * images as usize) as u64;
        if tuned_images > 0 {
            let source = SyntheticConfig { frames: Some(tuned_images), rate_hz: None, ..SyntheticConfig::images(512, 512) };
            let (start, largest) =
                automatic_tuned_batch(ami_tasks::source::max_frame_bytes(&SourceConfig::Synthetic(source.clone()))? as usize);
            let Throughput { rate, steady, events, final_batch, rounds_by_batch, cpu } =
                throughput(ctx, source, roi_graph(), partitions, Batch::Tuned { start, largest })?;
            println!(
                "  tuned from {start}: {rate:>9.0} frames/s ({events} frames; {steady:.0}/s after start-up; batches of up to {largest}, {final_batch} at the end; rounds by batch {rounds_by_batch}{cpu})"
            );
        }
        // Latency: a live source (2 kHz scalars, 20 bins/s) whose time stamps are Unix times and
        // whose frames are delivered when the clock reaches them: a bin's last event is there at
        // the bin's end, a known wall time (the last bin's is the stream's end). The stream starts
        // on a bin's start 100-150 ms after the run, past its set-up (stores, graph).
        let latency_events = option("--latency-events", 20_000) as u64;
        if latency_events == 0 {
            return Ok(());
        }
        let width_ns = ami_tasks::event::bin_width_ns(20.0);
        let soon = (SystemTime::now() + Duration::from_millis(100)).duration_since(UNIX_EPOCH).expect("after 1970");
        let start_ns = (soon.as_nanos() as u64).div_ceil(width_ns) * width_ns;
        let rate_hz = 2_000.0;
        let stream_end_ns = start_ns + latency_events * (1e9 / rate_hz) as u64;
        let live = SyntheticConfig {
            frames: Some(latency_events),
            rate_hz: Some(rate_hz),
            start_ns,
            live: true,
            ..SyntheticConfig::scalars_only()
        };
        let config = PipelineConfig {
            source: SourceConfig::Synthetic(live),
            partitions,
            batch_size: 20,
            window: 2,
            graph: Some(scalar_graph()),
            ..tuned(PipelineConfig::default())
        };
        let mut timing = Timing::new(None);
        ami_tasks::run(ctx, &config, None, &mut timing)?;
        let mut latencies: Vec<f64> = timing
            .published
            .iter()
            .map(|(bin, at)| {
                let end = UNIX_EPOCH + Duration::from_nanos(((bin + 1) * width_ns).min(stream_end_ns));
                match at.duration_since(end) {
                    Ok(late) => late.as_secs_f64() * 1e3,
                    Err(early) => -early.duration().as_secs_f64() * 1e3,
                }
            })
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        if !latencies.is_empty() {
            let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
            println!(
                "(c) bin's end (its last event) -> bin published, live 2 kHz stream, batch 20: min {:.2} ms, median {:.2} ms, p90 {:.2} ms, max {:.2} ms ({} bins)",
                pick(0.0),
                pick(0.5),
                pick(0.9),
                pick(1.0),
                latencies.len(),
            );
        }
        Ok(())
    })
    .expect("benchmark runtime");
}
