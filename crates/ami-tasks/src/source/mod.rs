//! Data sources: where the pipeline's events come from.
//!
//! A data source is run by one Legion task per telemetry partition. Each round the task has its
//! source write a batch into the Telemetry store ([`DataSource::write_batch`]: by default the
//! frames of [`DataSource::next_batch`], copied in; the synthetic source generates its values in
//! place) and saves the source's [`SourcePosition`] in the Control store. After a crash the source is reopened
//! with [`open`] from that saved position and continues exactly there: it never goes backwards and
//! never skips what it had not delivered.
//!
//! Sequence numbers are global: with `P` partitions, partition `p` delivers exactly the frames
//! with `seq % P == p`, so the same input gives the same events whatever the partition count.
//!
//! A service started with another partition count than the one its positions were saved with
//! continues without losing or repeating a frame: the driver converts the saved positions
//! ([`resume::convert_positions`]) and each new partition skips the frames the old ones had
//! already delivered ([`SkipDelivered`], see [`resume`]).
//!
//! Three sources are built in, chosen by [`SourceConfig`]:
//!
//! | source | config | what it reads | [`SourcePosition::offset`] |
//! |---|---|---|---|
//! | [`SyntheticDataSource`] ([`synthetic`]) | `Synthetic` | generated frames, deterministic from a seed | unused (0) |
//! | [`FileDataSource`] ([`file`](mod@file)) | `File` | a recording written by [`write_recording`] ([`recording`]) | byte offset of the next record |
//! | [`SharedMemoryDataSource`] ([`shm`]) | `SharedMemory` | a ring in `/dev/shm` filled by a [`ShmProducer`] | index of the next ring slot |
//!
//! # Your own source
//!
//! Anything that implements [`DataSource`] can feed the pipeline: deliver the frames of your
//! partition (`seq % partitions == partition`) in sequence order, never block longer than the
//! timeout you are given, report a [`SourcePosition`] from which a reopened source continues
//! without gaps or repeats, and signal the end with an empty batch whose `ended` is true.
//!
//! For a change of the partition count to lose and repeat nothing, positions must mean what the
//! built-in sources' do: every frame of the partition below `next_seq` has been delivered, and so
//! has every frame of the partition before `offset`; and a source opened at an `offset` no
//! further on in the same `stream`, for any partition, delivers that partition's frames from there
//! in sequence order. The driver gives each new partition the smallest offset of the old ones
//! ([`resume`]). Open your source from that position without its
//! [`delivered_before`](SourcePosition::delivered_before) and put [`SkipDelivered::wrap`] around
//! it, as [`open`] does for the built-in ones: the frames delivered under the earlier count are
//! dropped there, and your source needs to know nothing of them.
//!
//! # Batches and the end of a source
//!
//! [`DataSource::next_batch`] waits until at least one frame is ready, the source has ended, or
//! the timeout has passed. The built-in sources set [`Batch::ended`] only on a batch *without*
//! frames, so a caller may stop at the first `ended` batch without losing frames; an empty batch
//! with `ended == false` only means "nothing yet, ask again".

pub mod file;
pub mod recording;
pub mod resume;
pub mod shm;
pub mod synthetic;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::event::Frame;
use crate::frame_chunk::{self, FieldSpec, FrameMut};

pub use file::FileDataSource;
pub use recording::{recording_info, write_recording, write_recording_with, RecordingHeader, RecordingReader, RecordingSummary};
pub use resume::{EarlierLayout, SkipDelivered};
pub use shm::{SharedMemoryDataSource, ShmProducer};
pub use synthetic::{Dtype, ImageSpec, SyntheticConfig, SyntheticDataSource, SyntheticGenerator, WaveformSpec};

/// A stream of frames for one partition.
pub trait DataSource: Send {
    /// Waits until frames are available (or the source has ended) and returns up to `max` frames
    /// of this partition, in sequence order. Never waits longer than `timeout`: when nothing came
    /// in time it returns an empty batch with `ended == false`. An empty batch with `ended == true`
    /// means the source has ended (end of a recording, or a synthetic source with a frame limit).
    fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Batch, SourceError>;
    /// Where the source is: saved in the control store so a restart continues from there.
    fn position(&self) -> SourcePosition;
    /// Counters for operators.
    fn stats(&self) -> SourceStats;

