//! The pipeline's Legion tasks: data source, worker, local reducer, global reducer.
//!
//! ```text
//! source(p, round) ──future──▶ worker(p, round) ──┐
//!        writes telemetry buffer round % K of p    ├─▶ local reducer(round) ──▶ global reducer(round)
//!        saves its position in Control             │    merges partials       merges, emits complete
//! source(q, round) ──future──▶ worker(q, round) ──┘    per bin                bins to Results
//!                                                        previous global reducer's state ──┘ (future)
//! ```
//! Every arrow is a Legion dependency (a future attached to the launch, or a region one task writes
//! and the next reads); no task waits for another inside Rust.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kv_region::view::{apply_ops, with_reader, with_writer, ValueLocation, View};
use kv_region::{Codec, Op, Slot};
use legion_bridge::{register_task, Field, ProcessorKind, TaskContext, TaskError, TaskId, VariantOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::event::{bin_of, Event};
use crate::frame_chunk::{self, ChunkReader, ChunkWriter, FieldSpec, FrameMut, FrameRef};
use crate::graph::{compile, CompiledGraph, GraphSpec, Partials};
use crate::monitor::{monitor_task, MonitorArgs, MonitorReport};
use crate::partition_change::source_state_doc;
use crate::rate_limited::RateLimitedCount;
use crate::retention::WrittenBins;
use crate::robust::{self, robustly, Incident, RetryPolicy};
use crate::source::{self, DataSource, FrameSink, PacingClock, SourceConfig, SourceError, SourcePosition, SourceStats, Written};
use crate::stores::{bad_graph_key, chunk_key, graph_key, result_key, source_state_key, GRAPH_VERSION_KEY};
use crate::task_cpu::{CpuStopwatch, TaskCpu};
use crate::PipelineError;

/// First task id of the pipeline (ids `PIPELINE_TASK_BASE..PIPELINE_TASK_BASE + 6`: data source,
/// worker, local and global reducer, graph manager, robustness monitor).
pub const PIPELINE_TASK_BASE: u32 = 500;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceArgs {
    pub partition: usize,
    pub partitions: usize,
    pub buffer: usize,
    pub source: SourceConfig,
    pub batch_size: usize,
    pub chunk_bytes: usize,
    pub timeout_ms: u64,
    /// Shortest time between two batches that are not full (see [`crate::PipelineConfig::batch_interval_us`]).
    pub batch_interval_us: u64,
    /// Width of the time bins: a batch that reaches a new bin goes out at once.
    pub bin_width_ns: u64,
    pub telemetry_field: Field<Slot>,
    pub control_field: Field<Slot>,
    /// The control log of this source's segment (durable position), when Control is persistent.
    pub state_log: Option<PathBuf>,
    pub retry: RetryPolicy,
    /// Bytes at the start of the batch written with ordinary stores; large arrays after them with
    /// streaming stores (see [`crate::source::FrameSink::streaming`]).
    pub cached_batch_bytes: usize,
}

/// What a data source task did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceReport {
    pub partition: usize,
    pub frames: usize,
    /// Largest time stamp in the batch.
    pub max_timestamp_ns: Option<u64>,
    pub ended: bool,
    pub position: SourcePosition,
    pub stats: SourceStats,
    pub incidents: Vec<Incident>,
    /// The process (Legion address space) the task ran in.
    pub address_space: u32,
    /// The kind of processor it ran on.
    pub processor: ProcessorKind,
    /// CPU time of the task's body (this attempt's).
    pub cpu_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerArgs {
    pub partition: usize,
    pub buffer: usize,
    pub bin_width_ns: u64,
    pub telemetry_field: Field<Slot>,
    pub control_field: Field<Slot>,
    pub retry: RetryPolicy,
}

/// A graph that failed on an event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphFailure {
    pub version: u64,
    pub partition: usize,
    pub message: String,
    /// The version the worker ran instead; `None` when no graph it had run worked on the batch.
    pub reverted_to: Option<u64>,
}

/// Partial results of a worker (or a merge of several).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PartialReport {
    /// (bin, graph version) → partials.
    pub bins: BTreeMap<(u64, u64), Partials>,
    /// Per partition: largest time stamp processed so far in this report, and whether it ended.
    pub progress: BTreeMap<usize, (Option<u64>, bool)>,
    pub events: u64,
    pub failures: Vec<GraphFailure>,
    pub sources: BTreeMap<usize, (SourcePosition, SourceStats)>,
    pub incidents: Vec<Incident>,
    /// Where the tasks behind this report ran: task (`source/<p>`, `worker/<p>`,
    /// `local_reducer/<node>`, `global_reducer`) → address spaces.
    pub ran_on: RanOn,
    /// And on which kinds of processor: task kind (`source`, `worker`, `local_reducer`,
    /// `global_reducer`) → processor kinds.
    pub processors: ProcessorsUsed,
    /// CPU time of the sources' and workers' bodies behind this report.
    pub cpu: TaskCpu,
}

/// Task label → the address spaces it ran in (one, when placement holds).
pub type RanOn = BTreeMap<String, BTreeSet<u32>>;

/// Task kind → the kinds of processor it ran on.
pub type ProcessorsUsed = BTreeMap<String, BTreeSet<ProcessorKind>>;

/// Adds the sets of `other` to those of `into`, task by task ([`RanOn`], [`ProcessorsUsed`]).
pub fn merge_by_task<T: Ord>(into: &mut BTreeMap<String, BTreeSet<T>>, other: BTreeMap<String, BTreeSet<T>>) {
    for (task, places) in other {
        into.entry(task).or_default().extend(places);
    }
}

/// Records that task kind `task` ran on a processor of kind `kind`.
fn note_processor(processors: &mut ProcessorsUsed, task: &str, kind: ProcessorKind) {
    processors.entry(task.to_string()).or_default().insert(kind);
}

