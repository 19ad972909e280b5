//! The file source: replays a recording (format in [`recording`](super::recording)).
//!
//! Every partition reads the whole file and keeps the frames with `seq % P == p`; other
//! partitions' records are skipped after their CRC check, reading only their sequence number
//! (the values are decoded only for the frames this partition keeps).
//!
//! With `realtime: false` the replay goes as fast as possible. With `realtime: true` it paces by
//! the frames' time stamps: a frame is delivered no earlier than `start + (timestamp -
//! first_timestamp)`, where `start` is when the process's first partition of this run read its
//! first record and `first_timestamp` that record's time stamp (time stamps that go backwards are
//! delivered at once). In the pipeline the partitions of a process share that clock
//! ([`PacingClock`]).
//!
//! [`SourcePosition::offset`] is the byte offset of the next record to read and `next_seq` is one
//! past the last frame delivered; reopening from a position seeks to the offset, so nothing is
//! delivered twice or skipped. A frame read but held back by the pacing is not counted as read:
//! the position stays at its record.
//!
//! A replay continued at the end of the file (a recording already replayed to its end with the
//! same data directory) delivers nothing and says so with a warning.
//!
//! A damaged recording (truncated, or a record failing its CRC) ends the replay at the last
//! intact frame; the source logs where with `tracing::warn!` and says it in
//! [`SourceStats::note`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::recording::RecordingReader;
use super::{
    check_partition, decode_frame, is_mine, peek_seq_timestamp, Batch, DataSource, PacingClock, SourceError, SourcePosition, SourceStats,
};
use crate::event::Frame;

/// A frame read from the file but not delivered yet (held back by the pacing).
struct Pending {
    frame: Frame,
    /// Where its record starts: the position while it is held.
    offset: u64,
}

/// Replays a recording for one partition (see the [module docs](self)).
pub struct FileDataSource {
    path: PathBuf,
    reader: RecordingReader,
    partition: usize,
    partitions: usize,
    realtime: bool,
    /// The pacing reference: wall clock and time stamp of the first record read, shared with the
    /// stream's other partitions once the pipeline asks ([`DataSource::share_pacing`]).
    clock: PacingClock,
    pending: Option<Pending>,
    next_seq: u64,
    delivered: u64,
    /// Where this run started and the records it read (all partitions'), for the damage report.
    start_offset: u64,
    records_read: u64,
    ended: bool,
    note: Option<String>,
    /// How late the newest frame of the last batch was, when paced ([`SourceStats::behind_ms`]).
    behind: Option<Duration>,
}

impl FileDataSource {
    /// Opens `path` for partition `partition` of `partitions`, continuing from `from` when given.
    pub fn open(
        path: &Path,
        realtime: bool,
        partition: usize,
        partitions: usize,
        from: Option<&SourcePosition>,
    ) -> Result<Self, SourceError> {
        check_partition(partition, partitions)?;
        let mut reader = RecordingReader::open(path)?;
        let created = reader.header().created_unix_ns;
        // A position saved in another recording of the same name (a file recorded again) means
        // nothing in this one: it is replayed from its start.
        let from = from.filter(|from| match from.stream {
            Some(stream) if stream != created => {
                tracing::warn!(
                    component = "source",
                    partition,
                    path = %path.display(),
                    "this recording is not the one the saved position is in (made at {}, not {}): replaying it from its start",
                    unix_ns_text(created),
                    unix_ns_text(stream)
                );
                false
            }
            _ => true,
        });
        if let Some(from) = from {
            reader.seek(from.offset)?;
        }
        // A replay continued at the end of the file has nothing left: say so, rather than a run
        // that ends at once with no events and no reason.
        let note = (from.is_some() && reader.offset() == reader.file_len()).then(|| {
            format!(
                "recording {} was already replayed to its end (the saved position is at its last byte): nothing is left to replay; a data directory without this position replays it again",
                path.display()
            )
        });
        if let Some(note) = &note {
            tracing::warn!(component = "data_source", partition, "{note}");
        }
        Ok(FileDataSource {
            path: path.to_path_buf(),
            start_offset: reader.offset(),
            reader,
            partition,
            partitions,
            realtime,
            clock: PacingClock::default(),
            pending: None,
            next_seq: from.map_or(0, |f| f.next_seq),
            delivered: 0,
            records_read: 0,
            ended: false,
            note,
            behind: None,
        })
    }