    /// Writes up to `max` frames straight into `sink` (the telemetry buffer of the source's
    /// partition), with the same waiting rules as [`next_batch`](Self::next_batch). The default
    /// copies the frames of `next_batch`; a source that makes its frames (the synthetic one)
    /// writes their values in place instead, with no intermediate frame.
    fn write_batch(&mut self, max: usize, timeout: Duration, sink: &mut dyn FrameSink) -> Result<Written, SourceError> {
        let batch = self.next_batch(max, timeout)?;
        copy_batch(sink, &batch)
    }

    /// Paces by `clock`, which the stream's other partitions in this process share, instead of a
    /// clock of its own (see [`PacingClock`]). Sources that do not pace ignore it.
    fn share_pacing(&mut self, _clock: PacingClock) {}
}

/// Where a paced stream began: the instant its first partition (in this process) asked for
/// frames, and the place in the stream it asked from (a time stamp or a sequence number, as the
/// source paces). Shared by the partitions, so that one that starts later or is retried is behind
/// the stream and catches up; with a clock of its own it would trail the others for good, and by
/// more than a bin waits for it (a loaded machine) its partials came late.
pub type PacingClock = Arc<OnceLock<(Instant, u64)>>;

/// Where a data source's task puts frames: chunks of the telemetry store, written in place
/// (layout: [`frame_chunk`]).
pub trait FrameSink {
    /// Appends a frame with `fields` (scalars included) and returns it to fill its arrays.
    fn frame(&mut self, seq: u64, timestamp_ns: u64, fields: &[FieldSpec<'_>]) -> Result<FrameMut<'_>, SourceError>;

    /// Whether the next frame's large arrays are better written with streaming stores
    /// ([`legion_bridge::streaming`]): the frames before it in this batch have taken the batch's
    /// share of the caches, so it would be evicted before it is read. A hint; the values are the
    /// same.
    fn streaming(&self) -> bool {
        false
    }
}

/// A chunk being written is a sink on its own (no store around it): what benchmarks and tests use
/// to run a source's code without the runtime.
impl FrameSink for frame_chunk::ChunkWriter<'_> {
    fn frame(&mut self, seq: u64, timestamp_ns: u64, fields: &[FieldSpec<'_>]) -> Result<FrameMut<'_>, SourceError> {
        let (need, room) = (frame_chunk::frame_bytes(fields), self.remaining());
        self.push(seq, timestamp_ns, fields).ok_or_else(|| SourceError::Sink {
            seq,
            reason: format!("a frame of {need} bytes does not fit the {room} bytes left in its chunk"),
        })
    }
}

/// Appends a copy of an owned frame to `sink`.
pub fn copy_frame(sink: &mut dyn FrameSink, frame: &Frame) -> Result<(), SourceError> {
    let specs = FieldSpec::list(frame);
    frame_chunk::fill_from(&mut sink.frame(frame.seq, frame.timestamp_ns, &specs)?, frame);
    Ok(())
}

/// Appends copies of a batch's frames to `sink` (what [`DataSource::write_batch`] does by default).
pub fn copy_batch(sink: &mut dyn FrameSink, batch: &Batch) -> Result<Written, SourceError> {
    for frame in &batch.frames {
        copy_frame(sink, frame)?;
    }
    Ok(Written {
        frames: batch.frames.len(),
        max_timestamp_ns: batch.frames.iter().map(|f| f.timestamp_ns).max(),
        ended: batch.ended,
    })
}

/// What [`DataSource::write_batch`] wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Written {
    pub frames: usize,
    /// Largest time stamp written.
    pub max_timestamp_ns: Option<u64>,
    /// Same meaning as [`Batch::ended`].
    pub ended: bool,
}

/// Frames delivered by one [`DataSource::next_batch`] call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub frames: Vec<Frame>,
    /// The source has ended: no frame will ever come again.
    pub ended: bool,
}

/// Where a source is; a source reopened from it continues there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The next global sequence number this partition expects to deliver (for recordings and rings
    /// it is one past the last delivered frame).
    pub next_seq: u64,
    /// Byte offset of the next record in a recording, index of the next slot in a shared-memory
    /// ring, unused (0) for the synthetic source.
    pub offset: u64,
    /// Which stream the position is in, where the same name can hold another one: a recording's
    /// creation time (`RecordingHeader::created_unix_ns`), a shared-memory ring's producer
    /// epoch. A source does not continue from a position in another stream. `None` for the
    /// synthetic source, and in positions saved before it existed.
    #[serde(default)]
    pub stream: Option<u64>,
    /// Frames the partitions of an earlier count delivered already, which this partition may come
    /// across again (set by [`resume::convert_positions`] when the partition count changed):
    /// skipped by [`SkipDelivered`], and gone from the position once the partition's frames have
    /// passed them. Empty otherwise, and in positions saved before it existed. (Always written:
    /// positions also travel in bincode, which cannot skip a field.)
    #[serde(default)]
    pub delivered_before: Vec<EarlierLayout>,
}

