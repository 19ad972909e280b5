//! On-disk format of a store: one snapshot per segment, and for logged stores (Control) one
//! append-only log per segment.
//!
//! Snapshot (`<stem>.snap`): `AMI2SNAP`, version, the segment's prefix and sequence number, the
//! entries (key, codec, value), then a CRC-32 of everything before it and `SNAPEND!`. It is written
//! to `<stem>.snap.tmp`, fsynced, the current snapshot becomes `<stem>.snap.prev`, and the new one
//! is renamed into place (then the folder is fsynced). A snapshot that fails its checks is
//! reported and the previous one is used instead; nothing unverified is ever loaded.
//!
//! Log (`<stem>.log`): records `[length u32][crc32 u32][seq u64, op, codec, key, value]`, appended
//! and fsynced before a change is reported done. Replay stops at the first incomplete or damaged
//! record (a crash in the middle of an append) and says where; the loader then cuts the log there
//! ([`cut_log`]), so that new records are never appended after damage replay cannot pass. After
//! a snapshot, records already in the *previous* snapshot are dropped, and the rewritten log
//! starts with a base record naming the snapshot it continues (`seq`: the last change that
//! snapshot holds), so that a load can tell when that snapshot is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::segment::Codec;
use crate::{KvError, KvResult};

const SNAP_MAGIC: &[u8; 8] = b"AMI2SNAP";
const SNAP_END: &[u8; 8] = b"SNAPEND!";
const SNAP_VERSION: u32 = 1;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// The log's first record after a compaction: the changes up to its `seq` are in a snapshot.
const OP_BASE: u8 = 3;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KvError + '_ {
    move |source| KvError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// File name stem of a segment: its prefix made file-safe, plus a hash against collisions.
pub fn file_stem(prefix: &str) -> String {
    let readable: String = prefix
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    let hash = prefix.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    format!("{}-{hash:08x}", if readable.is_empty() { "root" } else { &readable })
}

/// The files of one segment in a store folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentFiles {
    pub snapshot: PathBuf,
    pub previous: PathBuf,
    pub log: PathBuf,
    /// Where a snapshot is written before it is renamed into place.
    pub temporary: PathBuf,
}

impl SegmentFiles {
    pub fn new(store_dir: &Path, prefix: &str) -> Self {
        let stem = file_stem(prefix);
        Self {
            snapshot: store_dir.join(format!("{stem}.snap")),
            previous: store_dir.join(format!("{stem}.snap.prev")),
            log: store_dir.join(format!("{stem}.log")),
            temporary: store_dir.join(format!("{stem}.snap.tmp")),
        }
    }
}

/// One key and its value, as stored in snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub key: String,
    pub codec: Codec,
    pub value: Vec<u8>,
}

/// A verified snapshot.
pub struct Snapshot {
    pub prefix: String,
    pub seq: u64,
    pub entries: Vec<Record>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn codec_byte(codec: Codec) -> u8 {
    match codec {
        Codec::Json => 1,
        Codec::Bincode => 2,
        Codec::Raw => 3,
    }
}

/// Reads fields off a byte slice; every read checks the length.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("a field runs past the end, at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a key is not UTF-8".to_string())
    }
    fn codec(&mut self) -> Result<Codec, String> {
        let byte = self.u8()?;
        Codec::from_byte(byte).ok_or_else(|| format!("unknown codec {byte}"))
    }
}