    /// The next frame of this partition, or `None` at the end of the intact records.
    fn read_mine(&mut self) -> Result<Option<Pending>, SourceError> {
        loop {
            let offset = self.reader.offset();
            let Some(payload) = self.reader.next_payload()? else {
                self.finish();
                return Ok(None);
            };
            self.records_read += 1;
            let Some((seq, timestamp_ns)) = peek_seq_timestamp(payload) else {
                self.reader.reject::<()>(offset, "the payload is not a frame".into());
                self.finish();
                return Ok(None);
            };
            self.clock.get_or_init(|| (Instant::now(), timestamp_ns));
            if !is_mine(seq, self.partition, self.partitions) {
                continue;
            }
            match decode_frame(payload) {
                Ok(frame) => return Ok(Some(Pending { frame, offset })),
                Err(reason) => {
                    self.reader.reject::<()>(offset, format!("the payload is not a frame: {reason}"));
                    self.finish();
                    return Ok(None);
                }
            }
        }
    }

    /// The end of the intact records: note damage, if any.
    fn finish(&mut self) {
        self.ended = true;
        if let Some(damage) = self.reader.damage() {
            let note = format!(
                "recording {} stops early: {damage}; replayed {} records from byte {} ({} frames delivered by this partition)",
                self.path.display(),
                self.records_read,
                self.start_offset,
                self.delivered,
            );
            if self.note.as_ref() != Some(&note) {
                tracing::warn!(component = "data_source", partition = self.partition, "{note}");
                self.note = Some(note);
            }
        }
    }

    /// When `timestamp_ns` is due on the wall clock.
    fn due(&self, timestamp_ns: u64) -> Instant {
        match self.clock.get() {
            Some(&(start, first)) if self.realtime => start + Duration::from_nanos(timestamp_ns.saturating_sub(first)),
            _ => Instant::now(),
        }
    }
}

impl DataSource for FileDataSource {
    fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Batch, SourceError> {
        let begin = Instant::now();
        let deadline = begin.checked_add(timeout).unwrap_or(begin + Duration::from_secs(86_400));
        let mut frames = Vec::new();
        while frames.len() < max {
            let next = match self.pending.take() {
                Some(pending) => pending,
                None if self.ended => break,
                None => match self.read_mine()? {
                    Some(pending) => pending,
                    None => break,
                },
            };
            if self.realtime {
                let due = self.due(next.frame.timestamp_ns);
                let now = Instant::now();
                if due > now {
                    if !frames.is_empty() || due > deadline {
                        self.pending = Some(next);
                        if frames.is_empty() {
                            std::thread::sleep(deadline.saturating_duration_since(now));
                        }
                        break;
                    }
                    std::thread::sleep(due - now);
                }
            }
            self.next_seq = next.frame.seq.saturating_add(1);
            self.delivered += 1;
            frames.push(next.frame);
            if Instant::now() >= deadline {
                break;
            }
        }
        let ended = frames.is_empty() && self.ended && self.pending.is_none();
        if self.realtime {
            let newest = frames.last().map(|f| self.due(f.timestamp_ns));
            self.behind = Some(newest.map_or(Duration::ZERO, |due| due.elapsed()));
        }
        Ok(Batch { frames, ended })
    }

    fn share_pacing(&mut self, clock: PacingClock) {
        self.clock = clock;
    }

    fn position(&self) -> SourcePosition {
        let offset = self.pending.as_ref().map_or(self.reader.offset(), |p| p.offset);
        SourcePosition {
            next_seq: self.next_seq,
            offset,
            stream: Some(self.reader.header().created_unix_ns),
            delivered_before: Vec::new(),
        }
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            frames: self.delivered,
            note: self.note.clone(),
            behind_ms: self.behind.map(super::behind_ms),
            ..SourceStats::default()
        }
    }
}

/// A Unix time in nanoseconds as an RFC 3339 date, for messages.
fn unix_ns_text(ns: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
}
