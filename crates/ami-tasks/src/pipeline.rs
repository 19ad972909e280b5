//! Running the pipeline: creates the stores, installs the graph, then launches round after round
//! of source → worker tasks, and after every few rounds one reduction (local reducers → global
//! reducer) over the workers of those rounds, keeping a bounded number of reductions in flight,
//! until the sources end or the observer says stop.
//!
//! How many rounds one reduction covers adapts to the stream: while the sources deliver full
//! batches (they are behind the data), as many as fit in
//! [`PipelineConfig::reduction_interval_us`] at the round rate measured so far, at most
//! [`PipelineConfig::max_rounds_per_reduction`], so small rounds pay the reducers' runtime cost
//! once per several rounds; while they keep up with a live stream, every round is reduced and
//! bins are published without delay.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use ami_mapper::TaskKind;
use kv_region::Op;
use legion_bridge::{Future, Privilege, ProcessorKind, TaskContext, TaskLauncher};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::batch_tuner::BatchTuner;
use crate::event::{bin_width_ns, DEFAULT_DISPLAY_RATE_HZ};
use crate::graph::{check_size, compile, default_graph, default_graph_for, GraphSpec, MAX_RESULTS};
use crate::graph_manager::{made_graph_doc, made_graph_key, superseded_version_keys, write_version_with, GraphManagerHook, GraphRequests};
use crate::health::{self, StallLimits};
use crate::incident_log::IncidentLog;
use crate::metrics::ReportMetrics;
use crate::monitor::{read_incidents, MonitorArgs, Monitors, INCIDENT_FILE};
use crate::placement::{partition_groups, source_on_io_processor, tag};
use crate::rate_limited::RateLimitedCount;
use crate::retention::WrittenBins;
use crate::robust::{Incident, IncidentKind, RetryPolicy};
use crate::source::{SourceConfig, SourcePosition, SourceStats, SyntheticConfig};
use crate::stores::{bad_graph_key, buffer_prefix, graph_key, source_prefix, StoreSizes, Stores, BUILTIN_GRAPH_KEY, GRAPH_VERSION_KEY};
use crate::task_cpu::TaskCpu;
use crate::tasks::{
    merge_by_task, tasks, GlobalArgs, GlobalReport, GraphFailure, PartialReport, PipelineTasks, ProcessorsUsed, RanOn, SourceArgs,
    WorkerArgs,
};
use crate::PipelineError;

/// Most attempts a task may be given ([`RetryPolicy::attempts`]): a task retried that often is
/// broken, not unlucky. (A data source's report carries an incident per failed attempt; it is
/// shrunk to fit [`crate::tasks::SOURCE_REPORT_MAX_BYTES`].)
pub const MAX_ATTEMPTS: u32 = 16;

/// How to run the pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub source: SourceConfig,
    /// Telemetry partitions (one data source and one worker each).
    pub partitions: usize,
    /// Most frames a data source task delivers at once: fixed, or where the tuning starts.
    pub batch_size: usize,
    /// When set, the batch size is tuned while the sources are behind their stream, from an
    /// eighth of `batch_size` up to this ([`crate::batch_tuner`]), and the telemetry buffers
    /// hold that many frames. `None`: `batch_size` always.
    pub max_batch_size: Option<usize>,
    /// Time bins per second.
    pub display_rate_hz: f64,
    /// Telemetry buffers per partition (≥ 2: sources fill one while workers read another).
    pub buffers: usize,
    /// Reductions in flight before the driver waits for the oldest (bounds memory: at most
    /// `window × max_rounds_per_reduction` rounds are in flight). Once the sources keep up with
    /// their streams, one at most (see `ReductionPace::window`).
    pub window: usize,
    /// Most rounds one reduction merges (1: a reduction after every round).
    pub max_rounds_per_reduction: usize,
    /// A reduction covers no more rounds than the measured round rate fits in this time
    /// (microseconds), so that batching reductions delays a bin's publication by at most that.
    pub reduction_interval_us: u64,
    /// Bins kept in the Results store.
    pub retained_bins: u64,
    /// Publish a bin at the latest this long (stream time) after newer data arrived.
    pub bin_wait_ms: u64,
    /// Longest a data source task waits for data.
    pub source_timeout_ms: u64,
    /// A partition's data source hands over a batch that is not full no sooner than this after its
    /// previous one (microseconds), and meanwhile gathers the frames that come. A stream slower
    /// than the pipeline then comes in fewer, fuller rounds, which costs far less CPU per frame;
    /// a frame waits at most this long, and the first frames after a pause, or those that reach
    /// a new time bin, not at all. 0: hand over whatever has come at once. `None`: automatic
    /// ([`PipelineConfig::batch_interval_for`]).
    pub batch_interval_us: Option<u64>,
    /// Largest encoded frame; estimated from a synthetic source's shapes when not given.
    pub max_frame_bytes: Option<usize>,
    /// Frames are stored in chunks of at most this many bytes (at least one frame each).
    pub chunk_bytes: usize,
    /// Graph to install at start (a new version if it differs from the current one); without one,
    /// the current graph stays, or the default graph is installed when there is none.
    pub graph: Option<GraphSpec>,
    /// Retries of every pipeline task.
    pub retry: RetryPolicy,
    /// Robustness monitor: how often it looks, and what counts as stalled.
    pub monitor_interval_ms: u64,
    pub stall_limits: StallLimits,
    /// End the process (exit code 75) when a monitor finds a stall, so that the supervisor
    /// restarts it; otherwise the stall is only recorded.
    pub exit_on_stall: bool,
    /// Recorded as a restart incident at start (set by the supervisor that restarted the service).
    pub restarted_because: Option<String>,
    /// With a data directory: snapshot Control and Results this often (milliseconds), which also
    /// compacts Control's logs, so that they (and the replay at a restart) stay bounded however
    /// long the service runs. 0: only at the end of the run.
    pub snapshot_interval_ms: u64,
    /// How many bytes at the start of each batch sources write with ordinary stores, so that
    /// they stay in the cache for their worker; the large arrays of later frames go past the
    /// caches with streaming stores (evicted before their worker reads them anyway, they save
    /// the memory traffic of reading each line first). `Some(0)` streams every frame,
    /// `Some(usize::MAX)` none. `None`: automatic, see [`Self::cached_batch_bytes`].
    pub cached_batch_bytes: Option<usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            source: SourceConfig::Synthetic(SyntheticConfig::default()),
            partitions: 1,
            batch_size: DEFAULT_BATCH_FRAMES,
            max_batch_size: None,
            display_rate_hz: DEFAULT_DISPLAY_RATE_HZ,
            buffers: 2,
            window: 4,
            max_rounds_per_reduction: 8,
            reduction_interval_us: 5_000,
            retained_bins: 200,
            bin_wait_ms: 2000,
            source_timeout_ms: 200,
            batch_interval_us: None,
            max_frame_bytes: None,
            chunk_bytes: 1 << 20,
            graph: None,
            retry: RetryPolicy::default(),
            monitor_interval_ms: 250,
            stall_limits: StallLimits::default(),
            exit_on_stall: false,
            restarted_because: None,
            snapshot_interval_ms: 30_000,
            cached_batch_bytes: None,
        }
    }
}

