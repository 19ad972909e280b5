//! `ami2 run` (the service) and `ami2 demo` (the embedded default with a live table).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ami_tasks::graph::GraphSpec;
use ami_tasks::pipeline::{Flow, Observer, PipelineConfig};
use ami_tasks::source::{RecordingSummary, SourceConfig, SyntheticConfig};
use ami_tasks::stores::Stores;
use ami_tasks::{GlobalReport, PipelineError};

use crate::refused;
use crate::table::LiveTable;
use anyhow::{bail, Context, Result};
use clap::Args;
use legion_bridge::{runtime, TaskContext};
use serde_json::Value;

/// Options shared by `run` and `demo`.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Data source: `synthetic`, `file:PATH` (a recording) or `shm:NAME` (a shared-memory ring).
    #[arg(long, default_value = "synthetic")]
    source: String,
    /// Telemetry partitions (data source + worker pairs).
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// Frames per data source task. Default: automatic, starting from as many as hold about 4
    /// MiB (at most 10,000: 31 frames of the default stream, 2 images of 512x512), tuned while
    /// the sources are behind their stream. Given: that many, always (unless --max-batch-size).
    #[arg(long)]
    batch_size: Option<usize>,
    /// The largest batch the tuner may use while the sources are behind their stream (default:
    /// 16 times the automatic batch, about 64 MiB of frames). The telemetry buffers hold that many
    /// frames.
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// Time bins per second.
    #[arg(long, default_value_t = 20.0)]
    display_rate: f64,
    /// A bin is published once every partition's data has gone past its end, or at the latest
    /// when the newest data is this many seconds (stream time) past it; what a slower partition
    /// brings for it afterwards is counted as late partials, not merged. Raise it when partitions
    /// lag each other (a loaded machine, an uneven stream) and complete bins matter more than
    /// their latency.
    #[arg(long, default_value_t = 2.0)]
    bin_wait: f64,
    /// A data source hands over a batch that is not full at most this often (microseconds),
    /// gathering the frames that come meanwhile: a stream slower than the pipeline then costs far
    /// less CPU, and a frame waits at most this long (frames reaching a new time bin go out at
    /// once). 0 hands over whatever has come at once. Default: 5000 for sources on IO
    /// processors, 1000 on CPU processors.
    #[arg(long)]
    batch_interval_us: Option<u64>,
    /// Keep Control and Results here (reloaded at start, snapshotted at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Graph to install at start (JSON file); default: keep the current one, or the built-in demo graph.
    #[arg(long)]
    graph: Option<PathBuf>,
    /// Synthetic source: stop after this many frames (default: endless).
    #[arg(long)]
    frames: Option<u64>,
    /// Synthetic source: frames per second (0 = as fast as possible).
    #[arg(long, value_parser = crate::rate_arg)]
    rate: Option<f64>,
    /// Synthetic source: random seed [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Synthetic source: image width and height (0 = no image).
    #[arg(long)]
    image_size: Option<usize>,
    /// File source: replay at the recorded pace instead of as fast as possible.
    #[arg(long)]
    realtime: bool,
    /// Print every finished bin as a JSON line on stdout: `{"bin", "graph_version", "events",
    /// "values": {RESULT: VALUE}}` (values as docs/graph.md describes them).
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_parser = crate::seconds_arg)]
    seconds: Option<f64>,
    /// Keep the service running: restart it (from the data directory) whenever it dies.
    #[arg(long)]
    pub supervise: bool,
    /// A task attempt running longer than this is stalled: the process ends with code 75 (and a
    /// supervisor starts it again). Rounds may take twice as long.
    #[arg(long, default_value_t = 15.0)]
    stall_timeout: f64,
    /// Attempts every pipeline task gets before its failure ends the run (1-16; the pause
    /// between attempts starts at 10 ms and doubles).
    #[arg(long, default_value_t = ami_tasks::robust::RetryPolicy::default().attempts)]
    attempts: u32,
    /// With --data-dir: snapshot Control and Results this often (seconds), which keeps the logs
    /// (and the replay after a restart) bounded; 0 snapshots only at the end.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    snapshot_interval: f64,
    /// Legion Prof and Legion Spy logs.
    #[command(flatten)]
    tools: crate::profiling::ToolArgs,
    /// Prometheus metrics endpoint: a port on 127.0.0.1, HOST:PORT, or 0 for none
    /// [default: 127.0.0.1:9464, skipped with a warning when taken].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Keep the metrics endpoint up this many seconds after the run, so a last scrape sees the
    /// final counts.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    metrics_linger: f64,
    #[command(flatten)]
    service: crate::service::ServiceArgs,
    /// Processes (of a multi-process run) that serve rather than hold data: graph manager,
    /// global reducer, monitors (docs/cluster.md).
    #[arg(long, default_value_t = 1)]
    service_nodes: usize,
    /// Write the run's summary (totals, where tasks ran, mapper costs) as JSON to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Arguments for Legion (after `--`), e.g. `-- -ll:cpu 1 -ll:util 1`.
    #[arg(last = true)]
    legion_args: Vec<String>,
}

