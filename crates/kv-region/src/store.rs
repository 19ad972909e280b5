//! [`KeyValueStore`]: one logical region over a 1-D index space, cut into segments (one per owning
//! key prefix, a contiguous range of points each), and the operations on it, each run as a Legion
//! task on the segment it touches.

use std::path::{Path, PathBuf};

use legion_bridge::{Field, IndexLauncher, LogicalPartition, LogicalRegion, Privilege, RegionRequirement, TaskContext, TaskLauncher};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::{validate_key, validate_prefix};
use crate::segment::{Codec, SegmentSpec, Slot};
use crate::tasks::{tasks, ApplyArgs, InitArgs, LoadStats, Op, Outcome, PersistArgs, SnapshotStats};
use crate::{KvError, KvResult};

/// Default limit on one value: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// What a store holds and how much: its segments and limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Name of the store (its folder in the data directory).
    pub name: String,
    /// One segment per owning prefix.
    pub segments: Vec<SegmentSpec>,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Append every change to a per-segment log, fsynced before the change is reported done.
    pub logged: bool,
    /// Mapping tags for the mapper (0: none): of the index launches over every segment (format,
    /// load, snapshot), and of each segment's single launches (operations), by prefix.
    #[serde(default)]
    pub tags: MappingTags,
}

/// The mapping tags a store puts on its launches, for a placement policy (see [`StoreConfig::tags`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MappingTags {
    /// Tag of the index launches over all segments; their point `i` is the `i`-th segment in
    /// prefix order ([`StoreConfig::segment_order`]).
    pub all_segments: u64,
    /// Tag of the operations on one segment, by prefix (missing: 0).
    pub per_segment: std::collections::BTreeMap<String, u64>,
}

impl StoreConfig {
    /// A store with no segments yet, unlogged, values up to 1 MiB.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            segments: Vec::new(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            logged: false,
            tags: MappingTags::default(),
        }
    }
    /// Sets the mapping tags of the store's launches: `all_segments` for the index launches over
    /// every segment, `per_segment(prefix)` for the operations on one segment. Call after the
    /// last [`StoreConfig::segment`].
    pub fn tags(mut self, all_segments: u64, per_segment: impl Fn(&str) -> u64) -> Self {
        self.tags = MappingTags {
            all_segments,
            per_segment: self.segments.iter().map(|s| (s.prefix.clone(), per_segment(&s.prefix))).collect(),
        };
        self
    }
    /// The segments' prefixes in region order (sorted): point `i` of the store's index launches
    /// works on segment `i`.
    pub fn segment_order(&self) -> Vec<String> {
        let mut prefixes: Vec<String> = self.segments.iter().map(|s| s.prefix.clone()).collect();
        prefixes.sort();
        prefixes
    }
    /// Adds a segment owning `prefix`, for up to `max_keys` keys and `data_bytes` of keys + values.
    pub fn segment(mut self, prefix: &str, max_keys: usize, data_bytes: usize) -> Self {
        self.segments.push(SegmentSpec {
            prefix: prefix.to_string(),
            max_keys,
            data_bytes,
        });
        self
    }
    /// Sets the value size limit.
    pub fn max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }
    /// Makes the store logged.
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    fn validate(&self) -> KvResult<()> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(KvError::Layout(format!(
                "store name {:?} must be letters, digits, '-' or '_'",
                self.name
            )));
        }
        if self.segments.is_empty() {
            return Err(KvError::Layout(format!("store {:?} has no segments", self.name)));
        }
        for (i, spec) in self.segments.iter().enumerate() {
            validate_prefix(&spec.prefix)?;
            if self.segments[..i].iter().any(|other| other.prefix == spec.prefix) {
                return Err(KvError::Layout(format!("segment {:?} appears twice", spec.prefix)));
            }
        }
        if self.max_value_bytes == 0 {
            return Err(KvError::Layout("max_value_bytes must be positive".into()));
        }
        Ok(())
    }
}

/// Where one segment lives in the region.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Placement {
    prefix: String,
    first: i64,
    last: i64,
}

/// A key-value store on a logical region. The handle is plain data: pass it to any task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyValueStore {
    name: String,
    region: LogicalRegion,
    field: Field<Slot>,
    /// One color per segment, in `placements` order (sorted by prefix).
    partition: LogicalPartition,
    placements: Vec<Placement>,
    max_value_bytes: usize,
    /// The store's folder in the data directory, when persistent.
    dir: Option<PathBuf>,
    logged: bool,
    tags: MappingTags,
}