impl PipelineConfig {
    /// Checks the configuration's values (`run` does, before anything starts).
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |what: &str| Err(PipelineError::Config(what.to_string()));
        if self.partitions == 0 {
            return bad("partitions must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if self.max_batch_size.is_some_and(|max| max < self.batch_size) {
            return bad("the largest batch size must be at least the batch size");
        }
        if self.buffers < 2 {
            return bad("at least 2 telemetry buffers per partition are needed");
        }
        if !(self.display_rate_hz > 0.0 && self.display_rate_hz <= 1e6) {
            return bad("the display rate must be more than 0 and at most 1e6 Hz");
        }
        if self.window == 0 {
            return bad("window must be at least 1");
        }
        if self.max_rounds_per_reduction == 0 {
            return bad("a reduction covers at least 1 round");
        }
        // A data source reports one incident per failed attempt, within a bounded report.
        if !(1..=MAX_ATTEMPTS).contains(&self.retry.attempts) {
            return bad(&format!("retry attempts must be between 1 and {MAX_ATTEMPTS}"));
        }
        Ok(())
    }

    /// Realm system memory (MiB) the stores of this configuration need, with headroom (a quarter
    /// more, and 256 MiB for the runtime's own instances): what to pass as `-ll:csize`. All of it
    /// is resident from the start (see `legion_bridge`'s system memory), so no more than that.
    pub fn system_memory_mb(&self) -> u64 {
        let frame = self.max_frame_bytes().unwrap_or(4 << 20);
        let telemetry = self.partitions * self.buffers * (self.largest_batch() * (frame + 320) + self.chunk_bytes);
        let results = self.retained_bins as usize * MAX_RESULTS * 4096;
        let bytes = (telemetry + results + crate::stores::control_segment_bytes() + (24 << 20)) as f64 * 1.25;
        (bytes / (1 << 20) as f64) as u64 + 256
    }

    /// How many bytes at the start of each batch sources write with ordinary stores
    /// ([`PipelineConfig::cached_batch_bytes`]) when one node holds at most `partitions_per_node`
    /// partitions and `cpus_per_node` CPU processors. Automatic: the last-level cache shared by
    /// that node's buffers in rotation, halved when several CPUs write batches at once (measured:
    /// one CPU did 5-10% more with the whole cache than with half; two CPUs 5-15% more with
    /// half). A batch that fits (a small configured batch, or a paced source handing over what
    /// has come so far) stays in the cache entirely; of a larger one, its first frames.
    pub fn cached_batch_bytes(&self, partitions_per_node: usize, cpus_per_node: usize) -> usize {
        self.cached_batch_bytes.unwrap_or_else(|| {
            let writers_at_once = partitions_per_node.min(cpus_per_node);
            let shares = partitions_per_node * self.buffers * if writers_at_once > 1 { 2 } else { 1 };
            legion_bridge::streaming::last_level_cache_bytes() / shares.max(1)
        })
    }

    /// The batch interval of a partition whose data source runs on an IO processor (`on_io`) or
    /// on a CPU processor: as configured, else [`BATCH_INTERVAL_IO_US`] or
    /// [`BATCH_INTERVAL_CPU_US`]. A source gathering on a CPU processor holds it, and the workers
    /// and reducers waiting for it make the bins late; on an IO processor it holds nothing.
    pub fn batch_interval_for(&self, on_io: bool) -> u64 {
        self.batch_interval_us
            .unwrap_or(if on_io { BATCH_INTERVAL_IO_US } else { BATCH_INTERVAL_CPU_US })
    }

    /// The batch size of each round: tuned between an eighth of `batch_size` and
    /// `max_batch_size` when that is set, else always `batch_size`.
    pub fn batch_tuner(&self) -> BatchTuner {
        match self.max_batch_size {
            Some(max) => BatchTuner::new(self.batch_size, max),
            None => BatchTuner::fixed(self.batch_size),
        }
    }

    /// Most frames a round may carry: what each telemetry buffer holds.
    pub fn largest_batch(&self) -> usize {
        self.batch_tuner().largest()
    }

    /// Largest encoded frame: given, or asked of the source (exact for synthetic sources and
    /// recordings, the slot size for a shared-memory ring).
    pub fn max_frame_bytes(&self) -> Result<usize, PipelineError> {
        match self.max_frame_bytes {
            Some(bytes) => Ok(bytes),
            None => Ok(crate::source::max_frame_bytes(&self.source)? as usize),
        }
    }
}

/// Frames per batch of [`PipelineConfig::default`].
pub const DEFAULT_BATCH_FRAMES: usize = 256;

/// Most frames of an automatic batch ([`automatic_batch_size`]): the scalar benchmark's best
/// batch (10,000 against 1,000 and 50,000 in every session's sweep).
pub const MAX_AUTOMATIC_BATCH_FRAMES: usize = 10_000;

/// Bytes of frames an automatic batch holds at most ([`automatic_batch_size`]).
pub const AUTOMATIC_BATCH_BYTES: usize = 4 << 20;

/// The batch size for frames of up to `frame_bytes` when none is configured: as many frames as
/// hold about [`AUTOMATIC_BATCH_BYTES`] (rounded to the nearest frame), at least 1 and at most
/// [`MAX_AUTOMATIC_BATCH_FRAMES`]. An eighth of a server's last-level cache: a partition's
/// buffers in rotation (a batch being written, one being read) stay in the cache with room left
/// for other partitions and for a host's other tenants, and tiny frames still come in batches
/// large enough to make a round's fixed cost small. A constant, not this machine's cache: every
/// process of a cluster must size the same batches. Measured on 2 cores (`ami2 run --rate 0`,
/// alternated three times, session 11), against session 10's 16 MiB and 256 frames: the default
/// stream (128x128 images, 32 frames) 86,555-93,067 events/s against 54,326-78,104 (126 frames),
/// with 2 partitions 88,637-99,354 against 62,471-64,115; 512x512 images (2 frames) 8,116-8,548
/// frames/s against 3,892-7,090 (8); no images (1,990 frames) 498,518-502,859 against
/// 435,278-438,848 (256).
pub fn automatic_batch_size(frame_bytes: usize) -> usize {
    let frame_bytes = frame_bytes.max(1);
    ((AUTOMATIC_BATCH_BYTES + frame_bytes / 2) / frame_bytes).clamp(1, MAX_AUTOMATIC_BATCH_FRAMES)
}

/// How many times the automatic batch size the batch tuner may go up to when none is configured
/// ([`PipelineConfig::max_batch_size`]): about 64 MiB of frames per batch. The benchmark of
/// 512×512 frames (2 per automatic batch) did best at 32-64 frames in the minutes when the host
/// left little of its cache; each telemetry buffer then holds 32 frames.
pub const TUNED_BATCH_FACTOR: usize = 16;

/// What `ami2 run` uses without `--batch-size` for frames of up to `frame_bytes`: the automatic
/// batch to start from, and the tuner's ceiling above it.
pub fn automatic_tuned_batch(frame_bytes: usize) -> (usize, usize) {
    let start = automatic_batch_size(frame_bytes);
    (start, start * TUNED_BATCH_FACTOR)
}