/// Writes a snapshot of `entries` atomically (see the module docs); returns its size in bytes.
/// `entries` is called twice (to count, then to write): the snapshot streams to the file through a
/// small buffer, however large the segment, so a periodic snapshot leaves no large allocation
/// behind.
pub fn write_snapshot<'a, I>(files: &SegmentFiles, prefix: &str, seq: u64, entries: impl Fn() -> I) -> KvResult<u64>
where
    I: Iterator<Item = (&'a str, Codec, &'a [u8])>,
{
    let dir = files.snapshot.parent().expect("snapshot files live in a folder");
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let tmp = &files.temporary;
    let written = write_snapshot_file(tmp, prefix, seq, entries).inspect_err(|_| {
        // Gives back the space of a partial file (a full disk); the next load would remove it.
        if tmp.is_file() {
            let _ = fs::remove_file(tmp);
        }
    })?;
    if files.snapshot.exists() {
        fs::rename(&files.snapshot, &files.previous).map_err(io_error(&files.previous))?;
    }
    fs::rename(tmp, &files.snapshot).map_err(io_error(&files.snapshot))?;
    sync_dir(dir)?;
    Ok(written)
}

/// Writes and fsyncs the snapshot file at `tmp`; returns its size.
fn write_snapshot_file<'a, I>(tmp: &Path, prefix: &str, seq: u64, entries: impl Fn() -> I) -> KvResult<u64>
where
    I: Iterator<Item = (&'a str, Codec, &'a [u8])>,
{
    let tmp = tmp.to_path_buf();
    let written = {
        let file = File::create(&tmp).map_err(io_error(&tmp))?;
        let mut out = ChecksummedWriter::new(BufWriter::with_capacity(1 << 16, file));
        let mut header = Vec::with_capacity(64);
        header.extend_from_slice(SNAP_MAGIC);
        header.extend_from_slice(&SNAP_VERSION.to_le_bytes());
        put_bytes(&mut header, prefix.as_bytes());
        header.extend_from_slice(&seq.to_le_bytes());
        header.extend_from_slice(&(entries().count() as u64).to_le_bytes());
        out.write(&header).map_err(io_error(&tmp))?;
        let mut entry = Vec::new();
        for (key, codec, value) in entries() {
            entry.clear();
            put_bytes(&mut entry, key.as_bytes());
            entry.push(codec_byte(codec));
            entry.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.write(&entry).map_err(io_error(&tmp))?;
            out.write(value).map_err(io_error(&tmp))?;
        }
        let crc = out.crc();
        out.write(&crc.to_le_bytes()).map_err(io_error(&tmp))?;
        out.write(SNAP_END).map_err(io_error(&tmp))?;
        let written = out.written;
        let mut file = out.inner.into_inner().map_err(|e| KvError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        crash_point_mid_snapshot(&mut file, written);
        file.sync_all().map_err(io_error(&tmp))?;
        written
    };
    Ok(written)
}

/// Removes a snapshot left half-written by a crash or a failed write (`<stem>.snap.tmp`); true if
/// there was one. It is never loaded: the rename into place is what completes a snapshot.
pub fn remove_stale_snapshot(files: &SegmentFiles) -> KvResult<bool> {
    remove_if_present(&files.temporary)
}

/// Removes `path`; true if it was there.
fn remove_if_present(path: &Path) -> KvResult<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Removes the files of a segment that holds nothing (one a store no longer has); true if there
/// were some. The order keeps a crash in the middle harmless: the log first, made durable, then
/// the snapshots (a log left without its snapshot would fail the next load, a snapshot without
/// its log loads). The bytes of damaged log tails (`<log>.damaged-*`) stay, for forensics. Only
/// for a segment known to be empty: whatever its files held is gone.
pub fn remove_segment_files(files: &SegmentFiles) -> KvResult<bool> {
    let dir = files.log.parent().unwrap_or(Path::new("."));
    let mut any = remove_if_present(&files.log)?;
    if any {
        sync_dir(dir)?;
    }
    for path in [&files.temporary, &files.previous, &files.snapshot] {
        any |= remove_if_present(path)?;
    }
    if any {
        sync_dir(dir)?;
    }
    Ok(any)
}

/// A writer that keeps the CRC-32 and length of what went through it.
struct ChecksummedWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> ChecksummedWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
            written: 0,
        }
    }
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
    fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }
}

