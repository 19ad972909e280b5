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
    /// Damaged files that were passed over, torn log tails.
    pub warnings: Vec<String>,
}

pub(crate) struct KvTasks {
    pub init: TaskId<InitArgs, ()>,
    pub apply: TaskId<ApplyArgs, ApplyResult>,
    pub snapshot: TaskId<PersistArgs, SnapshotStats>,
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

fn snapshot_task(ctx: &TaskContext, args: PersistArgs) -> Result<SnapshotStats, TaskError> {
    let region = ctx.region(0)?;
    let stats = with_reader(&region, args.field, |view| {
        let segment = view.segments().first().ok_or_else(|| KvError::Layout("no segment".into()))?;
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
    })?;
    Ok(stats)
}

fn load_task(ctx: &TaskContext, args: PersistArgs) -> Result<LoadStats, TaskError> {
    let region = ctx.region(0)?;
    let stats = with_writer(&region, args.field, |view| {
        let segment = view
            .segments_mut()
            .first_mut()
            .ok_or_else(|| KvError::Layout("no segment".into()))?;
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
        let mut snapshot = None;
        let mut damaged = None;
        for path in [&files.snapshot, &files.previous] {
            if !path.exists() {
                continue;
            }
            match persist::read_snapshot(path) {
                Ok(s) if s.prefix == prefix => {
                    snapshot = Some(s);
                    stats.snapshot = Some(path.clone());
                    break;
                }
                Ok(s) => stats
                    .warnings
                    .push(format!("{} holds segment {:?}, not {prefix:?}; skipped", path.display(), s.prefix)),
                Err(error) => {
                    stats.warnings.push(format!("{error}; trying the previous snapshot"));
                    damaged = Some(error);
                }
            }
        }
        if let (None, Some(error)) = (&snapshot, damaged) {
            return Err(error);
        }
        segment.clear();
        let mut seq = 0;
        if let Some(snapshot) = snapshot {
            for record in &snapshot.entries {
                segment.put(&record.key, record.codec, &record.value)?;
            }
            seq = snapshot.seq;
        }
        let log = persist::read_log(&files.log)?;
        if let Some((offset, reason)) = &log.stopped {
            stats.warnings.push(format!(
                "{}: log ends early at byte {offset} ({reason}); the records before it were replayed",
                files.log.display()
            ));
        }
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
        segment.set_seq(seq);
        stats.seq = seq;
        stats.keys = segment.len();
        Ok(stats)
    })?;
    for warning in &stats.warnings {
        tracing::warn!(segment = %stats.prefix, "{warning}");
    }
    Ok(stats)
}
