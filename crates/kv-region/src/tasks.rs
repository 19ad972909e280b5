//! The Legion tasks that work on a store: format segments, apply batches of operations, write
//! snapshots, load snapshots and logs. Each runs on exactly the segment(s) its region requirement
//! names, wherever the mapper put that part of the store.

use std::path::PathBuf;
use std::sync::OnceLock;

use legion_bridge::{register_task, Field, TaskContext, TaskError, TaskId, VariantOptions};
use serde::{Deserialize, Serialize};

use crate::persist::{self, Change, SegmentFiles};
use crate::segment::{Codec, Segment, SegmentSpec, Slot};
use crate::view::{apply_ops, read_op, with_raw_bytes, with_reader, with_writer};
use crate::{KvError, KvResult};

/// First task id used by this crate (ids `KV_TASK_BASE..KV_TASK_BASE + 4`).
pub const KV_TASK_BASE: u32 = 200;

/// One operation of a batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    Put { key: String, codec: Codec, value: Vec<u8> },
    Get { key: String },
    Delete { key: String },
    List { prefix: String },
}

impl Op {
    /// A put of `value`, stored as JSON.
    pub fn put_json(key: impl Into<String>, value: &impl Serialize) -> Op {
        Op::Put {
            key: key.into(),
            codec: Codec::Json,
            value: serde_json::to_vec(value).expect("a JSON value serializes"),
        }
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Stored,
    Value(Option<(Codec, Vec<u8>)>),
    Deleted(bool),
    Keys(Vec<String>),
}

/// Why one operation of a batch failed inside the task (sent back to the launcher).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum OpFailure {
    StoreFull {
        prefix: String,
        what: String,
        needed: usize,
        free: usize,
    },
    Other(String),
}

impl From<KvError> for OpFailure {
    fn from(error: KvError) -> Self {
        match error {
            KvError::StoreFull {
                prefix,
                what,
                needed,
                free,
            } => Self::StoreFull {
                prefix,
                what: what.to_string(),
                needed,
                free,
            },
            other => Self::Other(other.to_string()),
        }
    }
}