impl KeyValueStore {
    /// Creates the store's region, formats every segment, and, given a data directory, rebuilds
    /// the contents from it (snapshots, then logs) before returning. Call from an inner task
    /// (typically the top-level one); the region lives until [`destroy`](Self::destroy) or the
    /// runtime's shutdown. What the load found, warnings included, comes back per segment in
    /// [`LoadStats`]: reporting the warnings is the caller's (they are not logged here).
    pub fn create(ctx: &TaskContext, config: &StoreConfig, data_dir: Option<&Path>) -> KvResult<(Self, Vec<LoadStats>)> {
        config.validate()?;
        let tasks = tasks()?;
        let mut specs = config.segments.clone();
        specs.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        let mut placements = Vec::with_capacity(specs.len());
        let mut next = 0i64;
        for spec in &specs {
            let points = spec.points() as i64;
            placements.push(Placement {
                prefix: spec.prefix.clone(),
                first: next,
                last: next + points - 1,
            });
            next += points;
        }
        let space = ctx.create_index_space(0..=next - 1).keep();
        let fields = ctx.create_field_space().keep();
        let field = ctx.allocate_field::<Slot>(fields, None)?;
        let region = ctx.create_region(space, fields).keep();
        let ranges: Vec<_> = placements.iter().map(|p| p.first..=p.last).collect();
        let index_partition = ctx.partition_by_ranges(space, &ranges)?.keep();
        let partition = ctx.logical_partition(region, index_partition);
        let store = Self {
            name: config.name.clone(),
            region,
            field,
            partition,
            placements,
            max_value_bytes: config.max_value_bytes,
            dir: data_dir.map(|d| d.join(&config.name)),
            logged: config.logged,
            tags: config.tags.clone(),
        };
        let colors = 0..=store.placements.len() as i64 - 1;
        let init = IndexLauncher::new(tasks.init, colors.clone(), &InitArgs { field, specs })?
            .tag(store.tags.all_segments)
            .region(RegionRequirement::partition(partition, region, Privilege::WriteDiscard).field(field));
        ctx.execute_index(&init)?.collect()?;
        let loaded = match &store.dir {
            Some(dir) => {
                let load = IndexLauncher::new(tasks.load, colors, &store.persist_args(dir))?
                    .tag(store.tags.all_segments)
                    .region(RegionRequirement::partition(partition, region, Privilege::ReadWrite).field(field));
                // A segment that does not load fails the store, typed as such: the files (or the
                // configuration) have to change before another try can succeed.
                ctx.execute_index(&load)?.collect().map_err(|error| KvError::LoadFailed {
                    store: config.name.clone(),
                    dir: dir.clone(),
                    message: match error {
                        legion_bridge::Error::TaskFailed { message, .. } => message,
                        other => other.to_string(),
                    },
                })?
            }
            None => Vec::new(),
        };
        Ok((store, loaded))
    }

    fn persist_args(&self, dir: &Path) -> PersistArgs {
        PersistArgs {
            field: self.field,
            store_dir: dir.to_path_buf(),
            logged: self.logged,
        }
    }

    /// Gives the store's region and its instances back to the runtime, from the task that created
    /// it, once nothing will use the store again (the tasks already launched on it finish first).
    /// The contents on disk, if any, stay.
    pub fn destroy(self, ctx: &TaskContext) {
        // The segments' partition first: its color space is not part of the region's tree.
        ctx.destroy_partition(self.partition.index_partition());
        ctx.destroy_region_tree(self.region);
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The whole region.
    pub fn region(&self) -> LogicalRegion {
        self.region
    }
    /// The field holding the slots.
    pub fn field(&self) -> Field<Slot> {
        self.field
    }
    /// The partition with one color per segment (colors in [`Self::prefixes`] order).
    pub fn partition(&self) -> LogicalPartition {
        self.partition
    }
    /// The owning prefixes, sorted; index = color in [`Self::partition`].
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.placements.iter().map(|p| p.prefix.as_str())
    }
    /// The points of the segment owning exactly `prefix`.
    pub fn points_of(&self, prefix: &str) -> KvResult<std::ops::RangeInclusive<i64>> {
        let p = self.placement(prefix)?;
        Ok(p.first..=p.last)
    }