/// Automatic batch interval (µs) of a data source on an IO processor. Measured (1 partition on 2
/// cores, `ami2 run --rate 20000`): 65% of a core against 89-98% with 1 ms (a fifth of the rounds,
/// fewer hand-offs between threads), and a bin published 0.41-0.43 ms after its end, as with 1 ms.
pub const BATCH_INTERVAL_IO_US: u64 = 5_000;

/// Automatic batch interval (µs) of a data source on a CPU processor, which it holds while it
/// gathers: 5 ms there made bins 10 ms late (2 partitions on 2 CPUs), 1 ms 2.6 ms.
pub const BATCH_INTERVAL_CPU_US: u64 = 1_000;

/// A data source this far behind its stream ([`SourceStats::behind_ms`]) is warned about: the
/// events come faster than the pipeline analyses them, and the results fall behind the beam.
pub const BEHIND_WARNING_MS: u64 = 2_000;

/// The partition whose data source is the most behind its stream, and by how much (ms), among
/// `sources` whose streams have a clock ([`SourceStats::behind_ms`]).
pub fn most_behind(sources: &BTreeMap<usize, (SourcePosition, SourceStats)>) -> Option<(usize, u64)> {
    sources
        .iter()
        .filter_map(|(&partition, (_, stats))| Some((partition, stats.behind_ms?)))
        .max_by_key(|&(_, ms)| ms)
}

/// Warns, at most once per 10 s, while a data source is [`BEHIND_WARNING_MS`] or more behind
/// its stream.
fn warn_if_behind(sources: &BTreeMap<usize, (SourcePosition, SourceStats)>, warnings: &RateLimitedCount) {
    let Some((partition, ms)) = most_behind(sources).filter(|&(_, ms)| ms >= BEHIND_WARNING_MS) else {
        return;
    };
    if warnings.note().is_some() {
        tracing::warn!(
            component = "driver",
            partition,
            behind_ms = ms,
            "the data source of partition {partition} is {:.1} s behind its stream: events come faster than the \
             pipeline analyses them (more partitions or cores, or a lighter graph, would help)",
            ms as f64 / 1e3
        );
    }
}

/// Warns, at most once per 10 s, while partials keep arriving for bins already published: their
/// events are in no result, which the counters alone (`late_partials`) do not make plain.
/// `warned_upto` is the late partials counted when it last warned.
fn warn_if_late(late_partials: u64, warned_upto: &mut u64, warnings: &RateLimitedCount) {
    if late_partials <= *warned_upto || warnings.note().is_none() {
        return;
    }
    tracing::warn!(
        component = "driver",
        late_partials,
        "{} partials of events came for time bins already published, and are in no result: a partition \
         lags its stream more than the other ones by more than the bin wait, or the stream's time stamps went \
         back (a producer restarted with an earlier clock, whose events count as late until its time stamps \
         pass the newest bin published)",
        late_partials - *warned_upto
    );
    *warned_upto = late_partials;
}

/// What the observer wants after a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Sees every global report (finished bins) as the run goes; may change the graph or stop.
pub trait Observer {
    fn on_report(&mut self, ctx: &TaskContext, stores: &Stores, report: &GlobalReport) -> Result<Flow, PipelineError>;

    /// Clients' graph requests, when this observer serves them: the driver hands them to the
    /// graph manager task after each report and answers through it (see [`crate::graph_manager`]).
    fn graph_requests(&mut self) -> Option<&mut dyn GraphRequests> {
        None
    }
}

/// An observer that lets the run go to the end of its sources.
pub struct RunToEnd;

impl Observer for RunToEnd {
    fn on_report(&mut self, _: &TaskContext, _: &Stores, _: &GlobalReport) -> Result<Flow, PipelineError> {
        Ok(Flow::Continue)
    }
}

/// Totals of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSummary {
    pub rounds: u64,
    pub events: u64,
    pub bins_emitted: u64,
    pub late_partials: u64,
    pub superseded_partials: u64,
    /// Bins dropped from Results early to make room (see the `results_full` incident).
    pub bins_dropped_early: u64,
    /// Graphs that failed at run time (the newest
    /// [`KEPT_INCIDENTS`](crate::incident_log::KEPT_INCIDENTS)).
    pub graph_failures: Vec<GraphFailure>,
    /// Incidents of this run (failed attempts, monitor restarts, a restart of the service): the
    /// newest [`KEPT_INCIDENTS`](crate::incident_log::KEPT_INCIDENTS).
    pub incidents: Vec<Incident>,
    /// All incidents of this run.
    pub incidents_total: u64,
    pub sources: BTreeMap<usize, (SourcePosition, SourceStats)>,
    pub graph_version: u64,
    /// The batch size in use at the end (the tuner's choice, when it tunes).
    pub batch_size: usize,
    /// How many rounds were launched at each batch size (the tuner's probes included): where the
    /// tuner spent the run.
    pub rounds_by_batch_size: BTreeMap<usize, u64>,
    /// Where the pipeline's tasks ran (task → address spaces), over the whole run.
    pub ran_on: RanOn,
    /// On which kinds of processor (task kind → processor kinds), over the whole run.
    pub processors: ProcessorsUsed,
    /// CPU time of the sources' and workers' own work over the run (the runtime's is not in it).
    pub task_cpu: TaskCpu,
    /// CPU time of the driver's whole process over the run, every thread: the tasks, the
    /// reducers, the driver and the runtime (of a run of several processes, the driver's only;
    /// 0 where the platform has no process clock). What exceeds `task_cpu` is the runtime's and
    /// the reducers' share.
    pub process_cpu_ns: u64,
}

impl RunSummary {
    /// Microseconds of CPU per event in the sources, the workers and the driver's whole process,
    /// in words (`ami2 run` prints it); `None` before any event.
    pub fn cpu_per_event_text(&self) -> Option<String> {
        let tasks = self.task_cpu.per_event_text(self.events)?;
        Some(match self.process_cpu_ns {
            0 => format!("{tasks} (their task bodies)"),
            all => format!(
                "{tasks} (their task bodies), {:.1} µs in all (the whole process: the reducers, the driver and the runtime too)",
                all as f64 / 1e3 / self.events as f64
            ),
        })
    }
}

/// Checks `spec` and installs it as the next graph version: its documents, then the current
/// version, written as the graph manager writes a version ([`write_version_with`]: a write that
/// fails leaves nothing of the version behind). Returns the new version.
pub fn install_graph(ctx: &TaskContext, stores: &Stores, spec: &GraphSpec) -> Result<u64, PipelineError> {
    install_graph_with(ctx, stores, spec, "the service at start (a graph it was given)", |_| Vec::new())
}