impl From<OpFailure> for KvError {
    fn from(failure: OpFailure) -> Self {
        match failure {
            OpFailure::StoreFull {
                prefix,
                what,
                needed,
                free,
            } => {
                // The reason text is one of the segment's fixed messages.
                let what = if what.contains("key") {
                    "no room for another key"
                } else {
                    "no run of free data points"
                };
                KvError::StoreFull {
                    prefix,
                    what,
                    needed,
                    free,
                }
            }
            OpFailure::Other(message) => KvError::Layout(message),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ApplyArgs {
    pub field: Field<Slot>,
    pub ops: Vec<(usize, Op)>,
    /// Append changes to this log (fsynced) before returning.
    pub log: Option<PathBuf>,
}

pub(crate) type ApplyResult = Vec<(usize, Result<Outcome, OpFailure>)>;

#[derive(Serialize, Deserialize)]
pub(crate) struct InitArgs {
    pub field: Field<Slot>,
    pub specs: Vec<SegmentSpec>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PersistArgs {
    pub field: Field<Slot>,
    pub store_dir: PathBuf,
    pub logged: bool,
}

/// What a snapshot task wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub prefix: String,
    pub path: PathBuf,
    pub keys: usize,
    pub bytes: u64,
    pub seq: u64,
}

/// What a load task found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadStats {
    pub prefix: String,
    /// The snapshot used, if any.
    pub snapshot: Option<PathBuf>,
    pub keys: usize,
    /// Log records replayed on top of the snapshot.
    pub replayed: usize,
    pub seq: u64,
    /// Damaged files that were passed over, torn log tails: for the caller to report (the load
    /// does not log them).
    pub warnings: Vec<String>,
}

pub(crate) struct KvTasks {
    pub init: TaskId<InitArgs, ()>,
    pub apply: TaskId<ApplyArgs, ApplyResult>,
    pub snapshot: TaskId<PersistArgs, SnapshotResult>,
    pub load: TaskId<PersistArgs, LoadStats>,
}

static TASKS: OnceLock<KvTasks> = OnceLock::new();

/// Registers the store's tasks; call once before the runtime starts.
pub fn register_tasks() -> KvResult<()> {
    if TASKS.get().is_some() {
        return Ok(());
    }
    // Only kv_init is a leaf task: the others return results of any size (values, key lists,
    // statistics), which Legion only allows from non-leaf variants.
    let tasks = KvTasks {
        init: register_task(KV_TASK_BASE, "kv_init", VariantOptions::leaf(), init_task)?,
        apply: register_task(KV_TASK_BASE + 1, "kv_apply", VariantOptions::default(), apply_task)?,
        snapshot: register_task(KV_TASK_BASE + 2, "kv_snapshot", VariantOptions::default(), snapshot_task)?,
        load: register_task(KV_TASK_BASE + 3, "kv_load", VariantOptions::default(), load_task)?,
    };
    let _ = TASKS.set(tasks);
    Ok(())
}

pub(crate) fn tasks() -> KvResult<&'static KvTasks> {
    TASKS
        .get()
        .ok_or_else(|| KvError::Layout("kv_region::register_tasks() was not called before the runtime started".into()))
}

/// Formats the segment of this index point (the store's segments are colors of its partition).
fn init_task(ctx: &TaskContext, args: InitArgs) -> Result<(), TaskError> {
    let color = ctx.index_point().ok_or_else(|| TaskError::msg("kv_init runs as an index launch"))? as usize;
    let spec = args.specs.get(color).ok_or_else(|| TaskError::msg(format!("no segment {color}")))?;
    let region = ctx.region(0)?;
    with_raw_bytes(&region, args.field, |bytes| Segment::format(bytes, spec).map(drop))?;
    Ok(())
}

fn apply_task(ctx: &TaskContext, args: ApplyArgs) -> Result<ApplyResult, TaskError> {
    let region = ctx.region(0)?;
    let mutating = args.ops.iter().any(|(_, op)| matches!(op, Op::Put { .. } | Op::Delete { .. }));
    let (indices, ops): (Vec<usize>, Vec<Op>) = args.ops.into_iter().unzip();
    let outcomes = if mutating {
        with_writer(&region, args.field, |view| apply_ops(view, ops, args.log.as_deref()))?
    } else {
        with_reader(&region, args.field, |view| Ok(ops.iter().map(|op| read_op(view, op)).collect()))?
    };
    Ok(indices
        .into_iter()
        .zip(outcomes.into_iter().map(|r| r.map_err(OpFailure::from)))
        .collect())
}

/// A snapshot task's answer: what it wrote, or why it could not (a full disk, a folder that
/// cannot be written). A value rather than a task failure, so that the caller decides what a
/// failed snapshot means, and a failure repeated at every interval is not logged each time.
pub(crate) type SnapshotResult = Result<SnapshotStats, String>;

fn snapshot_task(ctx: &TaskContext, args: PersistArgs) -> Result<SnapshotResult, TaskError> {
    let region = ctx.region(0)?;
    let result = with_reader(&region, args.field, |view| {
        let segment = view.segments().first().ok_or_else(|| KvError::Layout("no segment".into()))?;
        Ok(snapshot_segment(segment, &args).map_err(|e| e.to_string()))
    })?;
    Ok(result)
}

fn snapshot_segment<B: AsRef<[u8]>>(segment: &Segment<B>, args: &PersistArgs) -> KvResult<SnapshotStats> {
    let prefix = segment.prefix().to_string();
    let files = SegmentFiles::new(&args.store_dir, &prefix);
    // The snapshot being replaced becomes the previous one; the log must keep what it lacks.
    let replaced_seq = if args.logged && files.snapshot.exists() {
        persist::read_snapshot(&files.snapshot).ok().map(|s| s.seq)
    } else {
        None
    };
    let bytes = persist::write_snapshot(&files, &prefix, segment.seq(), || segment.entries())?;
    if let Some(seq) = replaced_seq {
        persist::compact_log(&files.log, seq)?;
    }
    Ok(SnapshotStats {
        prefix,
        path: files.snapshot,
        keys: segment.len(),
        bytes,
        seq: segment.seq(),
    })
}

fn load_task(ctx: &TaskContext, args: PersistArgs) -> Result<LoadStats, TaskError> {
    let region = ctx.region(0)?;
    let stats = with_writer(&region, args.field, |view| {
        let segment = view
            .segments_mut()
            .first_mut()
            .ok_or_else(|| KvError::Layout("no segment".into()))?;
        load_segment(segment, &args)
    })?;
    // The warnings are the caller's to report (ami2's driver logs each once, with its context,
    // and counts it): logged here too, every one would be said twice.
    Ok(stats)
}

/// Rebuilds a segment from its snapshot and log (see the module docs of [`persist`]).
fn load_segment<B: AsRef<[u8]> + AsMut<[u8]>>(segment: &mut Segment<B>, args: &PersistArgs) -> KvResult<LoadStats> {
    let prefix = segment.prefix().to_string();
    let files = SegmentFiles::new(&args.store_dir, &prefix);
    let mut stats = LoadStats {
        prefix: prefix.clone(),
        snapshot: None,
        keys: 0,
        replayed: 0,
        seq: 0,
        warnings: Vec::new(),
    };
    // A crash (or a failed write) in the middle of a snapshot leaves its temporary file; the
    // snapshots and the log do without it.
    match persist::remove_stale_snapshot(&files) {
        Ok(true) => tracing::info!(segment = %prefix, "removed {}, a snapshot left half-written", files.temporary.display()),
        Ok(false) => {}
        Err(error) => stats.warnings.push(format!("cannot remove a snapshot left half-written: {error}")),
    }
    let mut snapshot = None;
    let mut unusable = Vec::new();
    for path in [&files.snapshot, &files.previous] {
        if !path.exists() {
            continue;
        }
        let checked = persist::read_snapshot(path).and_then(|s| {
            if s.prefix == prefix {
                Ok(s)
            } else {
                Err(KvError::Corrupt {
                    path: path.clone(),
                    what: "snapshot",
                    reason: format!(
                        "it holds segment {:?}, not {prefix:?} (a file of another segment or store?)",
                        s.prefix
                    ),
                })
            }
        });
        match checked {
            Ok(s) => {
                snapshot = Some(s);
                stats.snapshot = Some(path.clone());
                break;
            }
            Err(error) => unusable.push(error.to_string()),
        }
    }
    let log = persist::read_log(&files.log)?;
    let has_log = files.log.exists();
    let continues_from = log.continues_from();
    let names = |paths: &[&std::path::Path]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    if snapshot.is_none() && !unusable.is_empty() {
        // Garbage is never loaded; say what the ways out cost.
        let recovery = if has_log && continues_from == 0 && !log.changes.is_empty() {
            format!(
                "move {} out of the folder: the log holds every change since the segment was new, so nothing is lost",
                names(&[&files.snapshot, &files.previous])
            )
        } else {
            let mut files_of_segment = vec![files.snapshot.as_path(), files.previous.as_path()];
            if has_log {
                files_of_segment.push(&files.log);
            }
            format!(
                "put back good copies of the snapshot files (a backup), or move {} out of the folder to start the segment empty: everything it held is lost",
                names(&files_of_segment)
            )
        };
        return Err(KvError::CannotLoad {
            prefix,
            reason: format!("no snapshot verifies ({})", unusable.join("; ")),
            recovery,
        });
    }
    for failure in &unusable {
        stats.warnings.push(format!("{failure}; the previous snapshot was used instead"));
    }
    let from = snapshot.as_ref().map_or(0, |s| s.seq);
    if continues_from > from {
        let missing = match &stats.snapshot {
            None => format!("there is no snapshot ({} are missing)", names(&[&files.snapshot, &files.previous])),
            Some(path) => format!("{} holds only the changes up to {from}", path.display()),
        };
        return Err(KvError::CannotLoad {
            prefix,
            reason: format!(
                "{} continues a snapshot holding the changes up to {continues_from}, but {missing}; the log without that snapshot would lose the keys only the snapshot held",
                files.log.display()
            ),
            recovery: format!(
                "put the segment's snapshot files back (from where they were moved, or a backup), or move {} out of the folder too to start the segment empty: everything it held is lost",
                files.log.display()
            ),
        });
    }
    segment.clear();
    let mut seq = 0;
    if let Some(snapshot) = snapshot {
        for record in &snapshot.entries {
            segment.put(&record.key, record.codec, &record.value)?;
        }
        seq = snapshot.seq;
    }
    let intact = log.changes.len();
    for (record_seq, change) in log.changes {
        if record_seq <= seq {
            continue;
        }
        match change {
            Change::Put(record) => segment.put(&record.key, record.codec, &record.value)?,
            Change::Delete(key) => {
                segment.delete(&key);
            }
        }
        seq = record_seq;
        stats.replayed += 1;
    }
    if let Some(damage) = &log.stopped {
        // Records appended after the damage would be out of reach of every later replay: the log
        // goes on from its last intact record.
        let kept = persist::cut_log(&files.log, damage.offset).map_err(|error| KvError::CannotLoad {
            prefix: prefix.clone(),
            reason: format!(
                "{} is damaged at byte {} ({}) and cannot be cut there, so changes appended after it would be lost: {error}",
                files.log.display(),
                damage.offset,
                damage.reason
            ),
            recovery: "make the store's folder writable (or free space on its disk) and start again".into(),
        })?;
        stats.warnings.push(format!(
            "{}: the record at byte {} is damaged ({}), so replay stopped after {intact} intact records; the log was cut there and the {} bytes cut off are kept in {}",
            files.log.display(),
            damage.offset,
            damage.reason,
            damage.len - damage.offset,
            kept.display()
        ));
    }
    segment.set_seq(seq);
    stats.seq = seq;
    stats.keys = segment.len();
    Ok(stats)
}