/// Test hook: with `KV_REGION_ABORT_IN_SNAPSHOT=N` in the environment, the N-th snapshot written
/// by this process keeps only half its bytes, syncs them, and aborts the process (a crash in the
/// middle of a snapshot write). Does nothing otherwise.
fn crash_point_mid_snapshot(file: &mut File, written: u64) {
    static WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(n) = std::env::var("KV_REGION_ABORT_IN_SNAPSHOT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if WRITTEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n {
        let _ = file.set_len(written / 2);
        let _ = file.sync_all();
        eprintln!("KV_REGION_ABORT_IN_SNAPSHOT: aborting in the middle of snapshot {n}");
        std::process::abort();
    }
}

fn sync_dir(dir: &Path) -> KvResult<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Reads and verifies a snapshot file.
pub fn read_snapshot(path: &Path) -> KvResult<Snapshot> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let corrupt = |reason: String| KvError::Corrupt {
        path: path.to_path_buf(),
        what: "snapshot",
        reason,
    };
    if bytes.len() < SNAP_MAGIC.len() + 4 + 4 + SNAP_END.len() || &bytes[..8] != SNAP_MAGIC {
        return Err(corrupt("not a snapshot (bad magic or too short)".into()));
    }
    if &bytes[bytes.len() - 8..] != SNAP_END {
        return Err(corrupt("truncated (no end marker)".into()));
    }
    let body = &bytes[..bytes.len() - 12];
    let stored = u32::from_le_bytes(bytes[bytes.len() - 12..bytes.len() - 8].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != stored {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut r = Reader { bytes: body, at: 8 };
    let parse = |r: &mut Reader| -> Result<Snapshot, String> {
        let version = r.u32()?;
        if version != SNAP_VERSION {
            return Err(format!("version {version} is not {SNAP_VERSION}"));
        }
        let prefix = r.string()?;
        let seq = r.u64()?;
        let count = r.u64()?;
        let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
        for _ in 0..count {
            let key = r.string()?;
            let codec = r.codec()?;
            let value = r.bytes()?.to_vec();
            entries.push(Record { key, codec, value });
        }
        if r.at != body.len() {
            return Err(format!("{} bytes after the last entry", body.len() - r.at));
        }
        Ok(Snapshot { prefix, seq, entries })
    };
    parse(&mut r).map_err(corrupt)
}

/// One logged change.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Put(Record),
    Delete(String),
}

/// One record as stored: `[length u32][crc32 u32][payload]`.
fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes logged changes as appendable records.
pub fn encode_log_records(changes: &[(u64, Change)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (seq, change) in changes {
        let mut payload = Vec::new();
        payload.extend_from_slice(&seq.to_le_bytes());
        match change {
            Change::Put(record) => {
                payload.push(OP_PUT);
                payload.push(codec_byte(record.codec));
                put_bytes(&mut payload, record.key.as_bytes());
                put_bytes(&mut payload, &record.value);
            }
            Change::Delete(key) => {
                payload.push(OP_DELETE);
                payload.push(0);
                put_bytes(&mut payload, key.as_bytes());
                put_bytes(&mut payload, &[]);
            }
        }
        encode_record(&mut out, &payload);
    }
    out
}

/// The base record a compacted log starts with: the changes up to `seq` are in a snapshot.
fn encode_base_record(seq: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(18);
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&[OP_BASE, 0]);
    put_bytes(&mut payload, &[]);
    put_bytes(&mut payload, &[]);
    let mut out = Vec::with_capacity(26);
    encode_record(&mut out, &payload);
    out
}

/// Appends encoded records to a log and fsyncs it.
pub fn append_log(path: &Path, records: &[u8]) -> KvResult<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io_error(path))?;
    file.write_all(records).map_err(io_error(path))?;
    file.sync_data().map_err(io_error(path))
}

/// Where reading a log stopped before its end: at a damaged record.
#[derive(Clone, Debug, PartialEq)]
pub struct Damage {
    /// Where the damaged record starts (the log's intact part ends there).
    pub offset: u64,
    /// The log's length: `len - offset` bytes were not read.
    pub len: u64,
    /// What is wrong with the record.
    pub reason: String,
}