/// [`install_graph`], with the puts `marks(version)` in the batch that writes the version (put
/// back as they were should it fail).
fn install_graph_with(
    ctx: &TaskContext,
    stores: &Stores,
    spec: &GraphSpec,
    by: &str,
    marks: impl FnOnce(u64) -> Vec<Op>,
) -> Result<u64, PipelineError> {
    check_size(spec).map_err(|error| PipelineError::InvalidGraph(vec![error]))?;
    compile(spec).map_err(PipelineError::InvalidGraph)?;
    let current = current_graph_version(ctx, stores)?;
    let version = current + 1;
    let docs = vec![
        Op::put_json(graph_key(version), &serde_json::to_value(spec).expect("a graph serializes")),
        Op::put_json(made_graph_key(version), &made_graph_doc(by)),
    ];
    let marks = marks(version);
    let mut restore = Vec::new();
    for op in &marks {
        if let Op::Put { key, .. } = op {
            restore.push(match stores.control.get(ctx, key)? {
                Some(value) => Op::put_json(key.clone(), &value),
                None => Op::Delete { key: key.clone() },
            });
        }
    }
    write_version_with(|ops| stores.control.apply_all(ctx, ops), current, docs, marks, restore).map_err(PipelineError::GraphNotWritten)?;
    // The new version is durable: pushing the oldest out may fail without undoing it.
    let superseded = superseded_version_keys(version).into_iter().map(|key| Op::Delete { key }).collect();
    if let Err(err) = stores.control.apply_all(ctx, superseded) {
        tracing::error!(
            component = "driver",
            graph_version = version,
            "deleting the graph version no longer kept from Control: {err}"
        );
    }
    Ok(version)
}

/// The current graph version (0 when none is installed).
pub fn current_graph_version(ctx: &TaskContext, stores: &Stores) -> Result<u64, PipelineError> {
    Ok(stores.control.get(ctx, GRAPH_VERSION_KEY)?.and_then(|v| v.as_u64()).unwrap_or(0))
}

/// How long the built-in graph waits for a first frame to fit itself to (a shared-memory ring
/// whose producer has not written yet); then it assumes the synthetic source's default fields.
const SAMPLE_FRAME_WAIT: Duration = Duration::from_secs(1);

/// The built-in graph fitted to the fields and shapes of the source's frames
/// ([`default_graph_for`]): `ami2 run --image-size 512` gets a graph over 512x512 images, not one
/// that fails on the first frame. `Err(why)` when no frame can be seen or used.
fn fitted_builtin_graph(source: &SourceConfig) -> Result<GraphSpec, String> {
    match crate::source::sample_frame(source, SAMPLE_FRAME_WAIT) {
        Ok(Some(frame)) => default_graph_for(&frame)
            .filter(|spec| compile(spec).is_ok())
            .ok_or_else(|| "its first frame has no field it can use".to_string()),
        Ok(None) => Err(format!("no frame came within {SAMPLE_FRAME_WAIT:?}")),
        Err(e) => Err(format!("no frame could be read: {e}")),
    }
}

/// The graph to run at start: the one given (installed when it is not the current one already),
/// else the current one, else the built-in graph. A current graph that the service installed
/// itself is fitted again to the source's frames, which may have changed since (another image
/// size, a recording of other fields); a graph a client sent stays.
fn install_initial_graph(ctx: &TaskContext, stores: &Stores, config: &PipelineConfig) -> Result<u64, PipelineError> {
    let current = current_graph_version(ctx, stores)?;
    let current_doc = if current > 0 {
        stores.control.get(ctx, &graph_key(current))?
    } else {
        None
    };
    let is_current = |spec: &GraphSpec| current_doc.as_ref() == Some(&serde_json::to_value(spec).expect("a graph serializes"));
    let builtin_version = stores.control.get(ctx, BUILTIN_GRAPH_KEY)?.and_then(|v| v.as_u64());
    match &config.graph {
        Some(spec) if !is_current(spec) => install_graph(ctx, stores, spec),
        None if current == 0 || builtin_version == Some(current) => {
            let spec = match fitted_builtin_graph(&config.source) {
                Ok(spec) => spec,
                // A built-in graph fitted before stays: the frames may just be late (an idle
                // producer), not different.
                Err(why) if current > 0 => {
                    tracing::warn!(
                        component = "driver",
                        "the built-in graph is not fitted again ({why}): it stays as it was"
                    );
                    return Ok(current);
                }
                Err(why) => {
                    tracing::warn!(
                        component = "driver",
                        "the built-in graph is not fitted to this source ({why}): it assumes the synthetic source's default fields"
                    );
                    default_graph()
                }
            };
            if is_current(&spec) {
                return Ok(current);
            }
            let marked = |version| vec![Op::put_json(BUILTIN_GRAPH_KEY, &version)];
            install_graph_with(ctx, stores, &spec, "the service at start (the built-in graph)", marked)
        }
        _ => Ok(current),
    }
}

/// Marks the versions that failed at run time bad in Control (workers stop using them) and
/// returns the failures as incidents, to be recorded like any other.
fn mark_failed_graphs(ctx: &TaskContext, stores: &Stores, failures: &[GraphFailure]) -> Result<Vec<Incident>, PipelineError> {
    let mut docs = Vec::new();
    let mut incidents = Vec::new();
    for failure in failures {
        tracing::error!(
            component = "driver",
            graph_version = failure.version,
            partition = failure.partition,
            reverted_to = failure.reverted_to,
            "graph failed at run time: {}",
            failure.message
        );
        docs.push((
            bad_graph_key(failure.version),
            json!({
                "graph_version": failure.version,
                "partition": failure.partition,
                "message": failure.message,
                "reverted_to": failure.reverted_to,
            }),
        ));
        let outcome = match failure.reverted_to {
            Some(good) => format!("reverted to version {good}"),
            None => "no earlier graph works on these events, which are not analysed until one that does is \
                     installed (`ami2 graph submit FILE`, `ami2 graph revert N`)"
                .to_string(),
        };
        incidents.push(Incident::new(
            &format!("worker/{}", failure.partition),
            IncidentKind::GraphFailure,
            0,
            format!("graph version {} failed: {}; {outcome}", failure.version, failure.message),
        ));
    }
    let refs: Vec<(&str, &Value)> = docs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    stores.control.put_many(ctx, &refs)?;
    Ok(incidents)
}

/// When the current graph is the service's built-in one and it failed at run time — frames of
/// another shape: a detector reconfigured, a producer restarted with other images — fits it
/// again to the frames the source gives now and installs that as a new version, as a restart
/// would. Returns the incident that says so, or why not.
fn refit_failed_builtin_graph(
    ctx: &TaskContext,
    stores: &Stores,
    source: &SourceConfig,
    failed: &[GraphFailure],
) -> Result<Option<Incident>, PipelineError> {
    let current = current_graph_version(ctx, stores)?;
    let builtin = stores.control.get(ctx, BUILTIN_GRAPH_KEY)?.and_then(|v| v.as_u64());
    if builtin != Some(current) || !failed.iter().any(|f| f.version == current) {
        return Ok(None);
    }
    let message = match fitted_builtin_graph(source) {
        Ok(spec) if stores.control.get(ctx, &graph_key(current))? == Some(serde_json::to_value(&spec).expect("a graph serializes")) => {
            format!("the built-in graph (version {current}) failed; fitted again to the source's frames it is the same graph, so it stays failed")
        }
        Ok(spec) => {
            let by = format!("the service (the built-in graph, fitted again to the source's frames after version {current} failed)");
            let marked = |version| vec![Op::put_json(BUILTIN_GRAPH_KEY, &version)];
            let version = install_graph_with(ctx, stores, &spec, &by, marked)?;
            tracing::warn!(component = "driver", graph_version = version, "{by}");
            format!("the built-in graph (version {current}) failed; fitted again to the source's frames, it is version {version}")
        }
        Err(why) => format!("the built-in graph (version {current}) failed and cannot be fitted again to the source's frames: {why}"),
    };
    Ok(Some(Incident::new("driver", IncidentKind::GraphFailure, 0, message)))
}