    /// The log of the segment owning exactly `prefix`, for a logged store with a data directory:
    /// tasks that change that segment through a view pass it to [`crate::view::apply_ops`].
    pub fn log_path(&self, prefix: &str) -> Option<PathBuf> {
        match (&self.dir, self.logged) {
            (Some(dir), true) => Some(crate::persist::SegmentFiles::new(dir, prefix).log),
            _ => None,
        }
    }

    fn placement(&self, prefix: &str) -> KvResult<&Placement> {
        self.placements
            .iter()
            .find(|p| p.prefix == prefix)
            .ok_or_else(|| KvError::UnknownPrefix {
                prefix: prefix.to_string(),
            })
    }

    /// The segment (color) owning `key`: the longest owning prefix of the key.
    pub fn segment_of(&self, key: &str) -> KvResult<usize> {
        self.placements
            .iter()
            .enumerate()
            .filter(|(_, p)| key.starts_with(&p.prefix))
            .max_by_key(|(_, p)| p.prefix.len())
            .map(|(i, _)| i)
            .ok_or_else(|| KvError::KeyNotInView { key: key.to_string() })
    }

    /// The subregion of the segment owning exactly `prefix`.
    pub fn subregion(&self, ctx: &TaskContext, prefix: &str) -> KvResult<LogicalRegion> {
        self.placement(prefix)?;
        let color = self.placements.iter().position(|p| p.prefix == prefix).expect("placement found") as i64;
        Ok(ctx.subregion(self.partition, color))
    }

    /// A requirement on the segment owning exactly `prefix`, for a task that works on it with
    /// [`crate::view::with_reader`] / [`crate::view::with_writer`].
    pub fn requirement(&self, ctx: &TaskContext, prefix: &str, privilege: Privilege) -> KvResult<RegionRequirement> {
        Ok(RegionRequirement::subregion(self.subregion(ctx, prefix)?, self.region, privilege).field(self.field))
    }