impl SourcePosition {
    /// The position as the source itself continues from it: without
    /// [`delivered_before`](Self::delivered_before), which [`SkipDelivered`] takes care of.
    pub fn without_delivered_before(&self) -> SourcePosition {
        SourcePosition {
            delivered_before: Vec::new(),
            ..self.clone()
        }
    }
}

/// Counters of a source, for operators.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    /// Frames delivered by this partition since the source was opened.
    pub frames: u64,
    /// Times a shared-memory producer lapped this consumer (frames were lost).
    pub overruns: u64,
    /// Times a shared-memory producer restarted under this consumer.
    pub producer_restarts: u64,
    /// Anything an operator should know (a damaged recording, lost slots, ...).
    pub note: Option<String>,
    /// How late the newest frame of the last batch was, on the stream's clock (ms): about 0
    /// while the source keeps up with its stream, growing while events come faster than the
    /// pipeline takes them. `None` for a stream without a clock (a synthetic stream or a
    /// replay as fast as possible, a ring whose time stamps are not the wall clock).
    pub behind_ms: Option<u64>,
}

/// [`SourceStats::behind_ms`] of `late`.
pub fn behind_ms(late: Duration) -> u64 {
    late.as_millis().min(u64::MAX as u128) as u64
}

/// Which source to open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SourceConfig {
    /// Generated frames ([`SyntheticDataSource`]).
    Synthetic(SyntheticConfig),
    /// A recording ([`FileDataSource`]); `realtime` paces the replay by the frames' time stamps.
    File { path: PathBuf, realtime: bool },
    /// The shared-memory ring `/dev/shm/<name>` ([`SharedMemoryDataSource`]).
    SharedMemory { name: String },
}

/// Errors of the data sources, recordings and the shared-memory ring.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid partition {partition} of {partitions} (need partitions >= 1 and partition < partitions)")]
    InvalidPartition { partition: usize, partitions: usize },
    #[error("invalid source configuration: {0}")]
    InvalidConfig(String),
    #[error("recording {} does not exist", path.display())]
    FileMissing { path: PathBuf },
    #[error("{} is not an ami2 recording (starts with {found}, expected \"AMI2REC\\0\")", path.display())]
    BadMagic { path: PathBuf, found: String },
    #[error("recording {} has format version {found}; this build reads version {supported}", path.display())]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("recording {}: bad header: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },
    #[error("cannot continue recording {} at byte {offset}: {reason}", path.display())]
    BadPosition { path: PathBuf, offset: u64, reason: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode frame {seq}: {reason}")]
    Encode { seq: u64, reason: String },
    #[error("shared-memory ring {name:?} does not exist ({}); is the producer running?", path.display())]
    ShmMissing { name: String, path: PathBuf },
    #[error("shared-memory ring {name:?} has a producer already (another process writes it): one producer per ring; stop that one first, or name this ring otherwise")]
    ShmHasProducer { name: String },
    #[error("invalid shared-memory name {name:?}: {reason}")]
    ShmName { name: String, reason: String },
    #[error("shared-memory ring {name:?}: bad header: {reason}")]
    ShmBadHeader { name: String, reason: String },
    #[error("shared-memory ring {name:?} has layout version {found}; this build reads version {supported}")]
    ShmVersion { name: String, found: u32, supported: u32 },
    #[error("cannot store frame {seq} in the telemetry buffer: {reason}")]
    Sink { seq: u64, reason: String },
    #[error("frame {seq} is {bytes} bytes encoded, larger than the ring's slots of {slot_bytes} bytes")]
    FrameTooLarge { seq: u64, bytes: usize, slot_bytes: usize },
}

