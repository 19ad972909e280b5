//! The three stores of ami2, each a [`KeyValueStore`] with the segments and key helpers for what it
//! holds.
//!
//! | store | segments | holds | logged |
//! |---|---|---|---|
//! | Telemetry | `/telemetry/partition/<p>/` per partition | frames (bincode) | no |
//! | Control | `/control/`, `/component/`, `/incident/` | graph versions, component state and heartbeats, incidents | yes |
//! | Results | `/results/` | finished values per result name and time bin | no |

use std::path::Path;

use legion_bridge::TaskContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::validate_key;
use crate::segment::Codec;
use crate::store::{decode_bincode, encode_bincode};
use crate::tasks::{LoadStats, Op, Outcome};
use crate::{KeyValueStore, KvError, KvResult, StoreConfig};

/// One value of a telemetry frame. Arrays are packed: one length and the raw little-endian bytes
/// (see [`packed_f64`]), so encoding and decoding an image is a memory copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FieldValue {
    Scalar(f64),
    Waveform(#[serde(with = "packed_f64")] Vec<f64>),
    Image {
        width: u32,
        height: u32,
        #[serde(with = "packed_f64")]
        pixels: Vec<f64>,
    },
}

/// Serde for `Vec<f64>` as one byte string of little-endian values: bincode writes it as a length
/// and a block copy instead of one item at a time (about 10× faster for a 512×512 image). Formats
/// without byte strings (JSON) see a sequence of bytes, which also reads back.
pub mod packed_f64 {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(values.len() * 8);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        serializer.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
        deserializer.deserialize_byte_buf(PackedVisitor)
    }

    struct PackedVisitor;

    fn unpack<E: de::Error>(bytes: &[u8]) -> Result<Vec<f64>, E> {
        if bytes.len() % 8 != 0 {
            return Err(E::custom(format!(
                "packed f64 array of {} bytes is not a multiple of 8",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    impl<'de> Visitor<'de> for PackedVisitor {
        type Value = Vec<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string of little-endian f64 values")
        }
        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<f64>, E> {
            unpack(bytes)
        }
        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<f64>, E> {
            unpack(&bytes)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f64>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            unpack(&bytes)
        }
    }
}

/// One event from a data source: its sequence number, time stamp and named values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub fields: Vec<(String, FieldValue)>,
}

/// Capacity of one telemetry partition.
#[derive(Clone, Copy, Debug)]
pub struct TelemetryCapacity {
    /// Frames held at once per partition.
    pub frames: usize,
    /// Bytes of encoded frames held at once per partition.
    pub bytes: usize,
    /// Largest encoded frame.
    pub max_frame_bytes: usize,
}

/// Frames per telemetry partition, in bincode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TelemetryStore {
    store: KeyValueStore,
    partitions: usize,
}

impl TelemetryStore {
    /// The store's configuration for `partitions` partitions.
    pub fn config(partitions: usize, capacity: TelemetryCapacity) -> StoreConfig {
        (0..partitions)
            .fold(StoreConfig::new("telemetry"), |config, p| {
                config.segment(&Self::partition_prefix(p), capacity.frames, capacity.bytes)
            })
            .max_value_bytes(capacity.max_frame_bytes)
    }
    /// Creates (and, with a data directory, reloads) the store.
    pub fn create(
        ctx: &TaskContext,
        partitions: usize,
        capacity: TelemetryCapacity,
        data_dir: Option<&Path>,
    ) -> KvResult<(Self, Vec<LoadStats>)> {
        let (store, stats) = KeyValueStore::create(ctx, &Self::config(partitions, capacity), data_dir)?;
        Ok((Self { store, partitions }, stats))
    }
    /// Prefix owned by partition `p`.
    pub fn partition_prefix(p: usize) -> String {
        format!("/telemetry/partition/{p}/")
    }
    /// Key of frame `seq` of partition `p` (zero-padded: keys sort in frame order).
    pub fn frame_key(p: usize, seq: u64) -> String {
        format!("/telemetry/partition/{p}/frame/{seq:012}")
    }
    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }
    /// The underlying store (for region requirements on a partition).
    pub fn store(&self) -> &KeyValueStore {
        &self.store
    }
    /// Writes frames of partition `p` in one task.
    pub fn put_frames(&self, ctx: &TaskContext, p: usize, frames: &[Frame]) -> KvResult<()> {
        let ops = frames
            .iter()
            .map(|f| {
                Ok(Op::Put {
                    key: Self::frame_key(p, f.seq),
                    codec: Codec::Bincode,
                    value: encode_bincode(f)?,
                })
            })
            .collect::<KvResult<Vec<_>>>()?;
        self.store.apply(ctx, ops)?.into_iter().try_for_each(|r| r.map(drop))
    }
    /// Frame `seq` of partition `p`.
    pub fn get_frame(&self, ctx: &TaskContext, p: usize, seq: u64) -> KvResult<Option<Frame>> {
        self.store.get_bincode(ctx, &Self::frame_key(p, seq))
    }
    /// Sequence numbers of the frames held for partition `p`, in order.
    pub fn frame_seqs(&self, ctx: &TaskContext, p: usize) -> KvResult<Vec<u64>> {
        numbered_keys(&self.store, ctx, &format!("{}frame/", Self::partition_prefix(p)))
    }
    /// Removes frames of partition `p` (after the workers are done with them).
    pub fn drop_frames(&self, ctx: &TaskContext, p: usize, seqs: &[u64]) -> KvResult<()> {
        let ops = seqs
            .iter()
            .map(|&s| Op::Delete {
                key: Self::frame_key(p, s),
            })
            .collect();
        self.store.apply(ctx, ops)?.into_iter().try_for_each(|r| r.map(drop))
    }
}