/// A failing snapshot is reported at most this often (it is tried again at every interval).
const SNAPSHOT_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Snapshots that failed since the last one that worked, and those not said yet.
struct SnapshotFailures {
    in_a_row: u64,
    warnings: RateLimitedCount,
}

impl SnapshotFailures {
    fn new() -> Self {
        SnapshotFailures {
            in_a_row: 0,
            warnings: RateLimitedCount::new(SNAPSHOT_WARNING_EVERY),
        }
    }
}

/// Snapshots Control and Results in the data directory; Control's logs keep only what the
/// newest two snapshots lack. A snapshot that cannot be written (a full disk, a folder that
/// cannot be written) does not stop the analysis: Control's logs still hold every change, and
/// each store keeps its previous snapshot. It is a `store_warning` incident in the metrics, a
/// warning (at most every [`SNAPSHOT_WARNING_EVERY`], or at once when `last` is the last chance
/// to say it), and tried again at the next interval.
fn snapshot(ctx: &TaskContext, stores: &Stores, failures: &mut SnapshotFailures, last: bool) -> Result<(), PipelineError> {
    let started = std::time::Instant::now();
    let mut bytes = 0;
    let mut failed = Vec::new();
    for store in [&stores.control, &stores.results] {
        match store.snapshot(ctx) {
            Ok(stats) => bytes += stats.iter().map(|s| s.bytes).sum::<u64>(),
            Err(error @ kv_region::KvError::SnapshotFailed { .. }) => failed.push(error.to_string()),
            Err(other) => return Err(other.into()),
        }
    }
    if failed.is_empty() {
        if failures.in_a_row > 0 {
            tracing::info!(
                component = "stores",
                "stores snapshotted again, after {} failed snapshots",
                failures.in_a_row
            );
        }
        *failures = SnapshotFailures::new();
        tracing::debug!(
            component = "driver",
            bytes,
            millis = started.elapsed().as_millis() as u64,
            "stores snapshotted"
        );
        return Ok(());
    }
    crate::metrics::incident("store_warning");
    failures.in_a_row += 1;
    let unreported = if last {
        Some(failures.warnings.report_now())
    } else {
        failures.warnings.note()
    };
    if let Some(unreported) = unreported {
        let repeated = match unreported {
            1 => String::new(),
            n => format!(" ({n} failed snapshots since the last warning)"),
        };
        tracing::warn!(
            component = "stores",
            failed_in_a_row = failures.in_a_row,
            "{}{repeated}; the service goes on and tries again at the next interval (Control's logs hold every change; Results bins published since its last snapshot would be lost at a restart)",
            failed.join("; ")
        );
    }
    Ok(())
}

/// Incidents waiting from before this run: those a monitor wrote to the data directory's file as
/// it ended the previous process, and the restart itself. The file is removed once they are in
/// Control.
fn import_earlier_incidents(
    ctx: &TaskContext,
    stores: &Stores,
    config: &PipelineConfig,
    data_dir: Option<&Path>,
    summary: &mut RunSummary,
    incident_log: &mut IncidentLog,
) -> Result<(), PipelineError> {
    let file = data_dir.map(|dir| dir.join(INCIDENT_FILE));
    let mut incidents = match &file {
        Some(file) => read_incidents(file).map_err(|e| PipelineError::Config(format!("reading {}: {e}", file.display())))?,
        None => Vec::new(),
    };
    if let Some(reason) = &config.restarted_because {
        incidents.push(Incident::new("service", IncidentKind::Restart, 0, reason.clone()));
    }
    incident_log.record(ctx, stores, incidents, summary)?;
    if let Some(file) = file.filter(|f| f.exists()) {
        std::fs::remove_file(&file).map_err(|e| PipelineError::Config(format!("removing {}: {e}", file.display())))?;
    }
    Ok(())
}

/// How many rounds the next reduction covers. While the sources deliver full batches (they are
/// behind the data: throughput is what counts), as many as the round rate measured between
/// reports fits in the reduction interval, at least 1 and at most the configured maximum. While
/// they deliver partial batches (they keep up with a live stream: latency is what counts), 1.
struct ReductionPace {
    max: u64,
    interval_secs: f64,
    /// Frames each round launched and not yet reported delivers when every source fills its batch.
    full_rounds: VecDeque<(u64, u64)>,
    /// When the last report arrived, the last round it covered and the events merged so far.
    last: Option<(std::time::Instant, u64, u64)>,
    rounds: u64,
    /// Whether the sources were behind the data at the last report (filling their batches).
    behind: bool,
}

impl ReductionPace {
    fn new(config: &PipelineConfig) -> Self {
        Self {
            max: config.max_rounds_per_reduction as u64,
            interval_secs: config.reduction_interval_us as f64 * 1e-6,
            full_rounds: VecDeque::new(),
            last: None,
            rounds: 1,
            behind: true,
        }
    }

    /// Reductions the driver keeps in flight, of `configured` at most: all of them while the
    /// sources are behind the data (rounds queued ahead keep every processor busy), one once they
    /// have caught up. Rounds of a live stream mostly wait for their frames, and each one queued
    /// ahead is one more that a graph edit (a write to the Control segment their workers read)
    /// is ordered after.
    fn window(&self, configured: usize) -> usize {
        if self.behind {
            configured
        } else {
            configured.min(1)
        }
    }

    /// Round `round` was launched; it delivers `frames` when every source fills its batch.
    fn launched(&mut self, round: u64, frames: u64) {
        self.full_rounds.push_back((round, frames));
    }