impl SourceError {
    /// The file given as a recording is missing or is not a recording this build can read (its
    /// magic, version or header): opening it again would fail the same way.
    pub fn is_unusable_recording(&self) -> bool {
        matches!(
            self,
            SourceError::FileMissing { .. }
                | SourceError::BadMagic { .. }
                | SourceError::UnsupportedVersion { .. }
                | SourceError::BadHeader { .. }
        )
    }
}

/// Opens the source for `partition` of `partitions`, continuing from `from` when given. A
/// position converted to a new partition count is opened without its
/// [`delivered_before`](SourcePosition::delivered_before), and the source put in a
/// [`SkipDelivered`] that drops those frames.
pub fn open(
    config: &SourceConfig,
    partition: usize,
    partitions: usize,
    from: Option<&SourcePosition>,
) -> Result<Box<dyn DataSource>, SourceError> {
    check_partition(partition, partitions)?;
    let base = from.map(SourcePosition::without_delivered_before);
    let base = base.as_ref();
    let source: Box<dyn DataSource> = match config {
        SourceConfig::Synthetic(synthetic) => Box::new(SyntheticDataSource::open(synthetic, partition, partitions, base)?),
        SourceConfig::File { path, realtime } => Box::new(FileDataSource::open(path, *realtime, partition, partitions, base)?),
        SourceConfig::SharedMemory { name } => Box::new(SharedMemoryDataSource::open(name, partition, partitions, base)?),
    };
    Ok(SkipDelivered::wrap(source, from))
}

/// A frame of the stream as a fresh reader of the whole stream gets it first, within `wait`: to
/// learn the fields and shapes the frames have before a run (the built-in graph is fitted to
/// them). `None` when none came in time (an empty shared-memory ring) or the stream is empty.
pub fn sample_frame(config: &SourceConfig, wait: Duration) -> Result<Option<Frame>, SourceError> {
    let mut source = open(config, 0, 1, None)?;
    Ok(source.next_batch(1, wait)?.frames.into_iter().next())
}

/// The largest encoded frame (bincode bytes) the source will deliver, to size telemetry buffers:
/// exact for a synthetic source (its frames all have the same shape; a margin covers the
/// growing sequence numbers and time stamps), the largest record of a recording, and the slot
/// capacity of a shared-memory ring (which must exist).
pub fn max_frame_bytes(config: &SourceConfig) -> Result<u64, SourceError> {
    Ok(match config {
        // Every synthetic frame has the shapes of frame 0.
        SourceConfig::Synthetic(synthetic) => {
            frame_chunk::frame_bytes(&FieldSpec::list(&SyntheticGenerator::new(synthetic)?.frame(0))) as u64
        }
        SourceConfig::File { path, .. } => recording_info(path)?.max_stored_frame_bytes,
        SourceConfig::SharedMemory { name } => {
            stored_bytes_bound(SharedMemoryDataSource::open(name, 0, 1, None)?.slot_bytes(), SHM_FIELDS_BOUND)
        }
    })
}