impl PartialReport {
    fn merge(&mut self, other: PartialReport) -> Result<(), TaskError> {
        for (key, partials) in other.bins {
            match self.bins.get_mut(&key) {
                Some(mine) => mine.merge(&partials)?,
                None => {
                    self.bins.insert(key, partials);
                }
            }
        }
        for (p, (ts, ended)) in other.progress {
            let entry = self.progress.entry(p).or_insert((None, false));
            entry.0 = entry.0.max(ts);
            entry.1 |= ended;
        }
        self.events += other.events;
        self.failures.extend(other.failures);
        self.sources.extend(other.sources);
        self.incidents.extend(other.incidents);
        merge_by_task(&mut self.ran_on, other.ran_on);
        merge_by_task(&mut self.processors, other.processors);
        self.cpu.add(other.cpu);
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GlobalArgs {
    pub partitions: usize,
    pub bin_width_ns: u64,
    pub retained_bins: u64,
    /// Emit a bin this long (in stream time) after newer data arrived, even if a partition lags.
    pub bin_wait_ns: u64,
    pub results_field: Field<Slot>,
    pub has_previous: bool,
    /// For the first reducer of a run (`has_previous` false): the bins Results already held,
    /// found on disk by a restarted service, so that retention counts them too.
    pub written_before: Option<WrittenBins>,
    /// Emit everything pending (end of run).
    pub flush: bool,
    pub retry: RetryPolicy,
}

/// One finished time bin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EmittedBin {
    pub bin: u64,
    pub graph_version: u64,
    pub events: u64,
    #[serde(with = "crate::json_values")]
    pub values: BTreeMap<String, Value>,
}

/// The global reducer's state, carried from one invocation to the next through its future.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GlobalState {
    pending: BTreeMap<u64, BTreeMap<u64, Partials>>,
    watermarks: BTreeMap<usize, (Option<u64>, bool)>,
    /// Highest bin emitted.
    emitted_upto: Option<u64>,
    /// Bins written to Results, for retention.
    written: WrittenBins,
    pub events: u64,
    pub late_partials: u64,
    pub superseded_partials: u64,
    pub bins_emitted: u64,
    /// Bins deleted from Results before `retained_bins` newer ones, to make room (values larger
    /// than the store was sized for).
    pub bins_dropped_early: u64,
}

impl GlobalState {
    /// Bins held back, waiting for partitions to go past them.
    pub fn pending_bins(&self) -> usize {
        self.pending.len()
    }
}

/// What one global reducer invocation produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GlobalReport {
    pub state: GlobalState,
    pub emitted: Vec<EmittedBin>,
    pub failures: Vec<GraphFailure>,
    pub sources: BTreeMap<usize, (SourcePosition, SourceStats)>,
    /// True once every partition's source has ended.
    pub all_ended: bool,
    /// Failed attempts of this round's tasks (each recovered by a later attempt).
    pub incidents: Vec<Incident>,
    /// Where this round's tasks ran.
    pub ran_on: RanOn,
    /// On which kinds of processor.
    pub processors: ProcessorsUsed,
    /// CPU time of the sources' and workers' bodies of the rounds this reduction merged.
    pub cpu: TaskCpu,
}

pub struct PipelineTasks {
    pub source: TaskId<SourceArgs, SourceReport>,
    pub worker: TaskId<WorkerArgs, PartialReport>,
    /// Argument: the node whose workers it merges, and the retry policy.
    pub local_reduce: TaskId<(u32, RetryPolicy), PartialReport>,
    pub global_reduce: TaskId<GlobalArgs, GlobalReport>,
    pub monitor: TaskId<MonitorArgs, MonitorReport>,
    pub graph_manager: TaskId<crate::graph_manager::GraphManagerArgs, crate::graph_manager::Json<crate::graph_manager::GraphManagerReport>>,
}

static TASKS: OnceLock<PipelineTasks> = OnceLock::new();

/// Largest encoded [`SourceReport`]: Legion's inline future size. When a worker that takes the
/// source's future is mapped, a future this small gets a plain buffer; a larger bound made
/// Legion create a Realm instance for it in every round (`create_future_instance`), which cost
/// 15-35% of frames/s at image batches of 1-3. Reports are shrunk to fit
/// (`robust::fit_incidents`: a report is counters, a position, and incidents only when
/// attempts failed).
pub const SOURCE_REPORT_MAX_BYTES: usize = legion_bridge::task::MAX_LEAF_RESULT_BYTES;

/// Registers the pipeline's tasks (and the stores'); call once before the runtime starts.
pub fn register_tasks() -> Result<(), PipelineError> {
    kv_region::register_tasks()?;
    if TASKS.get().is_some() {
        return Ok(());
    }
    // The data source is a leaf with a bounded report: Legion then skips an inner context per
    // source and knows the size of its future when it maps it, so the worker that waits for it
    // is mapped while the source still runs. The other tasks' results (partials, reports) have
    // no useful bound: they are non-leaf variants with unbounded futures.
    let tasks = PipelineTasks {
        source: register_task(
            PIPELINE_TASK_BASE,
            "data_source",
            // A source waits for its stream: on an IO processor (when the placement puts it on
            // one), its waits hold no CPU processor the workers and reducers need.
            VariantOptions::leaf()
                .max_result_bytes(SOURCE_REPORT_MAX_BYTES)
                .also_on_io_processors(),
            source_task,
        )?,
        worker: register_task(PIPELINE_TASK_BASE + 1, "worker", VariantOptions::default(), worker_task)?,
        local_reduce: register_task(
            PIPELINE_TASK_BASE + 2,
            "local_reducer",
            VariantOptions::default(),
            local_reduce_task,
        )?,
        global_reduce: register_task(
            PIPELINE_TASK_BASE + 3,
            "global_reducer",
            VariantOptions::default(),
            global_reduce_task,
        )?,
        monitor: register_task(
            PIPELINE_TASK_BASE + 5,
            "robustness_monitor",
            VariantOptions::default(),
            monitor_task,
        )?,
        graph_manager: register_task(
            PIPELINE_TASK_BASE + 4,
            "graph_manager",
            VariantOptions::default(),
            crate::graph_manager::graph_manager_task,
        )?,
    };
    let _ = TASKS.set(tasks);
    Ok(())
}