/// The numbers ending the keys under `prefix` (`<prefix><number:012>`), in order.
fn numbered_keys(store: &KeyValueStore, ctx: &TaskContext, prefix: &str) -> KvResult<Vec<u64>> {
    Ok(store
        .list(ctx, prefix)?
        .iter()
        .filter_map(|k| k[prefix.len()..].parse().ok())
        .collect())
}

/// `key` if it is valid (keys built from caller-given names).
fn checked(key: String) -> KvResult<String> {
    validate_key(&key).map(|()| key)
}

/// Decodes a frame read from a store view inside a task.
pub fn decode_frame(bytes: &[u8]) -> KvResult<Frame> {
    decode_bincode(bytes)
}

/// Graph versions, component state and heartbeats, incidents. Every change is logged and fsynced
/// before it is reported done.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlStore {
    store: KeyValueStore,
}

/// Key of the current graph version.
pub const GRAPH_VERSION_KEY: &str = "/control/graph/version";

impl ControlStore {
    /// The store's configuration: room for `max_keys` keys per segment, `bytes` per segment.
    pub fn config(max_keys: usize, bytes: usize) -> StoreConfig {
        StoreConfig::new("control")
            .segment("/control/", max_keys, bytes)
            .segment("/component/", max_keys, bytes)
            .segment("/incident/", max_keys, bytes)
            .logged()
    }
    /// Creates (and, with a data directory, reloads) the store.
    pub fn create(ctx: &TaskContext, max_keys: usize, bytes: usize, data_dir: Option<&Path>) -> KvResult<(Self, Vec<LoadStats>)> {
        let (store, stats) = KeyValueStore::create(ctx, &Self::config(max_keys, bytes), data_dir)?;
        Ok((Self { store }, stats))
    }
    /// Key of graph document `version`.
    pub fn graph_key(version: u64) -> String {
        format!("/control/graph/v/{version:012}")
    }
    /// Key of a component's volatile state.
    pub fn state_key(component: &str) -> KvResult<String> {
        checked(format!("/component/{component}/state"))
    }
    /// Key of a component's heartbeat.
    pub fn heartbeat_key(component: &str) -> KvResult<String> {
        checked(format!("/component/{component}/heartbeat"))
    }
    /// Key of incident `seq`.
    pub fn incident_key(seq: u64) -> String {
        format!("/incident/{seq:012}")
    }
    /// The underlying store.
    pub fn store(&self) -> &KeyValueStore {
        &self.store
    }
    /// The current graph version (0 when none was installed).
    pub fn graph_version(&self, ctx: &TaskContext) -> KvResult<u64> {
        Ok(self.store.get(ctx, GRAPH_VERSION_KEY)?.and_then(|v| v.as_u64()).unwrap_or(0))
    }
    /// Installs graph `version` and makes it current, in one task (one log append).
    pub fn install_graph(&self, ctx: &TaskContext, version: u64, graph: &Value) -> KvResult<()> {
        self.store.put_many(
            ctx,
            &[(&Self::graph_key(version), graph), (GRAPH_VERSION_KEY, &Value::from(version))],
        )
    }
    /// Graph document `version`.
    pub fn graph(&self, ctx: &TaskContext, version: u64) -> KvResult<Option<Value>> {
        self.store.get(ctx, &Self::graph_key(version))
    }
    /// Saves a component's volatile state.
    pub fn save_state(&self, ctx: &TaskContext, component: &str, state: &Value) -> KvResult<()> {
        self.store.put(ctx, &Self::state_key(component)?, state)
    }
    /// A component's saved state.
    pub fn state(&self, ctx: &TaskContext, component: &str) -> KvResult<Option<Value>> {
        self.store.get(ctx, &Self::state_key(component)?)
    }
    /// Records a heartbeat of `component` at `unix_ms`.
    pub fn heartbeat(&self, ctx: &TaskContext, component: &str, unix_ms: u64) -> KvResult<()> {
        self.store.put(ctx, &Self::heartbeat_key(component)?, &Value::from(unix_ms))
    }
}