impl RunArgs {
    /// The batch size to start with and the tuner's largest (`None`: no tuning), for frames of up
    /// to `frame_bytes`.
    fn batch_sizes(&self, frame_bytes: usize) -> Result<(usize, Option<usize>)> {
        let (automatic, ceiling) = ami_tasks::pipeline::automatic_tuned_batch(frame_bytes);
        let start = self.batch_size.unwrap_or(automatic);
        let largest = match (self.batch_size, self.max_batch_size) {
            (_, Some(largest)) => Some(largest),
            (Some(_), None) => None,
            (None, None) => Some(ceiling),
        };
        if start == 0 || largest == Some(0) {
            bail!("batch sizes must be at least 1");
        }
        if let Some(largest) = largest.filter(|&largest| largest < start) {
            bail!("--max-batch-size ({largest}) must be at least the batch size ({start})");
        }
        Ok((start, largest))
    }

    /// The pipeline's configuration, with its batch sizes fitted to the source's largest frame,
    /// and the summary of the recording replayed, if any (read once: sizing the buffers needs
    /// the largest frame, which for a recording means reading the whole file).
    fn pipeline_config(&self, demo: bool) -> Result<(PipelineConfig, Option<RecordingSummary>)> {
        let source = match self.source.split_once(':') {
            None if self.source == "synthetic" => {
                let defaults = SyntheticConfig::default();
                let mut synthetic = SyntheticConfig {
                    seed: self.seed.unwrap_or(defaults.seed),
                    frames: self.frames,
                    ..defaults
                };
                if let Some(rate) = self.rate {
                    synthetic.rate_hz = (rate > 0.0).then_some(rate);
                } else if !demo {
                    synthetic.rate_hz = None;
                }
                if let Some(size) = self.image_size {
                    synthetic.images.retain(|_| size > 0);
                    for image in &mut synthetic.images {
                        image.width = size;
                        image.height = size;
                    }
                }
                SourceConfig::Synthetic(synthetic)
            }
            Some(("file", "")) => {
                return Err(refused(anyhow::anyhow!(
                    "--source file:PATH needs the path of a recording (`ami2 record` makes one)"
                )))
            }
            Some(("file", path)) => SourceConfig::File {
                path: PathBuf::from(path),
                realtime: self.realtime,
            },
            Some(("shm", name)) => {
                ami_tasks::source::shm::shm_path(name).map_err(refused)?;
                SourceConfig::SharedMemory { name: name.to_string() }
            }
            _ => {
                return Err(refused(anyhow::anyhow!(
                    "--source must be `synthetic`, `file:PATH` or `shm:NAME`, not {:?}",
                    self.source
                )))
            }
        };
        if !matches!(source, SourceConfig::Synthetic(_)) {
            // Ignoring them would run something else than what was asked (a whole recording
            // instead of its first frames, say).
            let given = [
                ("--frames", self.frames.is_some()),
                ("--rate", self.rate.is_some()),
                ("--seed", self.seed.is_some()),
                ("--image-size", self.image_size.is_some()),
            ];
            let given: Vec<&str> = given.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect();
            if !given.is_empty() {
                return Err(refused(anyhow::anyhow!(
                    "{} {} for the synthetic source only, not for --source {}",
                    given.join(", "),
                    if given.len() == 1 { "is" } else { "are" },
                    self.source,
                )));
            }
        }
        if self.realtime && !matches!(source, SourceConfig::File { .. }) {
            return Err(refused(anyhow::anyhow!(
                "--realtime replays a recording at its pace: it needs --source file:PATH (a synthetic source is paced with --rate)"
            )));
        }
        let graph = match &self.graph {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading graph {}", path.display()))
                    .map_err(refused)?;
                let spec: GraphSpec = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a graph document", path.display()))
                    .map_err(refused)?;
                ami_tasks::graph::check_size(&spec)
                    .map_err(|error| refused(anyhow::anyhow!("{} is not a valid graph: {error}", path.display())))?;
                ami_tasks::graph::compile(&spec).map_err(|errors| {
                    refused(anyhow::anyhow!(
                        "{} is not a valid graph:\n  {}",
                        path.display(),
                        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  ")
                    ))
                })?;
                Some(spec)
            }
            None => None,
        };
        if self.stall_timeout.is_nan() || self.stall_timeout <= 0.0 {
            return Err(refused(anyhow::anyhow!("--stall-timeout must be positive")));
        }
        let attempt_ms = (self.stall_timeout * 1000.0) as u64;
        if !(0.0..=MAX_BIN_WAIT_SECONDS).contains(&self.bin_wait) {
            return Err(refused(anyhow::anyhow!(
                "--bin-wait must be between 0 and {MAX_BIN_WAIT_SECONDS} seconds"
            )));
        }
        if self.snapshot_interval.is_nan() || self.snapshot_interval < 0.0 {
            return Err(refused(anyhow::anyhow!("--snapshot-interval must be 0 or more seconds")));
        }
        let recording = match &source {
            SourceConfig::File { path, .. } => {
                let info = ami_tasks::source::recording_info(path).map_err(|error| {
                    // A start again would fail the same way: refused, so --supervise stops.
                    let unusable = error.is_unusable_recording();
                    let error = anyhow::Error::new(error).context(format!("reading {}", path.display()));
                    if unusable {
                        refused(error)
                    } else {
                        error
                    }
                })?;
                Some(info)
            }
            _ => None,
        };
        let max_frame_bytes = match &recording {
            Some(info) => info.max_stored_frame_bytes as usize,
            None => ami_tasks::source::max_frame_bytes(&source)? as usize,
        };
        let (batch_size, max_batch_size) = self.batch_sizes(max_frame_bytes).map_err(refused)?;
        let config = PipelineConfig {
            source,
            partitions: self.partitions,
            batch_size,
            max_batch_size,
            max_frame_bytes: Some(max_frame_bytes),
            display_rate_hz: self.display_rate,
            bin_wait_ms: (self.bin_wait * 1000.0) as u64,
            batch_interval_us: self.batch_interval_us,
            graph,
            stall_limits: ami_tasks::health::StallLimits {
                attempt_ms,
                round_ms: attempt_ms * 2,
            },
            exit_on_stall: true,
            retry: ami_tasks::robust::RetryPolicy {
                attempts: self.attempts,
                ..Default::default()
            },
            snapshot_interval_ms: (self.snapshot_interval * 1000.0) as u64,
            restarted_because: std::env::var(crate::supervise::RESTART_REASON_VAR).ok(),
            ..PipelineConfig::default()
        };
        Ok((config, recording))
    }
}