    /// The report covering the rounds up to `round`, with `events` merged in all, arrived at `now`.
    fn reported(&mut self, round: u64, events: u64, now: std::time::Instant) {
        let mut full = 0;
        while let Some(&(launched, frames)) = self.full_rounds.front() {
            if launched > round {
                break;
            }
            full += frames;
            self.full_rounds.pop_front();
        }
        if let Some((then, before, events_before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if round > before && secs > 0.0 {
                let rounds = (round - before) as f64;
                // Sources that fill at least 90% of their batches are behind the data.
                let behind = events.saturating_sub(events_before) as f64 >= 0.9 * full as f64;
                self.behind = behind;
                self.rounds = if behind {
                    ((rounds / secs * self.interval_secs) as u64).clamp(1, self.max)
                } else {
                    1
                };
            }
        }
        self.last = Some((now, round, events));
    }
}

/// Runs the pipeline from the top-level (or another inner) task until its sources end or the
/// observer stops it. Control and Results persist in `data_dir` when given (snapshotted at the end).
pub fn run(
    ctx: &TaskContext,
    config: &PipelineConfig,
    data_dir: Option<&Path>,
    observer: &mut dyn Observer,
) -> Result<RunSummary, PipelineError> {
    config.validate()?;
    // Unregistered tasks fail the run before anything is made.
    let tasks = tasks()?;
    crate::tasks::reset_process_state();
    let sizes = StoreSizes {
        partitions: config.partitions,
        buffers: config.buffers,
        frames_per_buffer: config.largest_batch(),
        max_frame_bytes: config.max_frame_bytes()?,
        chunk_bytes: config.chunk_bytes,
        result_keys: config.retained_bins as usize * MAX_RESULTS,
    };
    let process_cpu = crate::task_cpu::ProcessCpuStopwatch::start();
    let (stores, loaded) = Stores::create(ctx, &sizes, data_dir)?;
    let result = run_on_stores(ctx, config, data_dir, observer, tasks, &stores, &loaded);
    // A run that failed part-way leaves rounds in flight, and they use this process's open
    // sources and graph cache: they finish before those are forgotten, or they would carry into
    // the next run of the process.
    if let Err(error) = ctx.wait_for_launched() {
        tracing::warn!(component = "driver", "waiting for the run's tasks: {error}");
    }
    // The stores are this run's: their memory goes back to Realm for the next run of the process,
    // whether the run ended well or not.
    stores.destroy(ctx);
    crate::tasks::reset_process_state();
    result.map(|summary| RunSummary {
        process_cpu_ns: process_cpu.elapsed_ns(),
        ..summary
    })
}

/// [`run`]'s body, on the stores it made (`loaded`: what they reloaded from `data_dir`).
fn run_on_stores(
    ctx: &TaskContext,
    config: &PipelineConfig,
    data_dir: Option<&Path>,
    observer: &mut dyn Observer,
    tasks: &PipelineTasks,
    stores: &Stores,
    loaded: &[kv_region::LoadStats],
) -> Result<RunSummary, PipelineError> {
    for stats in loaded {
        for warning in &stats.warnings {
            tracing::warn!(component = "stores", segment = %stats.prefix, "{warning}");
            crate::metrics::incident("store_warning");
        }
    }
    let mut summary = RunSummary {
        graph_version: install_initial_graph(ctx, stores, config)?,
        ..RunSummary::default()
    };
    let mut incident_log = IncidentLog::open(ctx, stores)?;
    import_earlier_incidents(ctx, stores, config, data_dir, &mut summary, &mut incident_log)?;
    // Before the first round: the sources open from the positions of this partition count.
    if data_dir.is_some() {
        let changed = crate::partition_change::convert_saved_positions(ctx, stores, config.partitions)?;
        incident_log.record(ctx, stores, changed.into_iter().collect(), &mut summary)?;
    }
    let run = health::reset();
    let mut monitors = Monitors::start(
        ctx,
        tasks.monitor,
        MonitorArgs {
            index: 0,
            run,
            interval_ms: config.monitor_interval_ms,
            limits: config.stall_limits.clone(),
            incident_file: data_dir.map(|dir| dir.join(INCIDENT_FILE)),
            exit_on_stall: config.exit_on_stall,
        },
    )?;
    let width = bin_width_ns(config.display_rate_hz);
    let telemetry_field = stores.telemetry.field();
    let control_field = stores.control.field();
    let mut previous: Option<Future<GlobalReport>> = None;
    let mut in_flight: VecDeque<(u64, Future<GlobalReport>)> = VecDeque::new();
    let mut stopping = false;
    // Bins a restarted service finds in Results: the first reducer counts them for retention.
    let written_before = WrittenBins::from_result_keys(stores.results.list(ctx, "/results/")?);
    let global_args = |has_previous: bool, flush| GlobalArgs {
        partitions: config.partitions,
        bin_width_ns: width,
        retained_bins: config.retained_bins,
        bin_wait_ns: config.bin_wait_ms * 1_000_000,
        results_field: stores.results.field(),
        has_previous,
        written_before: (!has_previous).then(|| written_before.clone()),
        flush,
        retry: config.retry.clone(),
    };
    let results_requirement = stores.results.requirement(ctx, "/results/", Privilege::ReadWrite)?;
    let mut metrics = ReportMetrics::start();
    tracing::info!(
        component = "driver",
        partitions = config.partitions,
        graph_version = summary.graph_version,
        "pipeline started"
    );
    let mut graph_manager = GraphManagerHook::default();
    // Tasks carry their kind in their mapping tag, for the placement policy (when installed).
    let groups = partition_groups(config.partitions);

    let mut last_snapshot = std::time::Instant::now();
    let mut snapshot_failures = SnapshotFailures::new();
    let mut marked_bad: HashSet<u64> = HashSet::new();
    let behind_warnings = RateLimitedCount::new(std::time::Duration::from_secs(10));
    let late_warnings = RateLimitedCount::new(std::time::Duration::from_secs(10));
    let mut late_warned_upto = 0;
    let mut handle = |report: GlobalReport, summary: &mut RunSummary| -> Result<bool, PipelineError> {
        incident_log.record(ctx, stores, report.incidents.clone(), summary)?;
        let monitor_incidents = monitors.poll(ctx)?;
        incident_log.record(ctx, stores, monitor_incidents, summary)?;
        metrics.record(&report);
        // A version is marked and reported once per run: the workers of the rounds in flight
        // may fail on it too.
        let failures: Vec<GraphFailure> = report.failures.iter().filter(|f| marked_bad.insert(f.version)).cloned().collect();
        if !failures.is_empty() {
            let mut incidents = mark_failed_graphs(ctx, stores, &failures)?;
            incidents.extend(refit_failed_builtin_graph(ctx, stores, &config.source, &failures)?);
            incident_log.record(ctx, stores, incidents, summary)?;
            crate::incident_log::keep_newest(&mut summary.graph_failures, failures);
        }
        summary.events = report.state.events;
        summary.bins_emitted = report.state.bins_emitted;
        summary.late_partials = report.state.late_partials;
        summary.superseded_partials = report.state.superseded_partials;
        summary.bins_dropped_early = report.state.bins_dropped_early;
        summary.sources.extend(report.sources.clone());
        warn_if_behind(&report.sources, &behind_warnings);
        warn_if_late(report.state.late_partials, &mut late_warned_upto, &late_warnings);
        merge_by_task(&mut summary.ran_on, report.ran_on.clone());
        merge_by_task(&mut summary.processors, report.processors.clone());
        summary.task_cpu.add(report.cpu);
        if data_dir.is_some()
            && config.snapshot_interval_ms > 0
            && last_snapshot.elapsed().as_millis() as u64 >= config.snapshot_interval_ms
        {
            snapshot(ctx, stores, &mut snapshot_failures, false)?;
            last_snapshot = std::time::Instant::now();
        }
        let flow = observer.on_report(ctx, stores, &report)?;
        if let Some(requests) = observer.graph_requests() {
            graph_manager.poll(ctx, stores, requests)?;
            let incidents = std::mem::take(&mut graph_manager.incidents);
            incident_log.record(ctx, stores, incidents, summary)?;
        }
        Ok(report.all_ended || flow == Flow::Stop)
    };

    // Workers launched since the last reduction, per partition (one per round each).
    let mut unreduced: Vec<Vec<Future<PartialReport>>> = vec![Vec::new(); config.partitions];
    let mut pace = ReductionPace::new(config);
    let mut tuner = config.batch_tuner();
    ReportMetrics::batch_size(tuner.size(), false);
    let busiest_node = groups
        .iter()
        .map(|(_, partitions)| partitions.len())
        .max()
        .unwrap_or(config.partitions);
    let cpus_per_node = ctx.machine().most_in_one_process(ProcessorKind::Cpu).max(1);
    let cached_batch_bytes = config.cached_batch_bytes(busiest_node, cpus_per_node);
    let batch_intervals: Vec<u64> = (0..config.partitions)
        .map(|p| config.batch_interval_for(source_on_io_processor(config.partitions, p)))
        .collect();
    for round in 0u64.. {
        if stopping {
            break;
        }
        let buffer = (round % config.buffers as u64) as usize;
        let batch_size = tuner.size();
        *summary.rounds_by_batch_size.entry(batch_size).or_default() += 1;
        tuner.launched(round);
        pace.launched(round, (config.partitions * batch_size) as u64);
        for (p, unreduced) in unreduced.iter_mut().enumerate() {
            let source_args = SourceArgs {
                partition: p,
                partitions: config.partitions,
                buffer,
                source: config.source.clone(),
                batch_size,
                chunk_bytes: config.chunk_bytes,
                timeout_ms: config.source_timeout_ms,
                batch_interval_us: batch_intervals[p],
                bin_width_ns: width,
                telemetry_field,
                control_field,
                state_log: stores.control.log_path(&source_prefix(p)),
                retry: config.retry.clone(),
                cached_batch_bytes,
            };
            let partition = p as u32;
            let source = ctx.execute(
                &TaskLauncher::new(tasks.source, &source_args)?
                    .tag(tag(TaskKind::DataSource { partition }))
                    .region(stores.telemetry.requirement(ctx, &buffer_prefix(p, buffer), Privilege::ReadWrite)?)
                    .region(stores.control.requirement(ctx, &source_prefix(p), Privilege::ReadWrite)?),
            )?;
            let worker_args = WorkerArgs {
                partition: p,
                buffer,
                bin_width_ns: width,
                telemetry_field,
                control_field,
                retry: config.retry.clone(),
            };
            unreduced.push(
                ctx.execute(
                    &TaskLauncher::new(tasks.worker, &worker_args)?
                        .tag(tag(TaskKind::Worker { partition }))
                        .future(&source)
                        .region(stores.telemetry.requirement(ctx, &buffer_prefix(p, buffer), Privilege::ReadOnly)?)
                        .region(stores.control.requirement(ctx, "/control/", Privilege::ReadOnly)?),
                )?,
            );
        }
        summary.rounds = round + 1;
        if (unreduced[0].len() as u64) < pace.rounds {
            continue;
        }
        // One local reducer per node, merging the workers of the partitions it owns.
        let mut locals = Vec::with_capacity(groups.len());
        for (node, partitions) in &groups {
            let mut local =
                TaskLauncher::new(tasks.local_reduce, &(*node, config.retry.clone()))?.tag(tag(TaskKind::LocalReducer { node: *node }));
            for worker in partitions.iter().flat_map(|&p| &unreduced[p]) {
                local = local.future(worker);
            }
            locals.push(ctx.execute(&local)?);
        }
        let mut global = TaskLauncher::new(tasks.global_reduce, &global_args(previous.is_some(), false))?
            .tag(tag(TaskKind::GlobalReducer))
            .region(results_requirement.clone());
        if let Some(previous) = &previous {
            global = global.future(previous);
        }
        for local in &locals {
            global = global.future(local);
        }
        let global = ctx.execute(&global)?;
        unreduced.iter_mut().for_each(Vec::clear);
        health::round_launched(round);
        in_flight.push_back((round, global.clone()));
        previous = Some(global);
        ReportMetrics::launched(in_flight.len());
        while in_flight.len() > pace.window(config.window) || (stopping && !in_flight.is_empty()) {
            let (done, future) = in_flight.pop_front().expect("non-empty");
            let report = future.get()?;
            health::round_reported(done);
            let now = std::time::Instant::now();
            pace.reported(done, report.state.events, now);
            let adopted = tuner.reported(done, report.state.events, now, pace.behind);
            if let Some(adopted) = &adopted {
                tracing::info!(
                    component = "driver",
                    from = adopted.from,
                    to = adopted.to,
                    "batch size {} -> {} frames: {:.0} -> {:.0} events/s while the sources are behind",
                    adopted.from,
                    adopted.to,
                    adopted.from_rate,
                    adopted.to_rate
                );
            }
            ReportMetrics::batch_size(tuner.size(), adopted.is_some());
            ReportMetrics::in_flight(in_flight.len());
            stopping |= handle(report, &mut summary)?;
        }
    }
    // `stopping` only changes right after a reduction, so no worker is left unreduced.
    debug_assert!(unreduced.iter().all(Vec::is_empty));
    while let Some((done, future)) = in_flight.pop_front() {
        let report = future.get()?;
        health::round_reported(done);
        ReportMetrics::in_flight(in_flight.len());
        handle(report, &mut summary)?;
    }
    // Publish what is still pending (a stop before the sources ended).
    let mut flush = TaskLauncher::new(tasks.global_reduce, &global_args(previous.is_some(), true))?
        .tag(tag(TaskKind::GlobalReducer))
        .region(results_requirement);
    if let Some(previous) = &previous {
        flush = flush.future(previous);
    }
    handle(ctx.execute(&flush)?.get()?, &mut summary)?;
    if let Some(requests) = observer.graph_requests() {
        graph_manager.finish(ctx, stores, requests)?;
        let incidents = std::mem::take(&mut graph_manager.incidents);
        incident_log.record(ctx, stores, incidents, &mut summary)?;
    }
    monitors.finish();
    summary.graph_version = current_graph_version(ctx, stores)?;
    summary.batch_size = tuner.current();
    if let Some(dir) = data_dir {
        // The last chance before the process ends: a failure is said, however recent the last.
        snapshot(ctx, stores, &mut snapshot_failures, true)?;
        // The positions were converted before the first round: the segments of partitions this
        // count does not have are empty now, and no snapshot comes after this one.
        crate::partition_change::remove_retired_source_files(ctx, stores, dir, config.partitions)?;
    }
    tracing::info!(
        component = "driver",
        rounds = summary.rounds,
        events = summary.events,
        bins = summary.bins_emitted,
        late_partials = summary.late_partials,
        "pipeline finished"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::source::SyntheticGenerator;

    #[test]
    fn an_automatic_batch_holds_about_4_mib_of_frames() {
        // The default stream's frames (128x128 image, 256-sample waveform, scalars).
        let frame = SyntheticGenerator::new(&SyntheticConfig::default()).unwrap().frame(0);
        let bytes = crate::frame_chunk::frame_bytes(&crate::frame_chunk::FieldSpec::list(&frame));
        assert_eq!(automatic_batch_size(bytes), 31);
        // 512x512 images: 2 MiB and a little more each.
        assert_eq!(automatic_batch_size((2 << 20) + 3000), 2);
        // Rounded to the nearest frame, at least 1, at most the most.
        assert_eq!(automatic_batch_size(3 << 20), 1);
        assert_eq!(automatic_batch_size(100 << 20), 1);
        assert_eq!(automatic_batch_size(2100), 1997);
        assert_eq!(automatic_batch_size(100), MAX_AUTOMATIC_BATCH_FRAMES);
        assert_eq!(automatic_batch_size(0), MAX_AUTOMATIC_BATCH_FRAMES);
    }

    /// A pace for 2 partitions with batches of 10 frames (a full round: 20 frames).
    fn pace(max: usize, interval_us: u64) -> ReductionPace {
        ReductionPace::new(&PipelineConfig {
            partitions: 2,
            batch_size: 10,
            max_rounds_per_reduction: max,
            reduction_interval_us: interval_us,
            ..PipelineConfig::default()
        })
    }

    /// Launches the rounds up to `round` not launched yet, each of 20 frames when full, then
    /// reports `round`.
    fn report(pace: &mut ReductionPace, round: u64, events: u64, now: Instant) {
        let launched = pace.full_rounds.back().map(|(r, _)| r + 1);
        let reported = pace.last.map(|(_, r, _)| r + 1);
        for r in launched.or(reported).unwrap_or(0)..=round {
            pace.launched(r, 20);
        }
        pace.reported(round, events, now);
    }

    #[test]
    fn behind_the_data_reductions_cover_what_the_round_rate_fits_in_the_interval() {
        let start = Instant::now();
        let mut pace = pace(8, 4_000);
        assert_eq!(pace.rounds, 1, "the first reductions follow every round");
        report(&mut pace, 0, 20, start);
        assert_eq!(pace.rounds, 1, "one report gives no rate yet");
        // Full rounds at 1,000 rounds/s: 4 rounds in 4 ms.
        report(&mut pace, 10, 220, start + Duration::from_millis(10));
        assert_eq!(pace.rounds, 4);
        // 100,000 rounds/s would fit 400: capped.
        report(&mut pace, 110, 2_220, start + Duration::from_millis(11));
        assert_eq!(pace.rounds, 8);
        // Slower rounds, still full: 100 rounds/s.
        report(&mut pace, 111, 2_240, start + Duration::from_millis(21));
        assert_eq!(pace.rounds, 1);
    }

    #[test]
    fn keeping_up_with_a_live_stream_reduces_after_every_round_with_one_reduction_in_flight() {
        let start = Instant::now();
        let mut pace = pace(8, 4_000);
        assert_eq!(pace.window(4), 4, "until the rate is known, the whole window");
        report(&mut pace, 0, 20, start);
        // 10,000 rounds/s, but of 1 frame each (batches far from full): latency first.
        report(&mut pace, 100, 120, start + Duration::from_millis(10));
        assert_eq!((pace.rounds, pace.window(4)), (1, 1));
        // The stream falls behind: full batches again, and rounds queued ahead.
        report(&mut pace, 200, 2_120, start + Duration::from_millis(20));
        assert_eq!((pace.rounds, pace.window(4)), (8, 4));
    }

    #[test]
    fn a_maximum_of_one_round_reduces_after_every_round() {
        let start = Instant::now();
        let mut pace = pace(1, 4_000);
        report(&mut pace, 0, 0, start);
        report(&mut pace, 1_000, 20_000, start + Duration::from_millis(1));
        assert_eq!(pace.rounds, 1);
    }

    #[test]
    fn rounds_of_several_batch_sizes_are_full_when_each_is() {
        let start = Instant::now();
        let mut pace = pace(8, 4_000);
        report(&mut pace, 0, 20, start);
        // Rounds 1-10 of 20 frames, 11-20 of 80 (a larger batch): 1,000 frames in all, full.
        (1..=10).for_each(|r| pace.launched(r, 20));
        (11..=20).for_each(|r| pace.launched(r, 80));
        pace.reported(20, 1_020, start + Duration::from_millis(10));
        assert!(pace.behind);
        // Rounds 21-30 of 80 with 200 frames in all: a stream the sources keep up with.
        (21..=30).for_each(|r| pace.launched(r, 80));
        pace.reported(30, 1_220, start + Duration::from_millis(20));
        assert!(!pace.behind);
        assert!(pace.full_rounds.is_empty());
    }

    #[test]
    fn a_source_gathers_longer_on_an_io_processor_unless_told() {
        let automatic = PipelineConfig::default();
        assert_eq!(automatic.batch_interval_for(true), BATCH_INTERVAL_IO_US);
        assert_eq!(automatic.batch_interval_for(false), BATCH_INTERVAL_CPU_US);
        let told = PipelineConfig {
            batch_interval_us: Some(0),
            ..PipelineConfig::default()
        };
        assert_eq!((told.batch_interval_for(true), told.batch_interval_for(false)), (0, 0));
    }

    #[test]
    fn each_batch_starts_in_the_cache_up_to_its_share_of_it() {
        let images = |cached_batch_bytes| PipelineConfig {
            source: SourceConfig::Synthetic(SyntheticConfig::images(512, 512)),
            buffers: 2,
            cached_batch_bytes,
            ..PipelineConfig::default()
        };
        let cache = legion_bridge::streaming::last_level_cache_bytes();
        // Automatic: the cache shared by the node's buffers in rotation, half of it when several
        // CPUs write at once.
        assert_eq!(images(None).cached_batch_bytes(1, 1), cache / 2);
        assert_eq!(images(None).cached_batch_bytes(1, 4), cache / 2);
        assert_eq!(images(None).cached_batch_bytes(2, 1), cache / 4);
        assert_eq!(images(None).cached_batch_bytes(2, 2), cache / 8);
        // Given: followed whatever the node holds.
        assert_eq!(images(Some(0)).cached_batch_bytes(1, 1), 0);
        assert_eq!(images(Some(5 << 20)).cached_batch_bytes(4, 4), 5 << 20);
    }

    #[test]
    fn retry_attempts_are_bounded() {
        for attempts in [0, MAX_ATTEMPTS + 1] {
            let config = PipelineConfig {
                retry: RetryPolicy {
                    attempts,
                    ..RetryPolicy::default()
                },
                ..PipelineConfig::default()
            };
            assert!(matches!(config.validate(), Err(PipelineError::Config(m)) if m.contains("retry attempts")));
        }
    }

    #[test]
    fn a_reduction_must_cover_a_round() {
        let config = PipelineConfig {
            max_rounds_per_reduction: 0,
            ..PipelineConfig::default()
        };
        assert!(matches!(config.validate(), Err(PipelineError::Config(m)) if m.contains("at least 1 round")));
    }

    #[test]
    fn the_cpu_per_event_names_the_task_bodies_and_the_whole_process() {
        let summary = RunSummary {
            events: 4,
            task_cpu: TaskCpu {
                source_ns: 4_000,
                worker_ns: 10_000,
            },
            process_cpu_ns: 30_000,
            ..RunSummary::default()
        };
        assert_eq!(
            summary.cpu_per_event_text().as_deref(),
            Some(
                "1.0 µs per event in the data sources, 2.5 µs in the workers (their task bodies), 7.5 µs in all \
                 (the whole process: the reducers, the driver and the runtime too)"
            )
        );
        // Without a process clock, the bodies alone; before any event, nothing.
        let no_clock = RunSummary {
            process_cpu_ns: 0,
            ..summary.clone()
        };
        assert!(no_clock.cpu_per_event_text().is_some_and(|t| t.ends_with("(their task bodies)")));
        assert_eq!(RunSummary { events: 0, ..summary }.cpu_per_event_text(), None);
    }
}