/// Finished results per name and time bin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultStore {
    store: KeyValueStore,
}

impl ResultStore {
    /// The store's configuration.
    pub fn config(max_keys: usize, bytes: usize, max_value_bytes: usize) -> StoreConfig {
        StoreConfig::new("results")
            .segment("/results/", max_keys, bytes)
            .max_value_bytes(max_value_bytes)
    }
    /// Creates (and, with a data directory, reloads) the store.
    pub fn create(
        ctx: &TaskContext,
        max_keys: usize,
        bytes: usize,
        max_value_bytes: usize,
        data_dir: Option<&Path>,
    ) -> KvResult<(Self, Vec<LoadStats>)> {
        let (store, stats) = KeyValueStore::create(ctx, &Self::config(max_keys, bytes, max_value_bytes), data_dir)?;
        Ok((Self { store }, stats))
    }
    /// Key of result `name` at time bin `bin`.
    pub fn bin_key(name: &str, bin: u64) -> KvResult<String> {
        checked(format!("/results/{name}/{bin:012}"))
    }
    /// The underlying store.
    pub fn store(&self) -> &KeyValueStore {
        &self.store
    }
    /// Stores the value of `name` for time bin `bin`.
    pub fn put_bin(&self, ctx: &TaskContext, name: &str, bin: u64, value: &Value) -> KvResult<()> {
        self.store.put(ctx, &Self::bin_key(name, bin)?, value)
    }
    /// The value of `name` for time bin `bin`.
    pub fn bin(&self, ctx: &TaskContext, name: &str, bin: u64) -> KvResult<Option<Value>> {
        self.store.get(ctx, &Self::bin_key(name, bin)?)
    }
    /// The bins held for `name`, in order.
    pub fn bins(&self, ctx: &TaskContext, name: &str) -> KvResult<Vec<u64>> {
        let prefix = format!("/results/{name}/");
        validate_key(prefix.trim_end_matches('/'))?;
        numbered_keys(&self.store, ctx, &prefix)
    }
    /// Drops bins of `name` older than `keep_from` (results retention).
    pub fn drop_bins_before(&self, ctx: &TaskContext, name: &str, keep_from: u64) -> KvResult<usize> {
        let old: Vec<Op> = self
            .bins(ctx, name)?
            .into_iter()
            .filter(|&b| b < keep_from)
            .map(|b| Op::Delete {
                key: Self::bin_key(name, b).expect("validated"),
            })
            .collect();
        let count = old.len();
        for outcome in self.store.apply(ctx, old)? {
            if !matches!(outcome?, Outcome::Deleted(_)) {
                return Err(KvError::Layout("unexpected outcome of a delete".into()));
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_bincode_and_json_with_packed_arrays() {
        let frame = Frame {
            seq: 7,
            timestamp_ns: 123,
            fields: vec![
                ("e".into(), FieldValue::Scalar(1.5)),
                ("w".into(), FieldValue::Waveform(vec![1.0, -2.5, f64::MAX])),
                (
                    "i".into(),
                    FieldValue::Image {
                        width: 2,
                        height: 1,
                        pixels: vec![0.25, 1e-300],
                    },
                ),
            ],
        };
        let bytes = encode_bincode(&frame).unwrap();
        // Packed: the image's two values take 16 bytes plus a one-byte length.
        assert!(bytes.len() < 80, "{} bytes", bytes.len());
        assert_eq!(decode_bincode::<Frame>(&bytes).unwrap(), frame);
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(serde_json::from_str::<Frame>(&json).unwrap(), frame);
        // A byte string that is not whole f64s is refused.
        let mut broken = bytes.clone();
        broken.truncate(bytes.len() - 3);
        assert!(decode_bincode::<Frame>(&broken).is_err());
    }
}