/// Longest `--bin-wait`. The bins waiting are held in the global reducer's state, which travels
/// in its future from one reduction to the next: a partition without data for a minute keeps
/// 1,200 bins of 20 Hz there.
const MAX_BIN_WAIT_SECONDS: f64 = 60.0;

/// CPU processors for a single-process run of `partitions` partitions, when the default would
/// give fewer (on small machines it leaves a core to Legion's utility processor): one per
/// partition, up to the cores, so that partitions run at once. On 2 cores with 2 partitions this
/// doubles the throughput (3.4M against 1.8M scalar events/s, 11k against 3.5k image frames/s)
/// although the utility processor then shares a core. `None` when the caller chose, or when
/// several processes share the machine's cores.
fn cpu_processors_for(partitions: usize, ranks: usize, legion_args: &[String]) -> Option<usize> {
    if ranks > 1 || legion_args.iter().any(|a| a == "-ll:cpu") {
        return None;
    }
    let default = runtime::cpu_processors(&[]);
    // Within the processors Legion runs in a process, beside the others the arguments ask for.
    let others = runtime::local_processors(legion_args).saturating_sub(runtime::cpu_processors(legion_args));
    let wanted = partitions
        .min(runtime::cores())
        .min(runtime::MAX_LOCAL_PROCESSORS.saturating_sub(others));
    (wanted > default).then_some(wanted)
}