pub(crate) fn tasks() -> Result<&'static PipelineTasks, PipelineError> {
    TASKS.get().ok_or(PipelineError::NotRegistered)
}

/// A data source this process has open, and when it last handed over a batch, up to which bin.
struct OpenSource {
    source: Box<dyn DataSource>,
    last_handover: Option<Instant>,
    last_bin: Option<u64>,
}

/// Open data sources of this process, one per partition, kept between source task runs.
type SharedSource = Arc<Mutex<OpenSource>>;
static SOURCES: OnceLock<Mutex<HashMap<usize, SharedSource>>> = OnceLock::new();

/// Forgets this process's open data sources and compiled graphs: a new run opens the sources
/// again from their saved positions and compiles the graphs of its own Control store (versions
/// are numbers per store, so a cache must not outlive its run).
pub fn reset_process_state() {
    if let Some(sources) = SOURCES.get() {
        sources.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    *pacing_clock() = None;
    let mut cache = graph_cache();
    cache.compiled.clear();
    cache.failed.clear();
    cache.last_good = None;
}

/// The pacing clock this process's partitions share (a new one for each run).
static PACING: Mutex<Option<PacingClock>> = Mutex::new(None);

fn pacing_clock() -> std::sync::MutexGuard<'static, Option<PacingClock>> {
    PACING.lock().unwrap_or_else(|e| e.into_inner())
}

fn source_for(args: &SourceArgs, saved: Option<SourcePosition>) -> Result<SharedSource, TaskError> {
    let sources = SOURCES.get_or_init(Default::default);
    let mut sources = sources.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(source) = sources.get(&args.partition) {
        return Ok(source.clone());
    }
    let mut opened = source::open(&args.source, args.partition, args.partitions, saved.as_ref())?;
    // A source reopened after a failed attempt keeps the run's pace too.
    opened.share_pacing(pacing_clock().get_or_insert_with(PacingClock::default).clone());
    let shared = Arc::new(Mutex::new(OpenSource {
        source: opened,
        last_handover: None,
        last_bin: None,
    }));
    sources.insert(args.partition, shared.clone());
    Ok(shared)
}

/// Forgets partition `partition`'s open source: the next attempt opens it again from the position
/// saved in Control (a failed attempt may have left it half-way through a batch).
fn forget_source(partition: usize) {
    if let Some(sources) = SOURCES.get() {
        sources.lock().unwrap_or_else(|e| e.into_inner()).remove(&partition);
    }
}

/// Regions: 0 = this round's telemetry buffer of the partition (read-write), 1 = the partition's
/// source segment of Control (read-write).
fn source_task(ctx: &TaskContext, args: SourceArgs) -> Result<SourceReport, TaskError> {
    let mut report = robustly(
        &format!("source/{}", args.partition),
        &args.retry,
        |attempt| {
            if attempt > 0 {
                forget_source(args.partition);
            }
            source_attempt(ctx, &args)
        },
        |report| &mut report.incidents,
    )?;
    // A report over the bound (long note, many incidents) shrinks; one that fits is kept whole.
    let fits = |r: &SourceReport| legion_bridge::task::result_bytes(r).is_ok_and(|n| n <= SOURCE_REPORT_MAX_BYTES);
    if !fits(&report) {
        if let Some(note) = &mut report.stats.note {
            robust::cut(note, robust::SHORT_INCIDENT_MESSAGE);
        }
        robust::fit_incidents(&mut report, |r| &mut r.incidents, fits);
    }
    Ok(report)
}

fn source_attempt(ctx: &TaskContext, args: &SourceArgs) -> Result<SourceReport, TaskError> {
    let cpu = CpuStopwatch::start();
    let buffer = ctx.region(0)?;
    let state = ctx.region(1)?;
    let saved: Option<SourcePosition> = with_reader(&state, args.control_field, |view| {
        Ok(match view.get(&source_state_key(args.partition))? {
            Some((Codec::Json, bytes)) => serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|v| serde_json::from_value(v["position"].clone()).ok()),
            _ => None,
        })
    })?;
    let open = source_for(args, saved)?;
    let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
    // The buffer is reused round after round: empty it, then let the source write the batch
    // into it, in place.
    let batch = with_writer(&buffer, args.telemetry_field, |view| {
        view.clear();
        let mut sink = ChunkSink {
            view,
            partition: args.partition,
            buffer: args.buffer,
            chunk_bytes: args.chunk_bytes,
            open: None,
            written: 0,
            cached_bytes: args.cached_batch_bytes,
        };
        let written = fill_batch(
            &mut open,
            args.batch_size,
            Duration::from_millis(args.timeout_ms),
            Duration::from_micros(args.batch_interval_us),
            args.bin_width_ns,
            &mut sink,
        );
        // Close the last chunk even after an error: what is stored stays readable.
        sink.close()?;
        Ok(written)
    })??;
    let (frames, max_timestamp_ns) = (batch.frames, batch.max_timestamp_ns);

    let position = open.source.position();
    let stats = open.source.stats();
    tracing::debug!(
        component = "data_source",
        partition = args.partition,
        buffer = args.buffer,
        frames,
        ended = batch.ended,
        next_seq = position.next_seq,
        "batch stored"
    );
    let saved_state = source_state_doc(&position, &stats, batch.ended, args.partitions);
    with_writer(&state, args.control_field, |view| {
        let op = Op::put_json(source_state_key(args.partition), &saved_state);
        apply_ops(view, vec![op], args.state_log.as_deref())?.pop().expect("one result")?;
        Ok(())
    })?;
    Ok(SourceReport {
        partition: args.partition,
        frames,
        max_timestamp_ns,
        ended: batch.ended,
        position,
        stats,
        incidents: Vec::new(),
        address_space: ctx.address_space(),
        processor: ctx.executing_processor().kind,
        cpu_ns: cpu.elapsed_ns(),
    })
}