/// The intact records of a log, the snapshot it continues, and where (and why) reading stopped
/// early, if it did.
#[derive(Debug, Default)]
pub struct LogContents {
    pub changes: Vec<(u64, Change)>,
    /// The base record's `seq`, when the log starts with one (written by [`compact_log`]).
    pub base: Option<u64>,
    pub stopped: Option<Damage>,
}

impl LogContents {
    /// The last change the log does not hold, which a snapshot must hold: the base record's, or
    /// for a log without one (written before base records existed, or never compacted), the change
    /// before its first record (sequence numbers are consecutive in a log). 0: the log holds every
    /// change since the segment was new.
    pub fn continues_from(&self) -> u64 {
        match (self.base, self.changes.first()) {
            (Some(base), _) => base,
            (None, Some((first, _))) => first.saturating_sub(1),
            (None, None) => 0,
        }
    }
}

/// Reads a log; a missing file is an empty log.
pub fn read_log(path: &Path) -> KvResult<LogContents> {
    let mut contents = LogContents::default();
    let Some(mut records) = LogRecords::open(path)? else {
        return Ok(contents);
    };
    let mut first = true;
    while let Some(record) = records.next().map_err(io_error(path))? {
        match record {
            Ok(LogEntry::Base(seq)) if first => contents.base = Some(seq),
            // A base record anywhere else is not something this format writes.
            Ok(LogEntry::Base(_)) => {
                contents.stopped = Some(records.damage("a base record after the first".into()));
                break;
            }
            Ok(LogEntry::Change(seq, change)) => contents.changes.push((seq, change)),
            Err(reason) => {
                contents.stopped = Some(records.damage(reason));
                break;
            }
        }
        first = false;
    }
    Ok(contents)
}

/// Cuts a log at `offset`, the start of a damaged record, so that new records follow the last
/// intact one (after damage, a later replay would never reach them). The bytes cut off are kept
/// next to the log in `<log>.damaged-<unix time>`, whose path is returned.
pub fn cut_log(path: &Path, offset: u64) -> KvResult<PathBuf> {
    let mut input = File::open(path).map_err(io_error(path))?;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Two cuts in the same second (another damage at once) keep both.
    let kept = (0..)
        .map(|n| {
            let suffix = if n == 0 { String::new() } else { format!(".{n}") };
            path.with_file_name(format!("{name}.damaged-{since_epoch}{suffix}"))
        })
        .find(|p| !p.exists())
        .expect("a free name");
    {
        let mut out = File::create(&kept).map_err(io_error(&kept))?;
        std::io::Seek::seek(&mut input, std::io::SeekFrom::Start(offset)).map_err(io_error(path))?;
        std::io::copy(&mut input, &mut out).map_err(io_error(&kept))?;
        out.sync_all().map_err(io_error(&kept))?;
    }
    let log = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    log.set_len(offset).map_err(io_error(path))?;
    log.sync_all().map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(kept)
}

/// A record of a log.
enum LogEntry {
    Change(u64, Change),
    Base(u64),
}

/// One log record's payload: its sequence number and change (or base).
fn decode_record(payload: &[u8]) -> Result<LogEntry, String> {
    let mut p = Reader { bytes: payload, at: 0 };
    let seq = p.u64()?;
    let op = p.u8()?;
    let codec_byte = p.u8()?;
    let key = p.string()?;
    let value = p.bytes()?.to_vec();
    match op {
        OP_PUT => {
            let codec = Codec::from_byte(codec_byte).ok_or_else(|| format!("unknown codec {codec_byte}"))?;
            Ok(LogEntry::Change(seq, Change::Put(Record { key, codec, value })))
        }
        OP_DELETE => Ok(LogEntry::Change(seq, Change::Delete(key))),
        OP_BASE => Ok(LogEntry::Base(seq)),
        other => Err(format!("unknown operation {other}")),
    }
}