/// IO processors per process ([`ami_tasks::placement::io_processors_for`]) for `partitions`
/// partitions over `ranks` processes of which `service_nodes` serve (as the placement splits
/// them), each with the CPU processors `legion_args` give it. `None` when the caller chose
/// (`-ll:io`).
fn io_processors_for(partitions: usize, ranks: usize, service_nodes: usize, legion_args: &[String]) -> Option<usize> {
    if legion_args.iter().any(|a| a == "-ll:io") {
        return None;
    }
    let data_nodes = ami_mapper::Roles { service_nodes }.data_nodes(ranks);
    let per_node = partitions.div_ceil(data_nodes.max(1)).max(1);
    Some(ami_tasks::placement::io_processors_for(
        per_node,
        runtime::cpu_processors(legion_args),
        runtime::cores(),
    ))
}

/// Prints bins as they finish: a live table (demo) or JSON lines.
struct Printer {
    json: bool,
    started: Instant,
    seconds: Option<f64>,
    stop: Arc<AtomicBool>,
    table: LiveTable,
    /// Seconds per time bin.
    bin_seconds: f64,
    /// Replay progress of a recording played faster than real time (frames of all partitions).
    progress: Option<indicatif::ProgressBar>,
}

impl Printer {
    /// Prints a table line on stdout (above the progress bar, when there is one).
    fn line(&self, out: &mut impl Write, text: String) {
        match &self.progress {
            Some(bar) => bar.suspend(|| {
                let _ = writeln!(out, "{text}");
            }),
            None => {
                let _ = writeln!(out, "{text}");
            }
        }
    }
}