/// Asks `open`'s source for up to `max` frames, waiting up to `timeout` for the first ones. A
/// batch that is not full is handed over no sooner than `interval` after the partition's previous
/// one: until then the source is asked for more, so that a stream slower than the pipeline comes
/// in fewer, fuller rounds. Except that a batch reaching a time bin (of `bin_width_ns`) past the
/// previous hand-over's goes out at once: the bins before it may then be complete, and waiting
/// would only delay their publication. A call that brings nothing (or the source's end) ends the
/// batch: the end is reported by the next round's call, with no frames, as sources report it.
fn fill_batch(
    open: &mut OpenSource,
    max: usize,
    timeout: Duration,
    interval: Duration,
    bin_width_ns: u64,
    sink: &mut dyn FrameSink,
) -> Result<Written, SourceError> {
    let newest_bin = |batch: &Written| batch.max_timestamp_ns.map(|ts| bin_of(ts, bin_width_ns));
    let mut batch = open.source.write_batch(max, timeout, sink)?;
    if let Some(until) = open.last_handover.map(|at| at + interval) {
        while batch.frames > 0 && batch.frames < max && newest_bin(&batch) <= open.last_bin {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = open.source.write_batch(max - batch.frames, left, sink)?;
            if more.frames == 0 {
                break;
            }
            batch.frames += more.frames;
            batch.max_timestamp_ns = batch.max_timestamp_ns.max(more.max_timestamp_ns);
        }
    }
    // After a pause in the stream, its first frames go out at once.
    if batch.frames > 0 {
        open.last_handover = Some(Instant::now());
        open.last_bin = open.last_bin.max(newest_bin(&batch));
    }
    Ok(batch)
}

/// Writes a source's frames into chunks of its telemetry buffer (layout: [`frame_chunk`]), in
/// place: a chunk is reserved at `chunk_bytes` (or one frame, if larger), filled, and truncated
/// to what it holds when the next frame does not fit or the batch ends.
struct ChunkSink<'v, 'a> {
    view: &'v mut View<&'a mut [u8]>,
    partition: usize,
    buffer: usize,
    chunk_bytes: usize,
    /// The chunk being filled: its key and where its value lies.
    open: Option<(String, ValueLocation)>,
    /// Bytes of frames written so far in this batch.
    written: usize,
    /// Frames that start within this many bytes of the batch are written to stay in the cache.
    cached_bytes: usize,
}

impl ChunkSink<'_, '_> {
    /// The open chunk, to continue it.
    fn writer(&mut self) -> kv_region::KvResult<Option<ChunkWriter<'_>>> {
        let Some((_, location)) = &self.open else { return Ok(None) };
        // Located once per chunk: no key lookup per frame.
        ChunkWriter::resume(self.view.value_at(location)?)
            .map(Some)
            .map_err(|e| kv_region::KvError::Layout(e.to_string()))
    }

    /// Truncates the open chunk to the frames it holds.
    fn close(&mut self) -> kv_region::KvResult<()> {
        let Some(used) = self.writer()?.map(|w| w.len()) else {
            return Ok(());
        };
        if let Some((key, _)) = self.open.take() {
            self.view.truncate(&key, used)?;
        }
        Ok(())
    }

    fn open_chunk(&mut self, seq: u64, frame_bytes: usize) -> kv_region::KvResult<()> {
        self.close()?;
        let key = chunk_key(self.partition, self.buffer, seq);
        let least = frame_bytes + frame_chunk::CHUNK_OVERHEAD;
        // A chunk as large as a frame when the buffer has no room left for a full one.
        if self.view.reserve(&key, Codec::Raw, self.chunk_bytes.max(least)).is_err() {
            self.view.reserve(&key, Codec::Raw, least)?;
        }
        let location = self
            .view
            .locate(&key)?
            .ok_or_else(|| kv_region::KvError::Layout(format!("chunk {key} vanished after it was reserved")))?;
        ChunkWriter::new(self.view.value_at(&location)?).map_err(|e| kv_region::KvError::Layout(e.to_string()))?;
        self.open = Some((key, location));
        Ok(())
    }
}

impl FrameSink for ChunkSink<'_, '_> {
    fn streaming(&self) -> bool {
        self.written >= self.cached_bytes
    }