/// Fields a frame of a shared-memory ring is assumed to have at most, to size telemetry buffers
/// (the ring's slots give the bytes of a frame, not its fields); a frame with more may not fit.
pub const SHM_FIELDS_BOUND: u64 = 1024;

/// Bytes a frame takes in a telemetry chunk ([`frame_chunk`]), at most, when its bincode
/// encoding takes `encoded` bytes and it has `fields` fields: a field costs at least 3 bytes
/// encoded (name length, variant, value) and at most 30 more in a chunk (entry, name padding);
/// a chunk's frame header adds at most 32.
pub fn stored_bytes_bound(encoded: u64, fields: u64) -> u64 {
    encoded + 30 * fields.min(encoded / 3) + 32
}

pub(crate) fn check_partition(partition: usize, partitions: usize) -> Result<(), SourceError> {
    if partitions == 0 || partition >= partitions {
        return Err(SourceError::InvalidPartition { partition, partitions });
    }
    Ok(())
}

/// Whether global sequence number `seq` belongs to `partition` of `partitions`.
pub(crate) fn is_mine(seq: u64, partition: usize, partitions: usize) -> bool {
    seq % partitions as u64 == partition as u64
}

/// The first sequence number at or after `seq` that belongs to `partition` of `partitions`.
pub(crate) fn first_of_partition(seq: u64, partition: u64, partitions: u64) -> u64 {
    seq.saturating_add((partition + partitions - seq % partitions) % partitions)
}