impl Observer for Printer {
    fn on_report(&mut self, _: &TaskContext, _: &Stores, report: &GlobalReport) -> Result<Flow, PipelineError> {
        let mut out = std::io::stdout().lock();
        for bin in &report.emitted {
            if self.json {
                let _ = writeln!(out, "{}", bin_json(bin));
                continue;
            }
            let t = bin.bin as f64 * self.bin_seconds;
            for line in self.table.lines(bin.bin, t, bin.events, bin.graph_version, &bin.values) {
                self.line(&mut out, line);
            }
        }
        if let Some(bar) = &self.progress {
            bar.set_position(report.sources.values().map(|(_, stats)| stats.frames).sum());
        }
        let _ = out.flush();
        let timed_out = self.seconds.is_some_and(|s| self.started.elapsed().as_secs_f64() >= s);
        Ok(if timed_out || self.stop.load(Ordering::SeqCst) {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// A finished bin as one JSON object, its results' values nested as JSON (not as the JSON text
/// that bins carry between tasks).
fn bin_json(bin: &ami_tasks::EmittedBin) -> Value {
    serde_json::json!({
        "bin": bin.bin,
        "graph_version": bin.graph_version,
        "events": bin.events,
        "values": bin.values,
    })
}

pub fn run(args: RunArgs, demo: bool) -> Result<()> {
    // First of all: a Ctrl-C or SIGTERM during start-up (a terminal's Ctrl-C reaches a
    // supervised service and its supervisor at once) must stop the run cleanly, not kill it.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let metrics_endpoint = crate::metrics::Endpoint::parse("--metrics", args.metrics.as_deref()).map_err(refused)?;
    if !(0.0..=86_400.0).contains(&args.metrics_linger) {
        return Err(refused(anyhow::anyhow!("--metrics-linger must be between 0 and 86400 seconds")));
    }
    // Arguments are checked before the runtime starts; a refused one is not worth a restart.
    let (mut config, recording) = args.pipeline_config(demo)?;
    config.validate().map_err(refused)?;
    match config.max_batch_size {
        Some(largest) => tracing::info!(
            "batch size: from {} frames, tuned up to {largest} while the sources are behind",
            config.batch_size
        ),
        None => tracing::info!("batch size: {} frames", config.batch_size),
    }
    ami_tasks::register_tasks()?;
    ami_tasks::placement::install(
        config.partitions,
        ami_mapper::Roles {
            service_nodes: args.service_nodes,
        },
    )?;
    // The banner and the replay's progress bar come from the driver's process, which speaks
    // for the run (in a multi-process run Realm decides which one that is).
    let banner = (demo && !args.json).then(|| {
        format!(
            "ami2 demo: synthetic events at {} Hz, built-in graph; Ctrl-C to stop",
            config_rate(&config)
        )
    });
    let replay_frames = match (&config.source, &recording) {
        (SourceConfig::File { realtime: false, .. }, Some(info)) if !args.json => Some(info.frames),
        _ => None,
    };
    let printer = Printer {
        json: args.json,
        started: Instant::now(),
        seconds: args.seconds,
        stop: stop.clone(),
        table: LiveTable::for_stdout(),
        bin_seconds: 1.0 / config.display_rate_hz,
        progress: None,
    };
    // Clients talk to the process that runs the driver; the others only run tasks. Alone, this
    // process is the driver's: it listens now, so that a taken port is reported before Legion
    // starts. In a multi-process run, Realm decides which process runs the driver (the p2p
    // bootstrap numbers them in the order they connect), so that one listens when it starts it.
    let bin_width_ns = ami_tasks::event::bin_width_ns(config.display_rate_hz);
    let (service, service_args) = if runtime::launch_rank().is_none() {
        (crate::service::Service::start(&args.service, bin_width_ns)?, None)
    } else {
        crate::service::Service::check(&args.service)?;
        (None, Some(args.service.clone()))
    };
    let mut observer = crate::service::ServiceObserver::new(printer, service.as_ref().map(|s| s.hub()));
    let data_dir = args.data_dir.clone();
    let started = Instant::now();
    let mut legion_args = args.legion_args.clone();
    match runtime::flag_value(&legion_args, "-ll:csize").and_then(|mb| mb.parse::<u64>().ok()) {
        // Memory given: the tuner's batches stay within it, unless its ceiling was given too.
        Some(mb) if args.max_batch_size.is_none() => fit_batches_in(&mut config, mb),
        Some(_) => {}
        None => {
            if args.max_batch_size.is_none() {
                fit_batches_in(&mut config, automatic_memory_mb(total_memory_mb()));
            }
            legion_args.extend(["-ll:csize".to_string(), config.system_memory_mb().to_string()]);
        }
    }
    let ranks = runtime::expected_processes().unwrap_or(1) as usize;
    if let Some(cpus) = cpu_processors_for(config.partitions, ranks, &legion_args) {
        legion_args.extend(["-ll:cpu".to_string(), cpus.to_string()]);
    }
    // IO processors only within the processors Legion runs in a process (else the sources stay
    // on the CPU processors).
    let room = runtime::MAX_LOCAL_PROCESSORS.saturating_sub(runtime::local_processors(&legion_args));
    if let Some(io) = io_processors_for(config.partitions, ranks, args.service_nodes, &legion_args).filter(|&n| n > 0 && n <= room) {
        legion_args.extend(["-ll:io".to_string(), io.to_string()]);
    }
    let processors = runtime::local_processors(&legion_args);
    if processors > runtime::MAX_LOCAL_PROCESSORS {
        return Err(refused(anyhow::anyhow!(
            "the Legion arguments ask for {processors} processors in a process (-ll:cpu, -ll:util, -ll:io, ...); this Legion runs at most {}",
            runtime::MAX_LOCAL_PROCESSORS
        )));
    }
    // Every process of a multi-process run (`ami2 launch`, mpirun) writes its own profile.
    let tool_flags = crate::profiling::legion_flags(args.tools.profile.as_deref(), args.tools.spy.as_deref(), ranks, &legion_args)?;
    legion_args.extend(tool_flags);
    // Set when the data directory cannot be loaded: the run ends with its own exit code.
    let unloadable = Arc::new(AtomicBool::new(false));
    let unloadable_seen = unloadable.clone();
    // In a multi-process run, only the process of address space 0 runs the driver.
    let summary = runtime::start_rank(&legion_args, move |ctx| {
        // The driver's process is the one whose metrics count: serve them from here.
        crate::metrics::install(metrics_endpoint).map_err(task_error)?;
        // Held until the run ends (and released by the kernel if the process dies).
        let _lock = data_dir.as_deref().map(lock_data_dir).transpose().map_err(task_error)?;
        if let Some(banner) = &banner {
            println!("{banner}");
        }
        observer.inner.progress = replay_frames.map(replay_progress_bar);
        let service = match &service_args {
            Some(args) => crate::service::Service::start(args, bin_width_ns).map_err(task_error)?,
            None => None,
        };
        observer.hub = service.as_ref().map(|s| s.hub()).or(observer.hub.take());
        let summary = ami_tasks::run(ctx, &config, data_dir.as_deref(), &mut observer);
        if let Err(ami_tasks::PipelineError::Store(error)) = &summary {
            unloadable_seen.store(error.is_load_failure(), Ordering::SeqCst);
        }
        if let Some(service) = service {
            service.stop();
        }
        Ok(summary?)
    })
    .context("running the pipeline");
    if let Some(service) = service {
        service.stop();
    }
    let summary = match summary {
        Err(err) if unloadable.load(Ordering::SeqCst) => return Err(crate::unloadable(err)),
        summary => summary,
    };
    let Some(summary) = summary? else {
        tracing::info!(mapper = ?legion_bridge::mapper::stats(), "this process served the run");
        return Ok(());
    };
    let secs = started.elapsed().as_secs_f64();
    if let Some(path) = &args.summary {
        crate::launch::write_summary(path, &summary, secs)?;
    }
    eprintln!(
        "ami2: {} events in {:.1} s ({:.0} events/s), {} bins published, {} late partials, graph version {}{}",
        summary.events,
        secs,
        summary.events as f64 / secs,
        summary.bins_emitted,
        summary.late_partials,
        summary.graph_version,
        if summary.graph_failures.is_empty() {
            String::new()
        } else {
            format!(
                ", {} graph versions failed at run time (`ami2 graph history`)",
                summary.graph_failures.len()
            )
        }
    );
    if let Some(costs) = summary.cpu_per_event_text() {
        eprintln!("ami2: CPU: {costs}");
    }
    // The sources' state at their last batch: how far behind their stream they ended.
    if let Some((_, ms)) =
        ami_tasks::pipeline::most_behind(&summary.sources).filter(|&(_, ms)| ms >= ami_tasks::pipeline::BEHIND_WARNING_MS)
    {
        eprintln!(
            "ami2: the data sources ended {:.1} s behind their stream: it came faster than the pipeline analysed it",
            ms as f64 / 1e3
        );
    }
    if !summary.incidents.is_empty() {
        eprintln!("ami2: {} incidents (see /incident/ in Control):", summary.incidents.len());
        for incident in &summary.incidents {
            eprintln!("  {} {:?}: {}", incident.component, incident.kind, incident.message);
        }
    }
    for (flag, dir, command) in [("--profile", &args.tools.profile, "prof"), ("--spy", &args.tools.spy, "spy")] {
        if let Some(dir) = dir {
            eprintln!("ami2: {flag} logs in {0}; read them with `ami2 {command} {0}`", dir.display());
        }
    }
    if let Some(metrics) = crate::metrics::summary() {
        tracing::info!(component = "metrics", "at the end of the run:\n{metrics}");
    }
    // Ctrl-C ends the wait too.
    let linger_until = Instant::now() + std::time::Duration::from_secs_f64(args.metrics_linger);
    while Instant::now() < linger_until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// The progress bar of a recording of `frames` frames replayed faster than real time.
fn replay_progress_bar(frames: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(frames);
    bar.set_style(
        indicatif::ProgressStyle::with_template("replaying {bar:40} {pos}/{len} frames ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// An error of the driver's set-up, as its task reports it.
fn task_error(err: anyhow::Error) -> legion_bridge::TaskError {
    legion_bridge::TaskError::msg(format!("{err:#}"))
}

/// Lowers the batch tuner's ceiling, a rung at a time, until the stores fit in `mb` MiB of system
/// memory (or it reaches the batch size it starts from).
fn fit_batches_in(config: &mut PipelineConfig, mb: u64) {
    let wanted = config.max_batch_size;
    while config.max_batch_size.is_some_and(|largest| largest > config.batch_size) && config.system_memory_mb() > mb {
        config.max_batch_size = Some((config.largest_batch() / 2).max(config.batch_size));
    }
    if config.max_batch_size != wanted {
        tracing::info!(
            "batch size: tuned up to {} frames, what {mb} MiB of system memory holds",
            config.largest_batch()
        );
    }
}

/// Locks data directory `dir` for this service: two services writing the same stores would
/// analyse the same frames twice and overwrite each other's snapshots and logs. The lock file
/// holds the owner's process id, for the message the second one gets.
fn lock_data_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    let path = dir.join("service.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "the data directory {} is in use by another ami2 service (process {}): a data directory serves one service",
                dir.display(),
                owner.trim()
            );
        }
        Err((_, errno)) => return Err(errno).with_context(|| format!("locking {}", path.display())),
    };
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// System memory (MiB) `run` gives Realm at most when `-ll:csize` is not given, on a machine of
/// `total_mb`: an eighth of it, at least 1 GiB. The batch tuner's ceiling is fitted into it:
/// every partition has buffers for the largest batch, all resident from the start, so 32
/// partitions at the full ceiling took 5.5 GB and 6 s of page faults to start on 2 cores.
fn automatic_memory_mb(total_mb: Option<u64>) -> u64 {
    (total_mb.unwrap_or(8192) / 8).max(1024)
}

/// The machine's memory in MiB (`MemTotal` of `/proc/meminfo`).
fn total_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn config_rate(config: &PipelineConfig) -> String {
    match &config.source {
        SourceConfig::Synthetic(s) => s.rate_hz.map_or("max".to_string(), |r| format!("{r}")),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_memory_size_many_partitions_get_a_lower_batch_ceiling() {
        // Frames of the default stream (about 130 KiB), batches from 31, tuned up to 496.
        let config = |partitions| PipelineConfig {
            partitions,
            batch_size: 31,
            max_batch_size: Some(496),
            max_frame_bytes: Some(130 << 10),
            ..PipelineConfig::default()
        };
        let budget = automatic_memory_mb(Some(24 * 1024));
        assert_eq!(budget, 3072);
        assert_eq!(automatic_memory_mb(Some(2048)), 1024);
        // 2 partitions fit at the full ceiling: nothing changes.
        let mut two = config(2);
        fit_batches_in(&mut two, budget);
        assert_eq!(two.max_batch_size, Some(496));
        // 32 would take gigabytes: the ceiling comes down until they fit.
        let mut many = config(32);
        assert!(many.system_memory_mb() > 5000, "{}", many.system_memory_mb());
        fit_batches_in(&mut many, budget);
        assert!(many.largest_batch() < 496 && many.largest_batch() >= 31, "{}", many.largest_batch());
        assert!(many.system_memory_mb() <= budget, "{}", many.system_memory_mb());
        assert!(total_memory_mb().is_some_and(|mb| mb > 0));
    }

    #[test]
    fn io_processors_follow_the_partitions_of_the_busiest_data_node() {
        let cores = runtime::cores();
        let cpus = |n: usize| vec!["-ll:cpu".to_string(), n.to_string()];
        // One process, one CPU processor, as many cores as it takes to leave one.
        let expected = |per_node: usize| ami_tasks::placement::io_processors_for(per_node, 1, cores);
        assert_eq!(io_processors_for(1, 1, 1, &cpus(1)), Some(expected(1)));
        // 3 processes, 1 serving: 5 partitions over 2 data nodes, 3 on the first.
        assert_eq!(io_processors_for(5, 3, 1, &cpus(1)), Some(expected(3)));
        // Service nodes asked for every process: the placement keeps them all as data nodes.
        assert_eq!(io_processors_for(4, 2, 2, &cpus(1)), Some(expected(2)));
        // The caller's choice stands.
        assert_eq!(io_processors_for(4, 1, 0, &["-ll:io".into(), "0".into()]), None);
    }
}