    fn frame(&mut self, seq: u64, timestamp_ns: u64, fields: &[FieldSpec<'_>]) -> Result<FrameMut<'_>, SourceError> {
        let sink_error = |reason: String| SourceError::Sink { seq, reason };
        let need = frame_chunk::frame_bytes(fields);
        let fits = self
            .writer()
            .map_err(|e| sink_error(e.to_string()))?
            .is_some_and(|w| w.remaining() >= need);
        if !fits {
            let first = self.written == 0;
            self.open_chunk(seq, need).map_err(|e| match e {
                // The buffer is empty, and still too small: no retry can store this frame.
                kv_region::KvError::StoreFull { .. } | kv_region::KvError::ValueTooLarge { .. } if first => sink_error(format!(
                    "it takes {need} bytes, more than an empty telemetry buffer holds. The buffers were sized when \
                     the service started, for the source's frames then: its frames have grown since (a producer \
                     restarted with larger frames?), and the service must start again to size them anew \
                     (`ami2 run --supervise` does)"
                )),
                e => sink_error(e.to_string()),
            })?;
        }
        self.written += need;
        self.writer()
            .map_err(|e| sink_error(e.to_string()))?
            .and_then(|w| w.into_push(seq, timestamp_ns, fields))
            .ok_or_else(|| sink_error(format!("a frame of {need} bytes does not fit its chunk")))
    }
}

/// Compiled graphs of this process, per version; and the versions that failed at run time.
struct GraphCache {
    compiled: HashMap<u64, Arc<CompiledGraph>>,
    failed: std::collections::HashSet<u64>,
    last_good: Option<(u64, Arc<CompiledGraph>)>,
}

impl GraphCache {
    /// The last graph that worked, unless it failed since (frames of another shape can make any
    /// graph fail: then none is left, rather than the failed one run again on every batch).
    fn last_good(&self) -> Option<(u64, Arc<CompiledGraph>)> {
        self.last_good.clone().filter(|(v, _)| !self.failed.contains(v))
    }

    /// Remembers that `version` failed at run time; returns the graph to run instead, if any.
    fn fail(&mut self, version: u64) -> Option<(u64, Arc<CompiledGraph>)> {
        self.failed.insert(version);
        self.last_good()
    }
}

static GRAPHS: OnceLock<Mutex<GraphCache>> = OnceLock::new();

fn graph_cache() -> std::sync::MutexGuard<'static, GraphCache> {
    GRAPHS
        .get_or_init(|| {
            Mutex::new(GraphCache {
                compiled: HashMap::new(),
                failed: Default::default(),
                last_good: None,
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The graph to run: the current version unless it failed, then the last good one. A process
/// that has run none yet (a restarted service) takes the version the failure's mark in Control
/// says the workers reverted to (`reverted_to`), and that one's own mark if it failed too.
fn current_graph<B: AsRef<[u8]>>(view: &kv_region::view::View<B>) -> Result<Option<(u64, Arc<CompiledGraph>)>, TaskError> {
    let version = match view.get(GRAPH_VERSION_KEY)? {
        Some((Codec::Json, bytes)) => serde_json::from_slice::<Value>(bytes).ok().and_then(|v| v.as_u64()).unwrap_or(0),
        _ => 0,
    };
    let mut cache = graph_cache();
    if version == 0 {
        return Ok(cache.last_good());
    }
    let mut candidate = version;
    // The chain of marks is short; its bound only guards against a loop in damaged marks.
    for _ in 0..crate::graph_manager::RETAINED_GRAPH_VERSIONS {
        // Only the candidate's mark is looked up: one lookup per round for the current
        // version, not a listing of Control's directory, which every worker would scan.
        let mark = match view.get(&bad_graph_key(candidate))? {
            Some((Codec::Json, bytes)) => Some(serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null)),
            Some(_) => Some(Value::Null),
            None => None,
        };
        if mark.is_some() {
            cache.failed.insert(candidate);
        }
        if !cache.failed.contains(&candidate) {
            match compiled(view, candidate, &mut cache) {
                Ok(Some(graph)) => return Ok(Some((candidate, graph))),
                Ok(None) => {}
                Err(why) if candidate == version => return Err(TaskError::msg(why)),
                Err(why) => {
                    tracing::warn!(
                        component = "worker",
                        graph_version = candidate,
                        "cannot revert to this graph: {why}"
                    );
                    return Ok(None);
                }
            }
        }
        if let Some(good) = cache.last_good() {
            return Ok(Some(good));
        }
        match mark.and_then(|m| m["reverted_to"].as_u64()) {
            Some(earlier) => candidate = earlier,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Graph `version` compiled (once per process); `Ok(None)` when it does not compile (it is then
/// remembered as failed), `Err` when Control has no graph document for it.
fn compiled<B: AsRef<[u8]>>(
    view: &kv_region::view::View<B>,
    version: u64,
    cache: &mut GraphCache,
) -> Result<Option<Arc<CompiledGraph>>, String> {
    if let Some(graph) = cache.compiled.get(&version) {
        return Ok(Some(graph.clone()));
    }
    let spec: GraphSpec = match view.get(&graph_key(version)).map_err(|e| e.to_string())? {
        Some((Codec::Json, bytes)) => serde_json::from_slice(bytes).map_err(|e| format!("graph {version} is not a graph: {e}"))?,
        _ => return Err(format!("the document of graph version {version} is missing")),
    };
    match compile(&spec) {
        Ok(graph) => {
            let graph = Arc::new(graph);
            cache.compiled.insert(version, graph.clone());
            Ok(Some(graph))
        }
        Err(errors) => {
            tracing::error!(
                component = "worker",
                graph_version = version,
                "graph does not compile: {}",
                errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
            );
            cache.failed.insert(version);
            Ok(None)
        }
    }
}

/// Runs `graph` over `frames`, per time bin.
fn run_graph<E: Event>(
    graph: &CompiledGraph,
    version: u64,
    frames: &[E],
    bin_width_ns: u64,
) -> Result<BTreeMap<(u64, u64), Partials>, crate::graph::EvalError> {
    let mut bins: BTreeMap<(u64, u64), Partials> = BTreeMap::new();
    for frame in frames {
        let partials = bins
            .entry((bin_of(frame.timestamp_ns(), bin_width_ns), version))
            .or_insert_with(|| graph.empty_partials());
        graph.process(frame, partials)?;
    }
    Ok(bins)
}

/// Regions: 0 = the telemetry buffer its source filled (read-only), 1 = Control's `/control/`
/// segment (read-only: the graph). Input future 0: the source's report.
fn worker_task(ctx: &TaskContext, args: WorkerArgs) -> Result<PartialReport, TaskError> {
    let label = format!("worker/{}", args.partition);
    robustly(&label, &args.retry, |_| worker_attempt(ctx, &args), |report| &mut report.incidents)
}

/// The frames of a telemetry buffer, read in place, in sequence order.
fn stored_frames<'v>(view: &'v kv_region::view::View<&[u8]>) -> kv_region::KvResult<Vec<FrameRef<'v>>> {
    let layout = |e: frame_chunk::ChunkError| kv_region::KvError::Layout(e.to_string());
    let mut frames = Vec::new();
    for key in view.list("/") {
        match view.get(&key)? {
            Some((Codec::Raw, bytes)) => {
                for frame in ChunkReader::new(bytes).map_err(layout)?.frames() {
                    frames.push(frame.map_err(layout)?);
                }
            }
            Some((codec, _)) => {
                return Err(kv_region::KvError::Layout(format!(
                    "telemetry key {key} holds {} data, not a frame chunk",
                    codec.name()
                )))
            }
            None => {}
        }
    }
    Ok(frames)
}

/// What a worker made of a batch: events, partials, and the graphs that failed on it (the
/// current one, and the one it fell back to when that failed too).
type Analysis = (u64, BTreeMap<(u64, u64), Partials>, Vec<GraphFailure>);

/// Batches left unanalysed for want of a good graph: one warning per interval, not one per batch
/// (thousands a second).
static UNANALYSED: RateLimitedCount = RateLimitedCount::new(Duration::from_secs(10));

/// Runs the graph over the buffer's frames; when it fails on an event, records the failure and
/// runs the last good graph instead, and when that fails too, records it and analyses nothing.
fn analyse(frames: &[FrameRef<'_>], graph: Option<(u64, Arc<CompiledGraph>)>, args: &WorkerArgs) -> Analysis {
    let events = frames.len() as u64;
    let mut failures: Vec<GraphFailure> = Vec::new();
    let mut next = graph;
    while let Some((version, graph)) = next.take() {
        match run_graph(&graph, version, frames, args.bin_width_ns) {
            Ok(bins) => {
                if let Some(failure) = failures.last_mut() {
                    failure.reverted_to = Some(version);
                }
                graph_cache().last_good = Some((version, graph));
                for (&(bin, graph_version), partials) in &bins {
                    tracing::debug!(
                        component = "worker",
                        partition = args.partition,
                        bin,
                        graph_version,
                        events = partials.events(),
                        "partial"
                    );
                }
                return (events, bins, failures);
            }
            Err(error) => {
                tracing::warn!(
                    component = "worker",
                    partition = args.partition,
                    graph_version = version,
                    "graph failed on an event, falling back to the last good graph: {error}"
                );
                failures.push(GraphFailure {
                    version,
                    partition: args.partition,
                    message: error.to_string(),
                    reverted_to: None,
                });
                // Each failed version is remembered, so this ends.
                next = graph_cache().fail(version);
            }
        }
    }
    if failures.is_empty() {
        if let Some(batches) = UNANALYSED.note() {
            tracing::warn!(
                component = "worker",
                partition = args.partition,
                batches,
                "no good graph; events not analysed (send one: `ami2 graph submit FILE`, or `ami2 graph revert N`)"
            );
        }
    }
    (events, BTreeMap::new(), failures)
}

fn worker_attempt(ctx: &TaskContext, args: &WorkerArgs) -> Result<PartialReport, TaskError> {
    let cpu = CpuStopwatch::start();
    let report: SourceReport = ctx.input(0)?;
    let graph = with_reader(&ctx.region(1)?, args.control_field, |view| {
        current_graph(view).map_err(|e| kv_region::KvError::Layout(e.to_string()))
    })?;
    // The graph reads the pixels where the source wrote them.
    let (events, bins, failures) = with_reader(&ctx.region(0)?, args.telemetry_field, |view| {
        Ok(analyse(&stored_frames(view)?, graph, args))
    })?;
    let mut out = PartialReport {
        events,
        bins,
        ..PartialReport::default()
    };
    out.failures.extend(failures);
    out.progress.insert(args.partition, (report.max_timestamp_ns, report.ended));
    out.sources.insert(args.partition, (report.position.clone(), report.stats.clone()));
    out.incidents = report.incidents;
    out.ran_on
        .insert(format!("source/{}", args.partition), [report.address_space].into());
    out.ran_on
        .insert(format!("worker/{}", args.partition), [ctx.address_space()].into());
    note_processor(&mut out.processors, "source", report.processor);
    note_processor(&mut out.processors, "worker", ctx.executing_processor().kind);
    out.cpu = TaskCpu {
        source_ns: report.cpu_ns,
        worker_ns: cpu.elapsed_ns(),
    };
    Ok(out)
}

/// Merges the partial reports of its input futures (the workers of node `node` for one round).
fn local_reduce_task(ctx: &TaskContext, (node, retry): (u32, RetryPolicy)) -> Result<PartialReport, TaskError> {
    let merge = |_| {
        let mut merged = PartialReport::default();
        for i in 0..ctx.input_future_count() {
            merged.merge(ctx.input(i)?)?;
        }
        merged.ran_on.insert(format!("local_reducer/{node}"), [ctx.address_space()].into());
        note_processor(&mut merged.processors, "local_reducer", ctx.executing_processor().kind);
        tracing::debug!(
            component = "local_reducer",
            node,
            partitions = merged.progress.len(),
            bins = merged.bins.len(),
            events = merged.events,
            "round merged"
        );
        Ok(merged)
    };
    robustly(&format!("local_reducer/{node}"), &retry, merge, |report| &mut report.incidents)
}

/// Retention, then the new values (`(bin, key, value)`): deletes the oldest bins beyond
/// `retained`, then writes the values of the bins `written` still holds. A value that does not
/// fit makes room by deleting the oldest bins still held, older than its own: a graph whose values
/// are larger than Results was sized for keeps fewer bins instead of failing every reduction.
/// Returns how many bins were dropped that way.
fn store_bins(
    view: &mut View<&mut [u8]>,
    puts: &[(u64, String, Vec<u8>)],
    written: &mut WrittenBins,
    retained: u64,
) -> kv_region::KvResult<u64> {
    while written.len() > retained {
        delete_oldest_bin(view, written)?;
    }
    let mut dropped = 0;
    for (bin, key, value) in puts {
        // A bin retention already let go (more bins were published at once than are retained,
        // or room was made below) is not written at all.
        if written.oldest().is_none_or(|oldest| *bin < oldest) {
            continue;
        }
        loop {
            match view.put(key, Codec::Json, value) {
                Ok(()) => break,
                Err(kv_region::KvError::StoreFull { .. }) if written.oldest().is_some_and(|oldest| oldest < *bin) => {
                    delete_oldest_bin(view, written)?;
                    dropped += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(dropped)
}

/// Deletes the results of the oldest bin `written` holds, and forgets it.
fn delete_oldest_bin(view: &mut View<&mut [u8]>, written: &mut WrittenBins) -> kv_region::KvResult<()> {
    for key in written.pop_oldest_keys().unwrap_or_default() {
        view.delete(&key)?;
    }
    Ok(())
}

/// Input futures: the previous global report (when `has_previous`), then local reports. Region 0:
/// Results' `/results/` segment (read-write).
fn global_reduce_task(ctx: &TaskContext, args: GlobalArgs) -> Result<GlobalReport, TaskError> {
    robustly(
        "global_reducer",
        &args.retry,
        |_| global_reduce_attempt(ctx, &args),
        |report| &mut report.incidents,
    )
}

fn global_reduce_attempt(ctx: &TaskContext, args: &GlobalArgs) -> Result<GlobalReport, TaskError> {
    let mut first = 0;
    let mut state = if args.has_previous {
        first = 1;
        ctx.input::<GlobalReport>(0)?.state
    } else {
        GlobalState {
            written: args.written_before.clone().unwrap_or_default(),
            ..GlobalState::default()
        }
    };
    let mut report = GlobalReport::default();
    for i in first..ctx.input_future_count() {
        let local: PartialReport = ctx.input(i)?;
        state.events += local.events;
        report.failures.extend(local.failures);
        report.sources.extend(local.sources);
        report.incidents.extend(local.incidents);
        merge_by_task(&mut report.ran_on, local.ran_on);
        merge_by_task(&mut report.processors, local.processors);
        report.cpu.add(local.cpu);
        for (p, (ts, ended)) in local.progress {
            let mark = state.watermarks.entry(p).or_insert((None, false));
            mark.0 = mark.0.max(ts);
            mark.1 |= ended;
        }
        for ((bin, version), partials) in local.bins {
            if state.emitted_upto.is_some_and(|upto| bin <= upto) {
                // Arrived after its bin was published: counted, not merged.
                state.late_partials += 1;
                // Counted in the late-partials metric; one line each would flood the log.
                tracing::debug!(
                    component = "global_reducer",
                    bin,
                    graph_version = version,
                    events = partials.events(),
                    "late partial: its bin was already published"
                );
                continue;
            }
            let versions = state.pending.entry(bin).or_default();
            match versions.get_mut(&version) {
                Some(mine) => mine.merge(&partials)?,
                None => {
                    versions.insert(version, partials);
                }
            }
        }
    }
    report.all_ended = state.watermarks.len() == args.partitions && state.watermarks.values().all(|(_, ended)| *ended);

    // A bin is complete when every partition has gone past its end (ended partitions count as
    // done); a bin older than the wait bound behind the newest data is published anyway.
    let complete_before = if args.flush || report.all_ended {
        u64::MAX
    } else if state.watermarks.len() < args.partitions {
        0
    } else {
        state
            .watermarks
            .values()
            .map(|(ts, ended)| if *ended { u64::MAX } else { ts.map_or(0, |t| t + 1) })
            .min()
            .unwrap_or(0)
    };
    let newest = state.watermarks.values().filter_map(|(ts, _)| *ts).max().unwrap_or(0);
    let ready: Vec<u64> = state
        .pending
        .keys()
        .copied()
        .filter(|bin| {
            (bin + 1).saturating_mul(args.bin_width_ns) <= complete_before
                || (bin + 1).saturating_mul(args.bin_width_ns) + args.bin_wait_ns <= newest
        })
        .collect();
    let mut puts = Vec::new();
    for bin in ready {
        let versions = state.pending.remove(&bin).expect("ready bins are pending");
        // Bins during a graph change may hold partials of two versions: the newest one wins.
        let (&version, partials) = versions.iter().next_back().expect("a pending bin has partials");
        state.superseded_partials += versions.len() as u64 - 1;
        let values = partials.finalize();
        let events = partials.events();
        let mut names = Vec::new();
        for (name, value) in &values {
            let doc = json!({"bin": bin, "t_ns": bin * args.bin_width_ns, "graph_version": version, "events": events, "value": value});
            puts.push((bin, result_key(name, bin), serde_json::to_vec(&doc).expect("JSON")));
            names.push(name.clone());
        }
        state.written.push(bin, names);
        state.emitted_upto = Some(state.emitted_upto.map_or(bin, |u| u.max(bin)));
        state.bins_emitted += 1;
        tracing::debug!(
            component = "global_reducer",
            bin,
            graph_version = version,
            events,
            superseded = versions.len() - 1,
            "bin published"
        );
        report.emitted.push(EmittedBin {
            bin,
            graph_version: version,
            events,
            values,
        });
    }
    // Retention keeps the newest `retained_bins` bins in Results.
    if !puts.is_empty() || state.written.len() > args.retained_bins {
        let dropped = with_writer(&ctx.region(0)?, args.results_field, |view| {
            store_bins(view, &puts, &mut state.written, args.retained_bins)
        })?;
        if dropped > 0 && state.bins_dropped_early == 0 {
            // Once per run: it goes on for as long as the graph's values stay that large.
            let message = format!(
                "Results is full: dropped the oldest bins before their time to store bin {}; with values this large it holds fewer than {} bins (counted in bins_dropped_early)",
                puts.last().map_or(0, |(bin, _, _)| *bin),
                args.retained_bins
            );
            tracing::warn!(component = "global_reducer", dropped, "{message}");
            report
                .incidents
                .push(Incident::new("global_reducer", robust::IncidentKind::ResultsFull, 0, message));
        }
        state.bins_dropped_early += dropped;
    }
    report.ran_on.insert("global_reducer".into(), [ctx.address_space()].into());
    note_processor(&mut report.processors, "global_reducer", ctx.executing_processor().kind);
    report.state = state;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Batch;

    /// Hands over `script[i]` frames at its i-th call (nothing after the script, then its end)
    /// and records the timeout of each call. Writes nothing: the batching is what is tested.
    struct Scripted {
        script: Vec<usize>,
        timeouts: Arc<Mutex<Vec<Duration>>>,
    }

    impl DataSource for Scripted {
        fn next_batch(&mut self, _max: usize, _timeout: Duration) -> Result<Batch, SourceError> {
            unreachable!("fill_batch calls write_batch")
        }
        fn write_batch(&mut self, max: usize, timeout: Duration, _sink: &mut dyn FrameSink) -> Result<Written, SourceError> {
            let mut timeouts = self.timeouts.lock().unwrap();
            let frames = self.script.get(timeouts.len()).copied().unwrap_or(0).min(max);
            timeouts.push(timeout);
            Ok(Written {
                frames,
                max_timestamp_ns: (frames > 0).then_some(timeouts.len() as u64),
                ended: timeouts.len() > self.script.len(),
            })
        }
        fn position(&self) -> SourcePosition {
            SourcePosition::default()
        }
        fn stats(&self) -> SourceStats {
            SourceStats::default()
        }
    }

    struct NoSink;

    impl FrameSink for NoSink {
        fn frame(&mut self, seq: u64, _: u64, _: &[FieldSpec<'_>]) -> Result<FrameMut<'_>, SourceError> {
            Err(SourceError::Sink {
                seq,
                reason: "not used".into(),
            })
        }
    }

    /// The open source, and the timeouts its calls get.
    fn open(script: &[usize], last_handover: Option<Instant>) -> (OpenSource, Arc<Mutex<Vec<Duration>>>) {
        let timeouts = Arc::new(Mutex::new(Vec::new()));
        let source = Scripted {
            script: script.to_vec(),
            timeouts: timeouts.clone(),
        };
        let open = OpenSource {
            source: Box::new(source),
            last_handover,
            last_bin: Some(0),
        };
        (open, timeouts)
    }

    const TIMEOUT: Duration = Duration::from_millis(200);
    const INTERVAL: Duration = Duration::from_secs(3600);
    /// Bins too wide for the scripted time stamps (1, 2, 3...) to reach a new one.
    const WIDE: u64 = 1_000;

    #[test]
    fn the_first_frames_after_a_pause_go_out_at_once() {
        let (mut source, timeouts) = open(&[3, 5, 7], None);
        let batch = fill_batch(&mut source, 100, TIMEOUT, INTERVAL, WIDE, &mut NoSink).unwrap();
        assert_eq!((batch.frames, batch.max_timestamp_ns), (3, Some(1)));
        assert_eq!(*timeouts.lock().unwrap(), [TIMEOUT]);
        assert!(source.last_handover.is_some(), "the hand-over is remembered");
    }

    #[test]
    fn a_batch_soon_after_the_last_gathers_frames_until_full() {
        let (mut source, timeouts) = open(&[3, 5, 7], Some(Instant::now()));
        let batch = fill_batch(&mut source, 10, TIMEOUT, INTERVAL, WIDE, &mut NoSink).unwrap();
        // 3, then 5, then the 2 that still fit.
        assert_eq!((batch.frames, batch.max_timestamp_ns, batch.ended), (10, Some(3), false));
        // The first frames are waited for as long as ever, the others until the interval is up.
        let timeouts = timeouts.lock().unwrap();
        assert_eq!(timeouts.len(), 3);
        assert_eq!(timeouts[0], TIMEOUT);
        assert!(timeouts[1..].iter().all(|&t| t > Duration::ZERO && t <= INTERVAL), "{timeouts:?}");
    }

    #[test]
    fn a_batch_soon_after_the_last_ends_when_the_source_brings_nothing() {
        let (mut source, _) = open(&[3, 5], Some(Instant::now()));
        let batch = fill_batch(&mut source, 100, TIMEOUT, INTERVAL, WIDE, &mut NoSink).unwrap();
        // The third call brings nothing and says the source ended: the frames go out, and the
        // end is left for the next round, which reports it with no frames.
        assert_eq!((batch.frames, batch.ended), (8, false));
        let next = fill_batch(&mut source, 100, TIMEOUT, INTERVAL, WIDE, &mut NoSink).unwrap();
        assert_eq!((next.frames, next.ended), (0, true));
    }

    #[test]
    fn a_batch_that_reaches_a_new_bin_goes_out_at_once() {
        // Bins 2 ns wide: the first call's frames (time stamp 1) are in the bin of the previous
        // hand-over (0), the second call's (time stamp 2) in the next one.
        let (mut source, timeouts) = open(&[3, 5, 7], Some(Instant::now()));
        let batch = fill_batch(&mut source, 100, TIMEOUT, INTERVAL, 2, &mut NoSink).unwrap();
        assert_eq!((batch.frames, timeouts.lock().unwrap().len()), (8, 2));
        assert_eq!(source.last_bin, Some(1));
        // The next batch is gathered again until a bin past 1 comes (time stamp 4, the fourth call).
        let (mut source, _) = open(&[3, 5, 7, 1, 1], Some(Instant::now()));
        source.last_bin = Some(1);
        let batch = fill_batch(&mut source, 100, TIMEOUT, INTERVAL, 2, &mut NoSink).unwrap();
        assert_eq!(batch.frames, 16);
    }

    #[test]
    fn with_no_interval_whatever_has_come_goes_out_at_once() {
        let (mut source, timeouts) = open(&[3, 5, 7], Some(Instant::now()));
        let batch = fill_batch(&mut source, 100, TIMEOUT, Duration::ZERO, WIDE, &mut NoSink).unwrap();
        assert_eq!((batch.frames, timeouts.lock().unwrap().len()), (3, 1));
    }

    #[test]
    fn a_batch_long_after_the_last_does_not_wait() {
        let long_ago = Instant::now().checked_sub(Duration::from_secs(1)).expect("a second after boot");
        let (mut source, timeouts) = open(&[3, 5, 7], Some(long_ago));
        let batch = fill_batch(&mut source, 100, TIMEOUT, Duration::from_millis(1), WIDE, &mut NoSink).unwrap();
        assert_eq!((batch.frames, timeouts.lock().unwrap().len()), (3, 1));
    }
}