/// Sequence number, time stamp and field count of an encoded frame, without decoding its values:
/// bincode writes a struct's fields in order, so they are the first three varints of the payload
/// (the field list starts with its length).
pub(crate) fn peek_header(payload: &[u8]) -> Option<(u64, u64, u64)> {
    bincode::serde::decode_from_slice::<(u64, u64, u64), _>(payload, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

/// Sequence number and time stamp of an encoded frame (the first two varints, see
/// [`peek_header`]). Sources that share their input between partitions use it to skip other
/// partitions' frames cheaply.
pub(crate) fn peek_seq_timestamp(payload: &[u8]) -> Option<(u64, u64)> {
    bincode::serde::decode_from_slice::<(u64, u64), _>(payload, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

pub(crate) fn encode_frame(frame: &Frame) -> Result<Vec<u8>, SourceError> {
    bincode::serde::encode_to_vec(frame, bincode::config::standard()).map_err(|e| SourceError::Encode {
        seq: frame.seq,
        reason: e.to_string(),
    })
}

pub(crate) fn decode_frame(payload: &[u8]) -> Result<Frame, String> {
    match bincode::serde::decode_from_slice::<Frame, _>(payload, bincode::config::standard()) {
        Ok((frame, used)) if used == payload.len() => Ok(frame),
        Ok((_, used)) => Err(format!("{} trailing bytes after the frame", payload.len() - used)),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldValue;

    #[test]
    fn peeks_seq_and_timestamp_of_an_encoded_frame() {
        let frame = Frame {
            seq: 123_456_789,
            timestamp_ns: 42,
            fields: vec![("x".into(), FieldValue::Waveform(vec![1.0; 10]))],
        };
        let bytes = encode_frame(&frame).unwrap();
        assert_eq!(peek_seq_timestamp(&bytes), Some((123_456_789, 42)));
        assert_eq!(decode_frame(&bytes).unwrap(), frame);
        assert!(decode_frame(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_chunk_writer_takes_frames_until_it_is_full() {
        let generator = SyntheticGenerator::new(&SyntheticConfig::default()).unwrap();
        let one = frame_chunk::frame_bytes(&FieldSpec::list(&generator.frame(0)));
        // Room for two frames and a half.
        let mut bytes = vec![0u8; frame_chunk::CHUNK_OVERHEAD + one * 5 / 2];
        let mut writer = frame_chunk::ChunkWriter::new(&mut bytes).unwrap();
        generator.write_frame(7, &mut writer).unwrap();
        generator.write_frame(8, &mut writer).unwrap();
        let err = generator.write_frame(9, &mut writer).unwrap_err();
        assert!(
            matches!(&err, SourceError::Sink { seq: 9, reason } if reason.contains("does not fit")),
            "{err}"
        );
        // The refused frame left the two before it whole.
        let len = writer.len();
        let frames: Vec<Frame> = frame_chunk::ChunkReader::new(&bytes[..len])
            .unwrap()
            .frames()
            .map(|f| f.unwrap().to_frame())
            .collect();
        assert_eq!(frames, vec![generator.frame(7), generator.frame(8)]);
    }

    #[test]
    fn max_frame_bytes_of_a_synthetic_source() {
        let config = SyntheticConfig::default();
        let generator = SyntheticGenerator::new(&config).unwrap();
        let bound = max_frame_bytes(&SourceConfig::Synthetic(config)).unwrap();
        for seq in [0, 1000, u64::MAX / 1_000_000_000] {
            // Exact: every frame has the shapes of frame 0, stored at the same size.
            let frame = generator.frame(seq);
            assert_eq!(frame_chunk::frame_bytes(&FieldSpec::list(&frame)) as u64, bound);
            // The bound for encoded frames holds it too.
            let encoded = encode_frame(&frame).unwrap().len() as u64;
            assert!(stored_bytes_bound(encoded, frame.fields.len() as u64) >= bound);
        }
    }

    #[test]
    fn a_sample_frame_has_the_shapes_of_the_stream() {
        // A synthetic source's first frame, pacing or not (a live stream waits for its time).
        let config = SyntheticConfig {
            rate_hz: Some(1000.0),
            live: true,
            ..SyntheticConfig::default()
        };
        let frame = sample_frame(&SourceConfig::Synthetic(config.clone()), Duration::from_secs(5)).unwrap();
        let first = SyntheticGenerator::new(&config).unwrap().frame(0);
        let shapes = |f: &Frame| {
            let shape = |v: &FieldValue| match v {
                FieldValue::Scalar(_) => (0, 0),
                FieldValue::Waveform(samples) => (samples.len(), 1),
                FieldValue::Image { width, height, .. } => (*width as usize, *height as usize),
            };
            f.fields.iter().map(|(n, v)| (n.clone(), shape(v))).collect::<Vec<_>>()
        };
        assert_eq!(frame.as_ref().map(shapes), Some(shapes(&first)));
        // An empty synthetic stream has none.
        let empty = SyntheticConfig {
            frames: Some(0),
            ..SyntheticConfig::default()
        };
        assert_eq!(
            sample_frame(&SourceConfig::Synthetic(empty), Duration::from_millis(10)).unwrap(),
            None
        );
        // A missing recording is an error, not a guess.
        let missing = SourceConfig::File {
            path: "/nonexistent/ami2.rec".into(),
            realtime: false,
        };
        assert!(matches!(
            sample_frame(&missing, Duration::ZERO),
            Err(SourceError::FileMissing { .. })
        ));
    }

    #[test]
    fn rejects_bad_partitions() {
        let config = SourceConfig::Synthetic(SyntheticConfig::scalars_only());
        assert!(matches!(open(&config, 0, 0, None), Err(SourceError::InvalidPartition { .. })));
        assert!(matches!(open(&config, 4, 4, None), Err(SourceError::InvalidPartition { .. })));
        assert!(open(&config, 3, 4, None).is_ok());
    }

    #[test]
    fn config_is_json() {
        let config = SourceConfig::File {
            path: "/data/run1.rec".into(),
            realtime: true,
        };
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<SourceConfig>(&text).unwrap(), config);
        let partial: SourceConfig = serde_json::from_str(r#"{"Synthetic": {"seed": 7, "frames": 10}}"#).unwrap();
        let SourceConfig::Synthetic(synthetic) = partial else {
            panic!("not synthetic")
        };
        assert_eq!(synthetic.seed, 7);
        assert_eq!(synthetic.frames, Some(10));
        assert_eq!(synthetic.scalars, SyntheticConfig::default().scalars);
    }
}