    /// A partition of the store by `prefixes`: color `i` holds every segment whose prefix starts
    /// with `prefixes[i]` (they are contiguous: segments are laid out in prefix order). Prefixes
    /// must not overlap.
    pub fn partition_by_prefixes(&self, ctx: &TaskContext, prefixes: &[&str]) -> KvResult<LogicalPartition> {
        let mut ranges = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            validate_prefix(prefix)?;
            let covered: Vec<&Placement> = self.placements.iter().filter(|p| p.prefix.starts_with(prefix)).collect();
            let (Some(first), Some(last)) = (covered.first(), covered.last()) else {
                return Err(KvError::UnknownPrefix {
                    prefix: prefix.to_string(),
                });
            };
            ranges.push(first.first..=last.last);
        }
        let mut sorted = ranges.clone();
        sorted.sort_by_key(|r| *r.start());
        if sorted.windows(2).any(|w| w[0].end() >= w[1].start()) {
            return Err(KvError::Layout(format!("prefixes {prefixes:?} overlap")));
        }
        let index_partition = ctx.partition_by_ranges(self.region.index_space(), &ranges)?.keep();
        Ok(ctx.logical_partition(self.region, index_partition))
    }

    /// Checks an operation before it is launched, so that a refused one changes nothing.
    fn check(&self, op: &Op) -> KvResult<()> {
        match op {
            Op::Put { key, codec, value } => {
                validate_key(key)?;
                if value.len() > self.max_value_bytes {
                    return Err(KvError::ValueTooLarge {
                        key: key.clone(),
                        len: value.len(),
                        max: self.max_value_bytes,
                    });
                }
                if *codec == Codec::Json {
                    serde_json::from_slice::<serde::de::IgnoredAny>(value).map_err(|e| KvError::InvalidJson {
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                }
                Ok(())
            }
            Op::Get { key } | Op::Delete { key } => validate_key(key),
            Op::List { prefix } => {
                if prefix.starts_with('/') {
                    Ok(())
                } else {
                    Err(KvError::InvalidKey {
                        key: prefix.clone(),
                        reason: "must start with '/'",
                    })
                }
            }
        }
    }

    /// Runs a batch: every operation is checked first (any refusal refuses the whole batch and
    /// nothing changes), then one task per segment touched applies that segment's operations in
    /// order. Returns one result per operation, in order.
    pub fn apply(&self, ctx: &TaskContext, ops: Vec<Op>) -> KvResult<Vec<KvResult<Outcome>>> {
        let tasks = tasks()?;
        let mut per_segment: Vec<Vec<(usize, Op)>> = vec![Vec::new(); self.placements.len()];
        for (i, op) in ops.iter().enumerate() {
            self.check(op)?;
            match op {
                Op::List { prefix } => {
                    // Every segment that may hold keys under the prefix.
                    for (s, p) in self.placements.iter().enumerate() {
                        if p.prefix.starts_with(prefix.as_str()) || prefix.starts_with(p.prefix.as_str()) {
                            per_segment[s].push((i, op.clone()));
                        }
                    }
                }
                Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } => per_segment[self.segment_of(key)?].push((i, op.clone())),
            }
        }
        let mut futures = Vec::new();
        for (color, seg_ops) in per_segment.into_iter().enumerate().filter(|(_, o)| !o.is_empty()) {
            let writes = seg_ops.iter().any(|(_, op)| matches!(op, Op::Put { .. } | Op::Delete { .. }));
            let privilege = if writes { Privilege::ReadWrite } else { Privilege::ReadOnly };
            let sub = ctx.subregion(self.partition, color as i64);
            let log = if writes {
                self.log_path(&self.placements[color].prefix)
            } else {
                None
            };
            let args = ApplyArgs {
                field: self.field,
                ops: seg_ops,
                log,
            };
            let tag = self.tags.per_segment.get(&self.placements[color].prefix).copied().unwrap_or(0);
            let launcher = TaskLauncher::new(tasks.apply, &args)?
                .tag(tag)
                .region(RegionRequirement::subregion(sub, self.region, privilege).field(self.field));
            futures.push(ctx.execute(&launcher)?);
        }
        let mut results: Vec<Option<KvResult<Outcome>>> = (0..ops.len()).map(|_| None).collect();
        for future in futures {
            for (i, outcome) in future.get()? {
                let outcome = outcome.map_err(KvError::from);
                results[i] = Some(match (results[i].take(), outcome) {
                    // A list spanning segments: merge the keys.
                    (Some(Ok(Outcome::Keys(mut a))), Ok(Outcome::Keys(b))) => {
                        a.extend(b);
                        a.sort_unstable();
                        Ok(Outcome::Keys(a))
                    }
                    (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                    (_, outcome) => outcome,
                });
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(Outcome::Keys(Vec::new())))).collect())
    }

    fn one(&self, ctx: &TaskContext, op: Op) -> KvResult<Outcome> {
        self.apply(ctx, vec![op])?.pop().expect("one result per operation")
    }

    /// Stores a JSON value.
    pub fn put(&self, ctx: &TaskContext, key: &str, value: &Value) -> KvResult<()> {
        self.put_many(ctx, &[(key, value)])
    }

    /// Stores JSON given as text (refused with [`KvError::InvalidJson`] when it does not parse).
    pub fn put_json_text(&self, ctx: &TaskContext, key: &str, text: &str) -> KvResult<()> {
        self.one(
            ctx,
            Op::Put {
                key: key.to_string(),
                codec: Codec::Json,
                value: text.as_bytes().to_vec(),
            },
        )
        .map(drop)
    }

    /// Stores several JSON values in one batch.
    pub fn put_many(&self, ctx: &TaskContext, entries: &[(&str, &Value)]) -> KvResult<()> {
        self.apply_all(ctx, entries.iter().map(|(key, value)| Op::put_json(*key, value)).collect())
    }

    /// Runs a batch of writes ([`Self::apply`]); the first operation that failed is the error.
    pub fn apply_all(&self, ctx: &TaskContext, ops: Vec<Op>) -> KvResult<()> {
        self.apply(ctx, ops)?.into_iter().try_for_each(|r| r.map(drop))
    }

    /// The JSON value of `key`.
    pub fn get(&self, ctx: &TaskContext, key: &str) -> KvResult<Option<Value>> {
        Ok(self.get_many(ctx, &[key])?.pop().flatten())
    }

    /// The JSON values of several keys, in one batch.
    pub fn get_many(&self, ctx: &TaskContext, keys: &[&str]) -> KvResult<Vec<Option<Value>>> {
        let ops = keys.iter().map(|k| Op::Get { key: k.to_string() }).collect();
        self.apply(ctx, ops)?
            .into_iter()
            .zip(keys)
            .map(|(outcome, key)| match outcome? {
                Outcome::Value(None) => Ok(None),
                Outcome::Value(Some((Codec::Json, bytes))) => serde_json::from_slice(&bytes).map(Some).map_err(|e| KvError::Decode {
                    what: "stored JSON",
                    reason: e.to_string(),
                }),
                Outcome::Value(Some((codec, _))) => Err(KvError::WrongCodec {
                    key: key.to_string(),
                    found: codec.name(),
                    wanted: "JSON",
                }),
                other => Err(KvError::Layout(format!("unexpected outcome {other:?}"))),
            })
            .collect()
    }

    /// Stores a value in the compact binary encoding (bincode), e.g. a telemetry frame.
    pub fn put_bincode<T: Serialize>(&self, ctx: &TaskContext, key: &str, value: &T) -> KvResult<()> {
        let bytes = encode_bincode(value)?;
        self.one(
            ctx,
            Op::Put {
                key: key.to_string(),
                codec: Codec::Bincode,
                value: bytes,
            },
        )
        .map(drop)
    }

    /// Reads a bincode value.
    pub fn get_bincode<T: DeserializeOwned>(&self, ctx: &TaskContext, key: &str) -> KvResult<Option<T>> {
        match self.one(ctx, Op::Get { key: key.to_string() })? {
            Outcome::Value(None) => Ok(None),
            Outcome::Value(Some((Codec::Bincode, bytes))) => decode_bincode(&bytes).map(Some),
            Outcome::Value(Some((codec, _))) => Err(KvError::WrongCodec {
                key: key.to_string(),
                found: codec.name(),
                wanted: "bincode",
            }),
            other => Err(KvError::Layout(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Removes `key`; true if it was there.
    pub fn delete(&self, ctx: &TaskContext, key: &str) -> KvResult<bool> {
        match self.one(ctx, Op::Delete { key: key.to_string() })? {
            Outcome::Deleted(existed) => Ok(existed),
            other => Err(KvError::Layout(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Keys under `prefix`, sorted.
    pub fn list(&self, ctx: &TaskContext, prefix: &str) -> KvResult<Vec<String>> {
        match self.one(
            ctx,
            Op::List {
                prefix: prefix.to_string(),
            },
        )? {
            Outcome::Keys(keys) => Ok(keys),
            other => Err(KvError::Layout(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Writes a snapshot of every segment to the data directory (one task per segment, on the
    /// node holding it). Needs a store created with a data directory. A segment whose snapshot
    /// cannot be written (a full disk, a folder that cannot be written) makes this a
    /// [`KvError::SnapshotFailed`] naming every such segment; the others were written, and the
    /// failed ones keep their previous snapshots and logs.
    pub fn snapshot(&self, ctx: &TaskContext) -> KvResult<Vec<SnapshotStats>> {
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| KvError::Layout(format!("store {:?} has no data directory", self.name)))?;
        let launcher = IndexLauncher::new(tasks()?.snapshot, 0..=self.placements.len() as i64 - 1, &self.persist_args(dir))?
            .tag(self.tags.all_segments)
            .region(RegionRequirement::partition(self.partition, self.region, Privilege::ReadOnly).field(self.field));
        let results: Vec<Result<SnapshotStats, String>> = ctx.execute_index(&launcher)?.collect()?;
        let failures: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
        if !failures.is_empty() {
            return Err(KvError::SnapshotFailed {
                store: self.name.clone(),
                reason: failures.join("; "),
            });
        }
        Ok(results.into_iter().filter_map(Result::ok).collect())
    }
}

/// bincode with the standard configuration, as the telemetry store uses it.
pub fn encode_bincode<T: Serialize>(value: &T) -> KvResult<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| KvError::Decode {
        what: "bincode value",
        reason: e.to_string(),
    })
}

/// Decodes a bincode value written by [`encode_bincode`].
pub fn decode_bincode<T: DeserializeOwned>(bytes: &[u8]) -> KvResult<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| KvError::Decode {
            what: "bincode value",
            reason: e.to_string(),
        })
}