/// A log's records in order, read through a small buffer, so that a log of any size is read in
/// a few KiB: replay ([`read_log`]) and compaction ([`compact_log`]) see the same records and
/// stop at the same damaged one.
struct LogRecords {
    input: BufReader<File>,
    /// Length of the file, and bytes read so far.
    len: u64,
    at: u64,
    /// Where the last record returned (or the damaged one) starts.
    offset: u64,
    /// The last record as stored: its header (length, checksum) and payload.
    header: [u8; 8],
    payload: Vec<u8>,
}

impl LogRecords {
    /// Opens the log at `path`; `None` when there is none (an empty log).
    fn open(path: &Path) -> KvResult<Option<Self>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path)(e)),
        };
        let len = file.metadata().map_err(io_error(path))?.len();
        Ok(Some(Self {
            input: BufReader::with_capacity(1 << 16, file),
            len,
            at: 0,
            offset: 0,
            header: [0; 8],
            payload: Vec::new(),
        }))
    }

    /// The next record: `None` at the end of the log, `Some(Err(reason))` at a damaged record
    /// (torn, checksum mismatch, undecodable), after which the log is not read further.
    fn next(&mut self) -> std::io::Result<Option<Result<LogEntry, String>>> {
        self.offset = self.at;
        let left = self.len - self.at;
        if left == 0 {
            return Ok(None);
        }
        if left < 8 {
            return Ok(Some(Err(format!("torn: the file ends {left} bytes into its 8-byte header"))));
        }
        self.input.read_exact(&mut self.header)?;
        let len = u32::from_le_bytes(self.header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(self.header[4..].try_into().expect("4 bytes"));
        // A length past the end is a torn record: do not allocate for it.
        if len > left - 8 {
            return Ok(Some(Err(format!(
                "torn: its header announces {len} bytes, the file ends {} bytes after the header",
                left - 8
            ))));
        }
        self.payload.resize(len as usize, 0);
        self.input.read_exact(&mut self.payload)?;
        self.at += 8 + len;
        if crc32fast::hash(&self.payload) != crc {
            return Ok(Some(Err("checksum mismatch".into())));
        }
        Ok(Some(decode_record(&self.payload)))
    }

    /// The damage at the record [`Self::next`] last looked at.
    fn damage(&self, reason: String) -> Damage {
        Damage {
            offset: self.offset,
            len: self.len,
            reason,
        }
    }
}

