//! Recordings: frames saved to a file, replayed by the [`FileDataSource`](super::FileDataSource).
//!
//! # Format (version 1)
//!
//! All integers are little-endian.
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `AMI2REC\0` (`41 4D 49 32 52 45 43 00`) |
//! | 8..12 | format version, `u32` (= 1) |
//! | 12..16 | header length `H`, `u32` |
//! | 16..16+H | header: a UTF-8 JSON object ([`RecordingHeader`]: `created_unix_ns`, `producer`, `note`) |
//! | then | records, back to back, to the end of the file |
//!
//! Each record is
//!
//! | bytes | content |
//! |---|---|
//! | 0..4 | payload length `L`, `u32` |
//! | 4..8 | CRC-32 (IEEE, as `crc32fast` computes it) of the payload, `u32` |
//! | 8..8+L | payload: one [`Frame`] in bincode 2 (serde, `config::standard()`) |
//!
//! A file that ends exactly after a record is intact. [`write_recording`] writes to a temporary
//! file next to the target (`.<name>.tmp-<pid>`), fsyncs it, renames it over the target and
//! fsyncs the directory, so a recording is either complete or absent. `ami2 record` stopped by
//! Ctrl-C (or SIGTERM) ends the recording at the frames written so far and says so.
//!
//! # Damage
//!
//! Readers never hand out garbage: a record cut short by the end of the file, a record whose CRC
//! does not match, or a payload that is not a frame ends the replay at the last intact frame. The
//! reader reports where (the byte offset of the bad record and why: [`RecordingReader::damage`],
//! [`RecordingSummary::damage`]); the file source also logs it with `tracing::warn!` and puts it in
//! [`SourceStats::note`](super::SourceStats::note). A wrong magic, an unknown version or an
//! unreadable header is an error ([`SourceError`]) when the file is opened.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{decode_frame, encode_frame, peek_header, SourceError};
use crate::event::Frame;

/// The first 8 bytes of a recording.
pub const MAGIC: [u8; 8] = *b"AMI2REC\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes before each record's payload (length and CRC).
pub const RECORD_HEADER_BYTES: u64 = 8;
/// Longest JSON header accepted (a sanity bound against reading garbage as a header).
const MAX_HEADER_BYTES: u32 = 1 << 20;

/// The JSON header of a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordingHeader {
    /// When the recording was written, in nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// What wrote it (program and version).
    pub producer: String,
    /// Free-form text.
    pub note: String,
}

impl RecordingHeader {
    /// A header stamped now, naming this crate as the producer.
    pub fn now(note: impl Into<String>) -> Self {
        RecordingHeader {
            created_unix_ns: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            producer: format!("ami-tasks {}", env!("CARGO_PKG_VERSION")),
            note: note.into(),
        }
    }
}

/// What a recording holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingSummary {
    pub path: PathBuf,
    pub header: RecordingHeader,
    /// Intact frames.
    pub frames: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_timestamp_ns: Option<u64>,
    pub last_timestamp_ns: Option<u64>,
    /// Largest encoded frame (payload bytes).
    pub max_frame_bytes: u64,
    /// Largest frame once stored in a telemetry chunk, at most (bytes), to size buffers.
    pub max_stored_frame_bytes: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Byte offset just after the last intact record (where a replay stops).
    pub end_offset: u64,
    /// Every byte of the file belongs to an intact record.
    pub intact: bool,
    /// Where and why the replay stops early, when not intact.
    pub damage: Option<String>,
}

impl std::fmt::Display for RecordingSummary {
    /// One line for people: `1000 frames (seq 0..999, 0.999 s of stream), 133.6 MB, largest
    /// frame 133.6 kB, intact`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let megabytes = |bytes: u64| bytes as f64 / 1e6;
        write!(f, "{} frames", self.frames)?;
        if let (Some(first), Some(last)) = (self.first_seq, self.last_seq) {
            write!(f, " (seq {first}..{last}")?;
            if let (Some(start), Some(end)) = (self.first_timestamp_ns, self.last_timestamp_ns) {
                write!(f, ", {:.3} s of stream", end.saturating_sub(start) as f64 / 1e9)?;
            }
            write!(f, ")")?;
        }
        write!(f, ", {:.1} MB", megabytes(self.bytes))?;
        if self.frames > 0 {
            write!(f, ", largest frame {:.1} kB", self.max_frame_bytes as f64 / 1e3)?;
        }
        match &self.damage {
            None => write!(f, ", intact"),
            Some(why) => write!(f, ", damaged: {why}"),
        }
    }
}

/// Where a recording stops being readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordDamage {
    /// Byte offset of the bad record.
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for RecordDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad record at byte {}: {}", self.offset, self.reason)
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SourceError + 'a {
    move |source| SourceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `frames` as a recording at `path` with a header stamped now, calling `progress` with