/// Rewrites the log without the records at or below `seq` (they are in both snapshots), starting
/// with a base record for `seq`. Keeps what [`read_log`] would replay: intact records up to the
/// first damaged one, copied as stored.
pub fn compact_log(path: &Path, seq: u64) -> KvResult<()> {
    let Some(mut records) = LogRecords::open(path)? else {
        return Ok(());
    };
    let tmp = path.with_extension("log.tmp");
    {
        let mut out = BufWriter::with_capacity(1 << 16, File::create(&tmp).map_err(io_error(&tmp))?);
        out.write_all(&encode_base_record(seq)).map_err(io_error(&tmp))?;
        let mut first = true;
        while let Some(Ok(entry)) = records.next().map_err(io_error(path))? {
            match entry {
                LogEntry::Change(record_seq, _) if record_seq > seq => {
                    out.write_all(&records.header).map_err(io_error(&tmp))?;
                    out.write_all(&records.payload).map_err(io_error(&tmp))?;
                }
                LogEntry::Change(..) => {}
                // The old base is replaced; one elsewhere is damage to replay, so the end here.
                LogEntry::Base(_) if first => {}
                LogEntry::Base(_) => break,
            }
            first = false;
        }
        let file = out.into_inner().map_err(|e| KvError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_error(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kv-persist-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn snapshot_round_trip_and_previous_generation() {
        let dir = temp_dir("snap");
        let files = SegmentFiles::new(&dir, "/control/");
        write_snapshot(&files, "/control/", 3, || [("/control/a", Codec::Json, &b"1"[..])].into_iter()).unwrap();
        write_snapshot(&files, "/control/", 5, || {
            [("/control/b", Codec::Bincode, &b"\x00\x01"[..])].into_iter()
        })
        .unwrap();
        let current = read_snapshot(&files.snapshot).unwrap();
        assert_eq!((current.prefix.as_str(), current.seq), ("/control/", 5));
        assert_eq!(
            current.entries,
            vec![Record {
                key: "/control/b".into(),
                codec: Codec::Bincode,
                value: vec![0, 1]
            }]
        );
        assert_eq!(read_snapshot(&files.previous).unwrap().seq, 3);
    }

    #[test]
    fn damaged_snapshots_are_detected() {
        let dir = temp_dir("damaged");
        let files = SegmentFiles::new(&dir, "/");
        write_snapshot(&files, "/", 1, || [("/k", Codec::Json, &b"\"v\""[..])].into_iter()).unwrap();
        let good = fs::read(&files.snapshot).unwrap();
        for (what, bytes) in [
            ("truncated", good[..good.len() - 5].to_vec()),
            ("checksum", {
                let mut b = good.clone();
                b[20] ^= 0xff;
                b
            }),
            ("magic", b"garbage".to_vec()),
        ] {
            fs::write(&files.snapshot, &bytes).unwrap();
            let err = read_snapshot(&files.snapshot).err().unwrap_or_else(|| panic!("{what} accepted"));
            assert!(matches!(err, KvError::Corrupt { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn log_replay_stops_at_a_torn_record() {
        let dir = temp_dir("log");
        let path = dir.join("x.log");
        let changes = vec![
            (
                1,
                Change::Put(Record {
                    key: "/a".into(),
                    codec: Codec::Json,
                    value: b"1".to_vec(),
                }),
            ),
            (2, Change::Delete("/a".into())),
            (
                3,
                Change::Put(Record {
                    key: "/b".into(),
                    codec: Codec::Json,
                    value: b"2".to_vec(),
                }),
            ),
        ];
        append_log(&path, &encode_log_records(&changes)).unwrap();
        assert_eq!(read_log(&path).unwrap().changes, changes);
        // A torn append: half of a fourth record.
        let torn = encode_log_records(&[(4, Change::Delete("/b".into()))]);
        append_log(&path, &torn[..torn.len() / 2]).unwrap();
        let contents = read_log(&path).unwrap();
        assert_eq!(contents.changes, changes);
        assert!(contents.stopped.is_some());
        compact_log(&path, 2).unwrap();
        let compacted = read_log(&path).unwrap();
        assert_eq!(compacted.changes, changes[2..].to_vec());
        assert!(compacted.stopped.is_none());
        assert_eq!((compacted.base, compacted.continues_from()), (Some(2), 2));
    }

    #[test]
    fn a_log_cut_at_its_damage_takes_new_records_and_keeps_the_cut_bytes() {
        let dir = temp_dir("cut");
        let path = dir.join("x.log");
        let changes: Vec<(u64, Change)> = (1..=3).map(|seq| (seq, Change::Delete(format!("/k{seq}")))).collect();
        append_log(&path, &encode_log_records(&changes)).unwrap();
        let intact_len = fs::metadata(&path).unwrap().len();
        let torn = encode_log_records(&[(4, Change::Delete("/k4".into()))]);
        append_log(&path, &torn[..torn.len() - 3]).unwrap();
        let damage = read_log(&path).unwrap().stopped.expect("the torn record is found");
        assert_eq!(damage.offset, intact_len);
        assert!(damage.reason.starts_with("torn: its header announces"), "{}", damage.reason);
        let kept = cut_log(&path, damage.offset).unwrap();
        assert_eq!(fs::read(&kept).unwrap(), torn[..torn.len() - 3].to_vec());
        assert!(kept.file_name().unwrap().to_string_lossy().starts_with("x.log.damaged-"));
        // What is appended after the cut is read back.
        let next = vec![(4, Change::Delete("/k5".into()))];
        append_log(&path, &encode_log_records(&next)).unwrap();
        let contents = read_log(&path).unwrap();
        assert!(contents.stopped.is_none());
        assert_eq!(contents.changes, [changes, next].concat());
    }

    #[test]
    fn a_log_says_which_snapshot_it_continues() {
        let dir = temp_dir("base");
        let path = dir.join("b.log");
        let changes: Vec<(u64, Change)> = (1..=6).map(|seq| (seq, Change::Delete(format!("/k{seq}")))).collect();
        append_log(&path, &encode_log_records(&changes)).unwrap();
        assert_eq!(read_log(&path).unwrap().continues_from(), 0, "never compacted");
        // Compacted to nothing: only the base record tells that a snapshot holds changes 1..=6.
        compact_log(&path, 6).unwrap();
        let empty = read_log(&path).unwrap();
        assert!(empty.changes.is_empty() && empty.stopped.is_none());
        assert_eq!(empty.continues_from(), 6);
        let more: Vec<(u64, Change)> = (7..=9).map(|seq| (seq, Change::Delete(format!("/k{seq}")))).collect();
        append_log(&path, &encode_log_records(&more)).unwrap();
        compact_log(&path, 7).unwrap();
        let compacted = read_log(&path).unwrap();
        assert_eq!((compacted.base, compacted.changes.clone()), (Some(7), more[1..].to_vec()));
        // A log written before base records existed: its first record tells.
        fs::write(&path, encode_log_records(&more)).unwrap();
        assert_eq!(read_log(&path).unwrap().continues_from(), 6);
    }

    #[test]
    fn compaction_keeps_what_replay_would_replay() {
        let dir = temp_dir("compact-damaged");
        let path = dir.join("c.log");
        let changes: Vec<(u64, Change)> = (1..=5).map(|seq| (seq, Change::Delete(format!("/k{seq}")))).collect();
        let mut bytes = Vec::new();
        let mut fourth_at = 0;
        for change in &changes {
            if change.0 == 4 {
                fourth_at = bytes.len();
            }
            bytes.extend(encode_log_records(std::slice::from_ref(change)));
        }
        // Damage the fourth record's payload: replay stops there, and so must compaction.
        bytes[fourth_at + 12] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_log(&path).unwrap().changes, changes[..3].to_vec());
        compact_log(&path, 1).unwrap();
        let compacted = read_log(&path).unwrap();
        assert_eq!(compacted.changes, changes[1..3].to_vec());
        assert!(compacted.stopped.is_none());
        // A missing log stays missing.
        compact_log(&dir.join("none.log"), 1).unwrap();
        assert!(!dir.join("none.log").exists());
    }

    #[test]
    fn a_segment_s_files_are_removed_and_its_damaged_tails_kept() {
        let dir = temp_dir("remove");
        let files = SegmentFiles::new(&dir, "/component/source/3/");
        let other = SegmentFiles::new(&dir, "/component/source/1/");
        let damaged = PathBuf::from(format!("{}.damaged-1", files.log.display()));
        for path in [
            &files.snapshot,
            &files.previous,
            &files.log,
            &files.temporary,
            &damaged,
            &other.snapshot,
            &other.log,
        ] {
            fs::write(path, b"x").unwrap();
        }
        assert!(remove_segment_files(&files).unwrap());
        for path in [&files.snapshot, &files.previous, &files.log, &files.temporary] {
            assert!(!path.exists(), "{}", path.display());
        }
        assert!(damaged.exists() && other.snapshot.exists() && other.log.exists());
        assert!(!remove_segment_files(&files).unwrap(), "nothing left to remove");
        fs::remove_dir_all(&dir).unwrap();
    }
}