/// the number of frames written so far after each frame. Replaces `path` atomically.
pub fn write_recording(
    path: &Path,
    frames: impl Iterator<Item = Frame>,
    progress: impl FnMut(u64),
) -> Result<RecordingSummary, SourceError> {
    write_recording_with(path, &RecordingHeader::now(""), frames, progress)
}

/// [`write_recording`] with a given header.
pub fn write_recording_with(
    path: &Path,
    header: &RecordingHeader,
    frames: impl Iterator<Item = Frame>,
    progress: impl FnMut(u64),
) -> Result<RecordingSummary, SourceError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| SourceError::InvalidConfig(format!("recording path {} has no file name", path.display())))?;
    let temp = path.with_file_name(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = write_to(&temp, path, header, frames, progress);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn write_to(
    temp: &Path,
    path: &Path,
    header: &RecordingHeader,
    frames: impl Iterator<Item = Frame>,
    mut progress: impl FnMut(u64),
) -> Result<RecordingSummary, SourceError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(io_error("cannot create", temp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header_json = serde_json::to_vec(header).expect("a header is JSON");
    let mut head = Vec::with_capacity(16 + header_json.len());
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    head.extend_from_slice(&header_json);
    out.write_all(&head).map_err(io_error("cannot write", temp))?;
    let mut summary = RecordingSummary::empty(path, header.clone(), head.len() as u64, 0);
    for frame in frames {
        let payload = encode_frame(&frame)?;
        let len = u32::try_from(payload.len()).map_err(|_| SourceError::Encode {
            seq: frame.seq,
            reason: format!("{} bytes do not fit a record (at most 4 GiB)", payload.len()),
        })?;
        out.write_all(&len.to_le_bytes()).map_err(io_error("cannot write", temp))?;
        out.write_all(&crc32fast::hash(&payload).to_le_bytes())
            .map_err(io_error("cannot write", temp))?;
        out.write_all(&payload).map_err(io_error("cannot write", temp))?;
        summary.bytes += RECORD_HEADER_BYTES + payload.len() as u64;
        summary.note_frame(frame.seq, frame.timestamp_ns, frame.fields.len() as u64, payload.len() as u64);
        progress(summary.frames);
    }
    let file = out.into_inner().map_err(|e| SourceError::Io {
        what: "cannot write",
        path: temp.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_error("cannot sync", temp))?;
    drop(file);
    std::fs::rename(temp, path).map_err(io_error("cannot rename the temporary file to", path))?;
    // Make the rename itself durable; not every platform can open a directory, so best effort.
    if let Some(dir) = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    summary.end_offset = summary.bytes;
    Ok(summary)
}

impl RecordingSummary {
    /// A summary of no frames yet, for a file of `bytes` bytes whose records start at `end_offset`.
    fn empty(path: &Path, header: RecordingHeader, bytes: u64, end_offset: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            header,
            frames: 0,
            first_seq: None,
            last_seq: None,
            first_timestamp_ns: None,
            last_timestamp_ns: None,
            max_frame_bytes: 0,
            max_stored_frame_bytes: 0,
            bytes,
            end_offset,
            intact: true,
            damage: None,
        }
    }

    fn note_frame(&mut self, seq: u64, timestamp_ns: u64, fields: u64, bytes: u64) {
        self.frames += 1;
        self.max_frame_bytes = self.max_frame_bytes.max(bytes);
        self.max_stored_frame_bytes = self.max_stored_frame_bytes.max(super::stored_bytes_bound(bytes, fields));
        self.first_seq.get_or_insert(seq);
        self.first_timestamp_ns.get_or_insert(timestamp_ns);
        self.last_seq = Some(seq);
        self.last_timestamp_ns = Some(timestamp_ns);
    }
}

/// Reads the records of a recording one by one, checking each (see the [module docs](self)).
pub struct RecordingReader {
    path: PathBuf,
    file: BufReader<File>,
    header: RecordingHeader,
    data_start: u64,
    file_len: u64,
    offset: u64,
    payload: Vec<u8>,
    damage: Option<RecordDamage>,
}

impl RecordingReader {
    /// Opens a recording and checks its magic, version and header.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => SourceError::FileMissing { path: path.to_path_buf() },
            _ => SourceError::Io {
                what: "cannot open recording",
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let file_len = file.metadata().map_err(io_error("cannot stat recording", path))?.len();
        let mut file = BufReader::with_capacity(1 << 20, file);
        let bad_header = |reason: String| SourceError::BadHeader {
            path: path.to_path_buf(),
            reason,
        };
        let mut fixed = [0u8; 16];
        let got = read_up_to(&mut file, &mut fixed).map_err(io_error("cannot read recording", path))?;
        if got < 8 || fixed[..8] != MAGIC {
            return Err(SourceError::BadMagic {
                path: path.to_path_buf(),
                found: fixed[..got.min(8)].escape_ascii().to_string(),
            });
        }
        if got < 16 {
            return Err(bad_header(format!("the file ends after {got} bytes, inside the fixed header")));
        }
        let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(SourceError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: VERSION,
            });
        }
        let header_len = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if header_len > MAX_HEADER_BYTES || 16 + header_len as u64 > file_len {
            return Err(bad_header(format!(
                "header length {header_len} does not fit the file of {file_len} bytes"
            )));
        }
        let mut json = vec![0; header_len as usize];
        file.read_exact(&mut json).map_err(io_error("cannot read recording", path))?;
        let header: RecordingHeader = serde_json::from_slice(&json).map_err(|e| bad_header(format!("not a JSON header: {e}")))?;
        let data_start = 16 + header_len as u64;
        Ok(RecordingReader {
            path: path.to_path_buf(),
            file,
            header,
            data_start,
            file_len,
            offset: data_start,
            payload: Vec::new(),
            damage: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &RecordingHeader {
        &self.header
    }

    /// Byte offset of the first record.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Size of the file when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Byte offset of the next record to read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the replay stopped early, once a bad record was met.
    pub fn damage(&self) -> Option<&RecordDamage> {
        self.damage.as_ref()
    }

    /// Continues at byte `offset`, which must be a record boundary (a position this reader
    /// reported); `0` means the first record.
    pub fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        let offset = if offset == 0 { self.data_start } else { offset };
        if offset < self.data_start || offset > self.file_len {
            return Err(SourceError::BadPosition {
                path: self.path.clone(),
                offset,
                reason: format!("records are between bytes {} and {}", self.data_start, self.file_len),
            });
        }
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(io_error("cannot seek in recording", &self.path))?;
        self.offset = offset;
        self.damage = None;
        Ok(())
    }

    /// The next record's payload, checked against its CRC; `None` at the end of the intact
    /// records (see [`damage`](Self::damage) for why, if the file goes on).
    pub fn next_payload(&mut self) -> Result<Option<&[u8]>, SourceError> {
        if self.damage.is_some() || self.offset == self.file_len {
            return Ok(None);
        }
        let left = self.file_len.saturating_sub(self.offset);
        if left < RECORD_HEADER_BYTES {
            return Ok(self.stop(format!("the file ends {left} bytes into the record header")));
        }
        let mut head = [0u8; RECORD_HEADER_BYTES as usize];
        self.file
            .read_exact(&mut head)
            .map_err(io_error("cannot read recording", &self.path))?;
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        // Check the length against the file before allocating: a corrupt length must not
        // make us read (or allocate) garbage.
        if len > left - RECORD_HEADER_BYTES {
            return Ok(self.stop(format!(
                "a record of {len} bytes runs past the end of the file ({} bytes left)",
                left - RECORD_HEADER_BYTES
            )));
        }
        self.payload.resize(len as usize, 0);
        self.file
            .read_exact(&mut self.payload)
            .map_err(io_error("cannot read recording", &self.path))?;
        if crc32fast::hash(&self.payload) != crc {
            return Ok(self.stop("checksum mismatch".into()));
        }
        self.offset += RECORD_HEADER_BYTES + len;
        Ok(Some(&self.payload))
    }

    /// The next intact frame; `None` at the end of the intact records.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let start = self.offset;
        let Some(payload) = self.next_payload()? else { return Ok(None) };
        match decode_frame(payload) {
            Ok(frame) => Ok(Some(frame)),
            Err(reason) => Ok(self.reject(start, format!("the payload is not a frame: {reason}"))),
        }
    }

    /// Marks the replay as stopped at the current record.
    fn stop<T>(&mut self, reason: String) -> Option<T> {
        self.damage = Some(RecordDamage {
            offset: self.offset,
            reason,
        });
        None
    }

    /// Marks the replay as stopped at the record at `start`, just returned by
    /// [`next_payload`](Self::next_payload) but found not to be a frame.
    pub(crate) fn reject<T>(&mut self, start: u64, reason: String) -> Option<T> {
        self.offset = start;
        self.stop(reason)
    }
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Scans a recording: frame count, first and last sequence numbers and time stamps, and whether
/// it is intact or where it stops being readable. Checks every record's CRC (does not decode the
/// frames' values).
pub fn recording_info(path: &Path) -> Result<RecordingSummary, SourceError> {
    let mut reader = RecordingReader::open(path)?;
    let mut summary = RecordingSummary::empty(path, reader.header.clone(), reader.file_len, reader.data_start);
    loop {
        let start = reader.offset();
        let Some(payload) = reader.next_payload()? else { break };
        match peek_header(payload) {
            Some((seq, timestamp_ns, fields)) => summary.note_frame(seq, timestamp_ns, fields, payload.len() as u64),
            None => {
                reader.reject::<()>(start, "the payload is not a frame".into());
                break;
            }
        }
        summary.end_offset = reader.offset();
    }
    if let Some(damage) = reader.damage() {
        summary.intact = false;
        summary.damage = Some(format!("{damage} (after {} intact frames)", summary.frames));
    }
    Ok(summary)
}
