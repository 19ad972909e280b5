//! The shared-memory source: frames from a live producer (a DAQ) through a ring in POSIX shared
//! memory.
//!
//! The ring is the file `/dev/shm/<name>` — what `shm_open(name)` creates — accessed with
//! positioned reads and writes (`pread`/`pwrite`, [`FileExt`]) rather than `mmap`, so no
//! `unsafe` code is needed; on tmpfs these are memory copies. One [`ShmProducer`] writes, any
//! number of [`SharedMemoryDataSource`] consumers read; a consumer never writes to the ring, so a
//! slow or dead consumer cannot stall the producer.
//!
//! # Layout (version 1)
//!
//! All integers are little-endian. The header is 64 bytes:
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `AMI2SHM\0` |
//! | 8..12 | layout version, `u32` (= 1) |
//! | 12..16 | reserved (0) |
//! | 16..24 | slot count `N`, `u64` |
//! | 24..32 | slot capacity `C`: the largest payload a slot holds, `u64` |
//! | 32..40 | producer epoch, `u64`: a new random non-zero value each time a producer (re)creates the ring |
//! | 40..48 | next write index `W`, `u64`: the frames written so far by this epoch's producer |
//! | 48..64 | reserved (0) |
//!
//! Then `N` slots of `S = 16 + C` rounded up to a multiple of 8 bytes; the frame with write index
//! `i` goes in slot `i % N`, at byte `64 + (i % N) * S`:
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | write index `i`, `u64` |
//! | 8..12 | payload length `L`, `u32` |
//! | 12..16 | CRC-32 of `epoch (8 bytes) ‖ i (8 bytes) ‖ L (4 bytes) ‖ payload` |
//! | 16..16+L | payload: one [`Frame`] in bincode 2 (serde, `config::standard()`) |
//!
//! # Protocol
//!
//! The producer ([`ShmProducer::push`]) writes slot `W % N`: bytes 8.. (length, CRC, payload)
//! first, then the write index, then advances `W` in the header. It never waits for consumers:
//! once `W` passes a consumer by more than `N`, the slots it had not read are overwritten.
//!
//! Each consumer keeps its own read index `r` and reads only slots with `r < W`. It accepts a slot
//! when its write index is `r` and its CRC matches — the CRC covers the epoch and the index, so a
//! slot torn by a concurrent write, or left by another epoch's producer, never passes. A slot
//! that does not pass is read again; meanwhile:
//!
//! - **Overrun**: when `W > r + N` the producer has lapped the consumer. It counts an overrun
//!   ([`SourceStats::overruns`]), skips to the oldest slot still valid, `W - N + 1` (slot `W % N`
//!   may be being rewritten), and carries on. The slots lost are totalled in the stats note.
//! - **Producer restart**: a new epoch, a header whose `W` went backwards, or a new file at the
//!   path (a producer that unlinked and recreated the ring) means a new producer. The consumer
//!   counts it ([`SourceStats::producer_restarts`]) and resynchronizes to the new stream from
//!   its oldest valid slot. While a producer recreates the ring the header is briefly invalid; the
//!   consumer waits.
//! - A slot that stays bad although the producer is past it (a corrupt slot, or a producer that
//!   died while rewriting it) is skipped after a few reads and counted in the stats note.
//!
//! When the ring is empty the consumer sleeps briefly (50 µs growing to 2 ms) until a frame comes
//! or the timeout passes; a source on a ring never ends.
//!
//! A consumer for partition `p` of `P` reads every slot and keeps the frames with
//! `seq % P == p` (values are decoded only for those), so the partitions share one ring.
//!
//! [`SourcePosition::offset`] is the read index `r` (and `next_seq` one past the last frame
//! delivered). Reopening from a position continues at `r` if the producer still holds it; if
//! the producer has lapped it that is an overrun, and if `W` is now below it, a producer
//! restart. A consumer opened without a position starts at the oldest valid slot.
//!
//! Frames larger than the slot capacity are refused by the producer
//! ([`SourceError::FrameTooLarge`]). One producer per ring at a time: a producer
//! holds a lock (`flock`) on the ring while it lives, and a second one is refused
//! (`SourceError::ShmHasProducer`) rather than reset the ring under the first.
//!
//! The service sizes its telemetry buffers for the ring's slots when it starts: a producer
//! restarted with frames too large for them ends the run with an error that says so, and a
//! supervisor starts it again, sized for the new ring.

use std::fs::{File, OpenOptions};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{
    check_partition, decode_frame, encode_frame, is_mine, peek_seq_timestamp, Batch, DataSource, SourceError, SourcePosition, SourceStats,
};
use crate::event::Frame;

/// The first 8 bytes of a ring.
pub const MAGIC: [u8; 8] = *b"AMI2SHM\0";
/// The layout version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the ring header.
pub const HEADER_BYTES: u64 = 64;
/// Bytes of a slot's header (write index, length, CRC).
pub const SLOT_HEADER_BYTES: u64 = 16;
/// Where POSIX shared memory objects live on Linux.
pub const SHM_DIR: &str = "/dev/shm";

const NEXT_WRITE_AT: u64 = 40;
/// Largest ring accepted (a sanity bound against a garbage header).
const MAX_RING_BYTES: u64 = 1 << 40;

/// The file of shared-memory object `name` (a leading `/`, as `shm_open` takes it, is allowed).
pub fn shm_path(name: &str) -> Result<PathBuf, SourceError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let bad = |reason: &str| {
        Err(SourceError::ShmName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if bare.is_empty() || bare == "." || bare == ".." {
        return bad("a name must not be empty, '.' or '..'");
    }
    if bare.contains('/') || bare.contains('\0') {
        return bad("a name must not contain '/' (after an optional leading one) or NUL");
    }
    if bare.len() > 255 {
        return bad("a name must be at most 255 bytes");
    }
    Ok(Path::new(SHM_DIR).join(bare))
}

/// Bytes between the starts of two slots of capacity `slot_bytes`.
fn stride(slot_bytes: u64) -> Option<u64> {
    slot_bytes.checked_add(SLOT_HEADER_BYTES + 7).map(|s| s / 8 * 8)
}

/// The ring's size for `slots` slots of capacity `slot_bytes`, if sane.
fn ring_bytes(slots: u64, slot_bytes: u64) -> Option<u64> {
    stride(slot_bytes)
        .and_then(|s| s.checked_mul(slots))
        .and_then(|s| s.checked_add(HEADER_BYTES))
        .filter(|&s| s <= MAX_RING_BYTES)
}

fn slot_crc(epoch: u64, index: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&epoch.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The ring header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    version: u32,
    slots: u64,
    slot_bytes: u64,
    epoch: u64,
    next_write: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut bytes = [0u8; HEADER_BYTES as usize];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&self.version.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.slots.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.slot_bytes.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.next_write.to_le_bytes());
        bytes
    }

    /// The header, if the bytes hold a plausible one.
    fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_BYTES as usize || bytes[0..8] != MAGIC {
            return None;
        }
        let header = Header {
            version: u32_at(bytes, 8),
            slots: u64_at(bytes, 16),
            slot_bytes: u64_at(bytes, 24),
            epoch: u64_at(bytes, 32),
            next_write: u64_at(bytes, 40),
        };
        // Another version's geometry is not ours to judge: the caller reports the version.
        if header.version == VERSION
            && (header.slots == 0 || header.slot_bytes == 0 || ring_bytes(header.slots, header.slot_bytes).is_none())
        {
            return None;
        }
        Some(header)
    }

    fn stride(&self) -> u64 {
        stride(self.slot_bytes).expect("checked by decode")
    }

    /// The oldest slot index still valid: slot `W % N` may be being rewritten.
    fn oldest_valid(&self) -> u64 {
        if self.next_write <= self.slots {
            0
        } else {
            self.next_write - self.slots + 1
        }
    }
}

/// Reads `buf.len()` bytes at `offset`, or fewer at the end of the file.
fn read_up_to_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What the header area holds.
enum HeaderRead {
    Valid(Header),
    /// No valid header (yet): the file is short, zeroed or being recreated. The first bytes, for
    /// error messages.
    Invalid(String),
    /// The header kept changing under us; read again later.
    Unstable,
}

/// Reads the header twice and accepts it only if both reads agree, so a header written
/// concurrently is never taken torn.
fn read_header(file: &File) -> std::io::Result<HeaderRead> {
    let mut previous = [0u8; HEADER_BYTES as usize];
    let mut got = read_up_to_at(file, &mut previous, 0)?;
    for _ in 0..8 {
        let mut again = [0u8; HEADER_BYTES as usize];
        let got_again = read_up_to_at(file, &mut again, 0)?;
        if got_again == got && again == previous {
            return Ok(match Header::decode(&again[..got]) {
                Some(header) => HeaderRead::Valid(header),
                None if got < HEADER_BYTES as usize => HeaderRead::Invalid(format!("the file has {got} bytes, less than a header")),
                None => HeaderRead::Invalid(format!("no valid header (starts with \"{}\")", again[..16].escape_ascii())),
            });
        }
        (previous, got) = (again, got_again);
    }
    Ok(HeaderRead::Unstable)
}

/// A fresh epoch: non-zero and different from `previous`.
fn new_epoch(previous: u64) -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut z = nanos ^ ((std::process::id() as u64) << 32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    loop {
        // splitmix64's finalizer.
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if z != 0 && z != previous {
            return z;
        }
    }
}

/// Bytes an encoded frame may grow by when only its sequence number and time stamp change
/// (two variable-length integers of at most 10 bytes each).
const SLOT_GROWTH_BYTES: usize = 20;

/// Writes frames into a shared-memory ring (see the [module docs](self)).
pub struct ShmProducer {
    name: String,
    path: PathBuf,
    /// The ring, locked (`flock`) for as long as this producer lives: one producer per ring.
    file: Flock<File>,
    header: Header,
    stride: u64,
    buf: Vec<u8>,
}

impl ShmProducer {
    /// Creates the ring `/dev/shm/<name>` with `slots` slots, each holding an encoded frame of up
    /// to `slot_bytes` bytes, under a new epoch. An existing ring of that name is reset in place
    /// (its consumers see a producer restart).
    pub fn create(name: &str, slots: usize, slot_bytes: usize) -> Result<Self, SourceError> {
        let path = shm_path(name)?;
        if slots == 0 || slot_bytes == 0 {
            return Err(SourceError::InvalidConfig(format!(
                "shared-memory ring {name:?}: need at least 1 slot of at least 1 byte"
            )));
        }
        let (slots, slot_bytes) = (slots as u64, slot_bytes as u64);
        let size = ring_bytes(slots, slot_bytes).ok_or_else(|| {
            SourceError::InvalidConfig(format!(
                "shared-memory ring {name:?}: {slots} slots of {slot_bytes} bytes exceed {MAX_RING_BYTES} bytes"
            ))
        })?;
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| SourceError::Io { what, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("cannot create shared memory"))?;
        // A second producer would reset the ring under the first, and both would write it:
        // consumers would see a "restart" at every other frame and read frames again.
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => file,
            Err((_, Errno::EWOULDBLOCK)) => return Err(SourceError::ShmHasProducer { name: name.to_string() }),
            Err((_, errno)) => return Err(io("cannot lock shared memory")(errno.into())),
        };
        let previous = match read_header(&file).map_err(io("cannot read shared memory"))? {
            HeaderRead::Valid(h) => h.epoch,
            _ => 0,
        };
        let header = Header {
            version: VERSION,
            slots,
            slot_bytes,
            epoch: new_epoch(previous),
            next_write: 0,
        };
        // Truncating first zeroes every slot, so nothing of an earlier producer survives; the
        // header goes in last, when the ring is ready.
        file.set_len(0).map_err(io("cannot reset shared memory"))?;
        file.set_len(size).map_err(io("cannot size shared memory"))?;
        file.write_all_at(&header.encode(), 0).map_err(io("cannot write shared memory"))?;
        Ok(ShmProducer {
            name: name.to_string(),
            path,
            file,
            stride: header.stride(),
            header,
            buf: Vec::new(),
        })
    }

    /// The slot size for a stream of frames shaped like `frame`: its encoded size, with room for
    /// the sequence numbers and time stamps to grow (variable-length integers), in 64-byte lines.
    pub fn slot_bytes_for(frame: &Frame) -> Result<usize, SourceError> {
        Ok((encode_frame(frame)?.len() + SLOT_GROWTH_BYTES).next_multiple_of(64))
    }

    /// Writes `frame` into the next slot. Never waits: consumers that fall more than a ring
    /// behind lose the oldest frames (overruns). A frame larger than a slot is refused.
    pub fn push(&mut self, frame: &Frame) -> Result<(), SourceError> {
        let payload = encode_frame(frame)?;
        if payload.len() as u64 > self.header.slot_bytes {
            return Err(SourceError::FrameTooLarge {
                seq: frame.seq,
                bytes: payload.len(),
                slot_bytes: self.header.slot_bytes as usize,
            });
        }
        let index = self.header.next_write;
        let len = payload.len() as u32;
        let offset = HEADER_BYTES + (index % self.header.slots) * self.stride;
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&slot_crc(self.header.epoch, index, len, &payload).to_le_bytes());
        self.buf.extend_from_slice(&payload);
        let io = |source| SourceError::Io {
            what: "cannot write shared memory",
            path: self.path.clone(),
            source,
        };
        // Length, CRC and payload; then the index that makes the slot readable; then publish.
        self.file.write_all_at(&self.buf, offset + 8).map_err(io)?;
        self.file.write_all_at(&index.to_le_bytes(), offset).map_err(io)?;
        self.header.next_write = index + 1;
        self.file
            .write_all_at(&self.header.next_write.to_le_bytes(), NEXT_WRITE_AT)
            .map_err(io)?;
        Ok(())
    }

    /// Removes the ring `/dev/shm/<name>` (what `shm_unlink` does); consumers that have it open
    /// keep reading what it holds. Removing a ring that does not exist is not an error.
    pub fn remove(name: &str) -> Result<(), SourceError> {
        let path = shm_path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SourceError::Io {
                what: "cannot remove shared memory",
                path,
                source,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file of the ring.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This producer's epoch.
    pub fn epoch(&self) -> u64 {
        self.header.epoch
    }

    /// Frames pushed so far (the next write index).
    pub fn pushed(&self) -> u64 {
        self.header.next_write
    }

    pub fn slots(&self) -> usize {
        self.header.slots as usize
    }

    /// The largest encoded frame a slot holds.
    pub fn slot_bytes(&self) -> usize {
        self.header.slot_bytes as usize
    }
}

/// A slot read for a given index.
enum Slot {
    /// The slot holds that index, intact; the payload is in the consumer's buffer.
    Intact,
    /// Torn, another index, another epoch, or beyond the end of the file: not (yet) readable.
    NotReadable,
}

/// How long a bad slot the producer has moved past may stay bad before it is skipped.
const STUCK_SLOT_TIMEOUT: Duration = Duration::from_millis(100);
/// Reads of a bad slot, well behind the producer, before it is skipped as corrupt.
const CORRUPT_SLOT_READS: u32 = 4;
/// How often an idle consumer checks whether the ring's file was replaced.
const REPLACED_CHECK: Duration = Duration::from_millis(50);

/// Reads frames from a shared-memory ring for one partition (see the [module docs](self)).
pub struct SharedMemoryDataSource {
    name: String,
    path: PathBuf,
    file: File,
    inode: u64,
    /// The path now names another file (the ring was recreated): a new producer.
    replaced: bool,
    partition: usize,
    partitions: usize,
    /// The producer as last seen: geometry, epoch and how far it had written.
    header: Header,
    read_index: u64,
    next_seq: u64,
    delivered: u64,
    overruns: u64,
    restarts: u64,
    lost_slots: u64,
    corrupt_slots: u64,
    /// The index that would not read, since when and how many times.
    stuck: Option<(u64, Instant, u32)>,
    last_replaced_check: Instant,
    buf: Vec<u8>,
    /// How late the newest frame of the last batch was, when the producer stamps frames with the
    /// wall clock ([`SourceStats::behind_ms`]).
    behind: Option<Duration>,
}

impl SharedMemoryDataSource {
    /// Opens the ring `name` for partition `partition` of `partitions`, continuing from `from`
    /// when given, else at the oldest valid slot. Waits up to a second for a producer that is
    /// still creating the ring.
    pub fn open(name: &str, partition: usize, partitions: usize, from: Option<&SourcePosition>) -> Result<Self, SourceError> {
        check_partition(partition, partitions)?;
        let path = shm_path(name)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => SourceError::ShmMissing {
                name: name.to_string(),
                path: path.clone(),
            },
            _ => SourceError::Io {
                what: "cannot open shared memory",
                path: path.clone(),
                source: e,
            },
        })?;
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| SourceError::Io { what, path, source }
        };
        let inode = file.metadata().map_err(io("cannot stat shared memory"))?.ino();
        let give_up = Instant::now() + Duration::from_secs(1);
        let header = loop {
            match read_header(&file).map_err(io("cannot read shared memory"))? {
                HeaderRead::Valid(header) => break header,
                HeaderRead::Invalid(reason) if Instant::now() >= give_up => {
                    return Err(SourceError::ShmBadHeader {
                        name: name.to_string(),
                        reason,
                    });
                }
                HeaderRead::Unstable if Instant::now() >= give_up => {
                    return Err(SourceError::ShmBadHeader {
                        name: name.to_string(),
                        reason: "the header keeps changing".into(),
                    });
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        if header.version != VERSION {
            return Err(SourceError::ShmVersion {
                name: name.to_string(),
                found: header.version,
                supported: VERSION,
            });
        }
        // A position saved under another producer (a new ring of the same name, or the same
        // ring recreated since) says nothing about this one: start at its oldest frame, as a
        // consumer that sees the producer restart does.
        let read_index = match from {
            Some(f) if f.stream.is_some_and(|epoch| epoch != header.epoch) => {
                tracing::warn!(
                    component = "data_source",
                    partition,
                    "shared-memory ring {name:?}: the saved position is from another producer (epoch {:#x}, now {:#x}); partition {partition} starts at its oldest frame",
                    f.stream.unwrap_or_default(),
                    header.epoch
                );
                header.oldest_valid()
            }
            Some(f) => f.offset,
            None => header.oldest_valid(),
        };
        Ok(SharedMemoryDataSource {
            name: name.to_string(),
            path,
            file,
            inode,
            replaced: false,
            partition,
            partitions,
            header,
            read_index,
            next_seq: from.map_or(0, |f| f.next_seq),
            delivered: 0,
            overruns: 0,
            restarts: 0,
            lost_slots: 0,
            corrupt_slots: 0,
            stuck: None,
            last_replaced_check: Instant::now(),
            buf: Vec::new(),
            behind: None,
        })
    }

    /// The largest encoded frame the ring's slots hold.
    pub fn slot_bytes(&self) -> u64 {
        self.header.slot_bytes
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
        move |source| SourceError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the header and reacts to a producer restart or a lap. Returns false if the ring has
    /// no valid header right now (a producer recreating it).
    fn refresh(&mut self) -> Result<bool, SourceError> {
        let header = match read_header(&self.file).map_err(self.io("cannot read shared memory"))? {
            HeaderRead::Valid(header) => header,
            HeaderRead::Invalid(_) | HeaderRead::Unstable => return Ok(false),
        };
        if header.version != VERSION {
            return Err(SourceError::ShmVersion {
                name: self.name.clone(),
                found: header.version,
                supported: VERSION,
            });
        }
        let restarted = std::mem::take(&mut self.replaced)
            || header.epoch != self.header.epoch
            || header.slots != self.header.slots
            || header.slot_bytes != self.header.slot_bytes
            || header.next_write < self.header.next_write.max(self.read_index);
        if restarted {
            self.restarts += 1;
            tracing::warn!(
                component = "data_source",
                partition = self.partition,
                "shared-memory ring {:?}: producer restarted (epoch {:#x} -> {:#x}, next write index {} -> {}); partition {} resynchronizes",
                self.name,
                self.header.epoch,
                header.epoch,
                self.header.next_write,
                header.next_write,
                self.partition
            );
            self.read_index = header.oldest_valid();
            self.stuck = None;
        } else if header.next_write > self.read_index + header.slots {
            let oldest = header.oldest_valid();
            self.overruns += 1;
            self.lost_slots += oldest - self.read_index;
            if self.overruns == 1 {
                tracing::warn!(
                    component = "data_source",
                    partition = self.partition,
                    "shared-memory ring {:?}: the producer lapped partition {}; skipping {} slots",
                    self.name,
                    self.partition,
                    oldest - self.read_index
                );
            } else {
                tracing::debug!(
                    component = "data_source",
                    partition = self.partition,
                    "shared-memory ring {:?}: overrun {}; skipping {} slots",
                    self.name,
                    self.overruns,
                    oldest - self.read_index
                );
            }
            self.read_index = oldest;
            self.stuck = None;
        }
        self.header = header;
        Ok(true)
    }

    /// Reopens the path if the ring was unlinked and recreated (a new file), so the new
    /// producer is seen.
    fn check_replaced(&mut self) -> Result<(), SourceError> {
        self.last_replaced_check = Instant::now();
        let Ok(metadata) = std::fs::metadata(&self.path) else {
            return Ok(());
        }; // removed: drain what we hold
        if metadata.ino() == self.inode {
            return Ok(());
        }
        match File::open(&self.path) {
            Ok(file) => {
                self.inode = file.metadata().map_err(self.io("cannot stat shared memory"))?.ino();
                self.file = file;
                self.replaced = true;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SourceError::Io {
                what: "cannot open shared memory",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reads the slot of `index` into the buffer.
    fn read_slot(&mut self, index: u64) -> Result<Slot, SourceError> {
        let offset = HEADER_BYTES + (index % self.header.slots) * self.header.stride();
        let mut head = [0u8; SLOT_HEADER_BYTES as usize];
        if read_up_to_at(&self.file, &mut head, offset).map_err(self.io("cannot read shared memory"))? < head.len() {
            return Ok(Slot::NotReadable);
        }
        let (written, len, crc) = (u64_at(&head, 0), u32_at(&head, 8), u32_at(&head, 12));
        if written != index || len as u64 > self.header.slot_bytes {
            return Ok(Slot::NotReadable);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let got = read_up_to_at(&self.file, &mut buf, offset + SLOT_HEADER_BYTES).map_err(self.io("cannot read shared memory"))?;
        let intact = got == buf.len() && slot_crc(self.header.epoch, index, len, &buf) == crc;
        self.buf = buf;
        Ok(if intact { Slot::Intact } else { Slot::NotReadable })
    }

    /// A slot at the read index would not read: wait for the producer, or give up on the slot.
    fn handle_unreadable(&mut self) -> Result<(), SourceError> {
        let index = self.read_index;
        let seen = self.refresh()?;
        if !seen || self.read_index != index || self.header.next_write <= index {
            return Ok(()); // the producer is restarting, lapped us, or restarted
        }
        let (since, reads) = match self.stuck {
            Some((stuck, since, reads)) if stuck == index => (since, reads + 1),
            _ => (Instant::now(), 1),
        };
        self.stuck = Some((index, since, reads));
        // Slot `W % N` is the one the producer may be rewriting right now (then it will lap us);
        // any other slot below `W` is complete, so if it stays bad it is corrupt.
        let settled = self.header.next_write < index + self.header.slots;
        if (settled && reads >= CORRUPT_SLOT_READS) || since.elapsed() >= STUCK_SLOT_TIMEOUT {
            self.skip_corrupt(index, "does not pass its checks");
        } else if reads > 1 {
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }

    fn skip_corrupt(&mut self, index: u64, why: &str) {
        self.corrupt_slots += 1;
        tracing::warn!(
            component = "data_source",
            partition = self.partition,
            "shared-memory ring {:?}: slot of write index {index} {why}; skipped",
            self.name
        );
        self.read_index = index + 1;
        self.stuck = None;
    }
}

impl DataSource for SharedMemoryDataSource {
    fn next_batch(&mut self, max: usize, timeout: Duration) -> Result<Batch, SourceError> {
        let begin = Instant::now();
        let deadline = begin.checked_add(timeout).unwrap_or(begin + Duration::from_secs(86_400));
        let mut frames = Vec::new();
        let mut nap = Duration::from_micros(50);
        while frames.len() < max {
            // Look at the header only when we have read all we knew of.
            if self.read_index >= self.header.next_write {
                self.refresh()?;
            }
            if self.read_index < self.header.next_write {
                let index = self.read_index;
                match self.read_slot(index)? {
                    Slot::NotReadable => self.handle_unreadable()?,
                    Slot::Intact => {
                        self.stuck = None;
                        self.read_index = index + 1;
                        let Some((seq, _)) = peek_seq_timestamp(&self.buf) else {
                            self.skip_corrupt(index, "is not a frame");
                            continue;
                        };
                        if is_mine(seq, self.partition, self.partitions) {
                            match decode_frame(&self.buf) {
                                Ok(frame) => {
                                    self.next_seq = seq.saturating_add(1);
                                    frames.push(frame);
                                }
                                Err(reason) => self.skip_corrupt(index, &format!("is not a frame ({reason})")),
                            }
                        }
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                continue;
            }
            // Caught up: hand over what we have, or wait for the producer.
            let now = Instant::now();
            if !frames.is_empty() || now >= deadline {
                break;
            }
            if now.duration_since(self.last_replaced_check) >= REPLACED_CHECK {
                self.check_replaced()?;
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
        self.delivered += frames.len() as u64;
        self.behind = match frames.last() {
            Some(newest) => wall_clock_lateness(newest.timestamp_ns),
            // The ring had nothing more: not behind, if the stream has a clock at all.
            None => self.behind.map(|_| Duration::ZERO),
        };
        Ok(Batch { frames, ended: false })
    }

    fn position(&self) -> SourcePosition {
        SourcePosition {
            next_seq: self.next_seq,
            offset: self.read_index,
            stream: Some(self.header.epoch),
            delivered_before: Vec::new(),
        }
    }

    fn stats(&self) -> SourceStats {
        let mut notes = Vec::new();
        if self.overruns > 0 {
            notes.push(format!("lost {} slots to {} overruns", self.lost_slots, self.overruns));
        }
        if self.corrupt_slots > 0 {
            notes.push(format!("skipped {} unreadable slots", self.corrupt_slots));
        }
        if self.restarts > 0 {
            notes.push(format!(
                "producer restarted {} times (epoch now {:#x})",
                self.restarts, self.header.epoch
            ));
        }
        SourceStats {
            frames: self.delivered,
            overruns: self.overruns,
            producer_restarts: self.restarts,
            note: (!notes.is_empty()).then(|| format!("shared-memory ring {:?}: {}", self.name, notes.join("; "))),
            behind_ms: self.behind.map(super::behind_ms),
        }
    }
}

/// How long ago, on the wall clock, a frame stamped `timestamp_ns` (Unix time) happened; `None`
/// when the stamp is more than a day away from now, so not the wall clock (a producer counting
/// from its own start, say).
fn wall_clock_lateness(timestamp_ns: u64) -> Option<Duration> {
    const DAY: Duration = Duration::from_secs(86_400);
    let stamp = UNIX_EPOCH + Duration::from_nanos(timestamp_ns);
    match SystemTime::now().duration_since(stamp) {
        Ok(late) => (late <= DAY).then_some(late),
        Err(ahead) => (ahead.duration() <= DAY).then_some(Duration::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_on_the_wall_clock_only_for_wall_clock_time_stamps() {
        let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let late = wall_clock_lateness(now_ns - 1_500_000_000).unwrap();
        assert!(late >= Duration::from_millis(1500) && late < Duration::from_secs(60), "{late:?}");
        assert_eq!(wall_clock_lateness(now_ns + 3_600_000_000_000), Some(Duration::ZERO));
        // A producer counting from its own start (or from 0): not the wall clock.
        assert_eq!(wall_clock_lateness(5_000_000_000), None);
        assert_eq!(wall_clock_lateness(now_ns - 2 * 86_400_000_000_000), None);
    }
    use crate::event::FieldValue;
    use crate::source::open;
    use crate::source::SourceConfig;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            timestamp_ns: seq * 1000,
            fields: vec![
                ("energy".into(), FieldValue::Scalar(seq as f64)),
                ("trace".into(), FieldValue::Waveform(vec![0.5; 16])),
            ],
        }
    }

    /// A ring name unique to this process and test, removed on drop.
    struct Ring(String);

    impl Ring {
        fn new(test: &str) -> Self {
            let name = format!("ami2-test-{}-{test}", std::process::id());
            ShmProducer::remove(&name).unwrap();
            Ring(name)
        }
    }

    impl Drop for Ring {
        fn drop(&mut self) {
            let _ = ShmProducer::remove(&self.0);
        }
    }

    fn seqs(source: &mut dyn DataSource, max: usize) -> Vec<u64> {
        source
            .next_batch(max, Duration::from_millis(300))
            .unwrap()
            .frames
            .iter()
            .map(|f| f.seq)
            .collect()
    }

    #[test]
    fn a_consumer_reading_wall_clock_frames_says_how_far_behind_it_is() {
        let ring = Ring::new("behind");
        let mut producer = ShmProducer::create(&ring.0, 64, 4096).unwrap();
        let mut source = open(&SourceConfig::SharedMemory { name: ring.0.clone() }, 0, 1, None).unwrap();
        // Frames counted from 0 are not on the wall clock: no lateness.
        producer.push(&frame(0)).unwrap();
        assert_eq!(seqs(&mut *source, 10), [0]);
        assert_eq!(source.stats().behind_ms, None);
        // Frames that happened 1.5 s ago, read now: 1.5 s behind.
        let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        for seq in 1..4 {
            let stamped = Frame {
                timestamp_ns: now_ns - 1_500_000_000 + seq,
                ..frame(seq)
            };
            producer.push(&stamped).unwrap();
        }
        assert_eq!(seqs(&mut *source, 10), [1, 2, 3]);
        let behind = source.stats().behind_ms.unwrap();
        assert!((1500..60_000).contains(&behind), "{behind} ms");
        // The ring is empty: caught up.
        assert!(seqs(&mut *source, 10).is_empty());
        assert_eq!(source.stats().behind_ms, Some(0));
    }

    #[test]
    fn names_map_to_dev_shm() {
        assert_eq!(shm_path("ring").unwrap(), Path::new("/dev/shm/ring"));
        assert_eq!(shm_path("/ring").unwrap(), Path::new("/dev/shm/ring"));
        for bad in ["", "/", "a/b", "..", "x\0"] {
            assert!(matches!(shm_path(bad), Err(SourceError::ShmName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn frames_go_through_in_order_and_split_by_partition() {
        let ring = Ring::new("order");
        let mut producer = ShmProducer::create(&ring.0, 64, 4096).unwrap();
        let config = SourceConfig::SharedMemory { name: ring.0.clone() };
        let mut all = open(&config, 0, 1, None).unwrap();
        let mut odd = open(&config, 1, 2, None).unwrap();
        assert_eq!(all.next_batch(10, Duration::from_millis(20)).unwrap(), Batch::default());
        for seq in 0..20 {
            producer.push(&frame(seq)).unwrap();
        }
        let batch = all.next_batch(100, Duration::from_millis(300)).unwrap();
        assert_eq!(batch.frames, (0..20).map(frame).collect::<Vec<_>>());
        assert_eq!(seqs(odd.as_mut(), 100), (1..20).step_by(2).collect::<Vec<_>>());
        assert_eq!(
            all.position(),
            SourcePosition {
                next_seq: 20,
                offset: 20,
                stream: Some(producer.epoch()),
                delivered_before: Vec::new(),
            }
        );
        assert_eq!(
            all.stats(),
            SourceStats {
                frames: 20,
                ..SourceStats::default()
            }
        );
    }

    #[test]
    fn reopening_from_a_position_continues_there() {
        let ring = Ring::new("reopen");
        let mut producer = ShmProducer::create(&ring.0, 64, 4096).unwrap();
        for seq in 0..10 {
            producer.push(&frame(seq)).unwrap();
        }
        let mut first = SharedMemoryDataSource::open(&ring.0, 0, 1, None).unwrap();
        assert_eq!(seqs(&mut first, 4), [0, 1, 2, 3]);
        let position = first.position();
        drop(first);
        let mut second = SharedMemoryDataSource::open(&ring.0, 0, 1, Some(&position)).unwrap();
        assert_eq!(seqs(&mut second, 100), (4..10).collect::<Vec<_>>());
        assert_eq!(second.stats().overruns, 0);
    }

    #[test]
    fn a_position_under_another_producer_starts_at_the_oldest_frame() {
        let ring = Ring::new("other-producer");
        let mut producer = ShmProducer::create(&ring.0, 64, 4096).unwrap();
        for seq in 0..30 {
            producer.push(&frame(seq)).unwrap();
        }
        let mut first = SharedMemoryDataSource::open(&ring.0, 0, 1, None).unwrap();
        assert_eq!(seqs(&mut first, 100), (0..30).collect::<Vec<_>>());
        let position = first.position();
        drop(first);
        // The ring made again (a new producer) and filled further than the old one was read.
        drop(producer);
        let mut producer = ShmProducer::create(&ring.0, 64, 4096).unwrap();
        assert_ne!(Some(producer.epoch()), position.stream);
        for seq in 0..50 {
            producer.push(&frame(seq)).unwrap();
        }
        let mut second = SharedMemoryDataSource::open(&ring.0, 0, 1, Some(&position)).unwrap();
        assert_eq!(seqs(&mut second, 100), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_lapped_consumer_counts_an_overrun_and_goes_on() {
        let ring = Ring::new("lap");
        let mut producer = ShmProducer::create(&ring.0, 4, 4096).unwrap();
        let mut consumer = SharedMemoryDataSource::open(&ring.0, 0, 1, None).unwrap();
        for seq in 0..10 {
            producer.push(&frame(seq)).unwrap();
        }
        // W = 10, N = 4: slots 7, 8, 9 are valid (slot 6's place is the next to be rewritten).
        assert_eq!(seqs(&mut consumer, 100), [7, 8, 9]);
        let stats = consumer.stats();
        assert_eq!((stats.overruns, stats.producer_restarts), (1, 0));
        assert!(stats.note.unwrap().contains("lost 7 slots"));
        producer.push(&frame(10)).unwrap();
        assert_eq!(seqs(&mut consumer, 100), [10]);
    }

    #[test]
    fn a_restarted_producer_is_followed() {
        let ring = Ring::new("restart");
        let mut producer = ShmProducer::create(&ring.0, 16, 4096).unwrap();
        let mut consumer = SharedMemoryDataSource::open(&ring.0, 0, 1, None).unwrap();
        for seq in 0..5 {
            producer.push(&frame(seq)).unwrap();
        }
        assert_eq!(seqs(&mut consumer, 100), [0, 1, 2, 3, 4]);
        let old_epoch = producer.epoch();
        // In place (same file), with a different geometry, once the first producer is gone.
        drop(producer);
        let mut producer = ShmProducer::create(&ring.0, 8, 2048).unwrap();
        assert_ne!(producer.epoch(), old_epoch);
        for seq in 100..103 {
            producer.push(&frame(seq)).unwrap();
        }
        assert_eq!(seqs(&mut consumer, 100), [100, 101, 102]);
        assert_eq!(consumer.stats().producer_restarts, 1);
        // Unlinked and recreated (a new file at the path).
        ShmProducer::remove(&ring.0).unwrap();
        drop(producer);
        let mut producer = ShmProducer::create(&ring.0, 8, 2048).unwrap();
        for seq in 200..202 {
            producer.push(&frame(seq)).unwrap();
        }
        assert_eq!(seqs(&mut consumer, 100), [200, 201]);
        assert_eq!(consumer.stats().producer_restarts, 2);
        assert_eq!(consumer.stats().overruns, 0);
    }

    #[test]
    fn a_second_producer_is_refused_while_the_first_lives_and_its_frames_stay_intact() {
        let ring = Ring::new("two-producers");
        let mut first = ShmProducer::create(&ring.0, 16, 4096).unwrap();
        let mut consumer = SharedMemoryDataSource::open(&ring.0, 0, 1, None).unwrap();
        first.push(&frame(0)).unwrap();
        let err = ShmProducer::create(&ring.0, 16, 4096).err().expect("a second producer is refused");
        assert!(err.to_string().contains("has a producer already"), "{err}");
        // The first producer's ring is untouched, and it goes on.
        first.push(&frame(1)).unwrap();
        assert_eq!(seqs(&mut consumer, 100), [0, 1]);
        assert_eq!(consumer.stats().producer_restarts, 0);
        // Once it is gone, another producer may take the ring.
        drop(first);
        let mut second = ShmProducer::create(&ring.0, 16, 4096).unwrap();
        second.push(&frame(10)).unwrap();
        assert_eq!(seqs(&mut consumer, 100), [10]);
        assert_eq!(consumer.stats().producer_restarts, 1);
    }

    #[test]
    fn a_corrupt_slot_is_skipped() {
        let ring = Ring::new("corrupt");
        let mut producer = ShmProducer::create(&ring.0, 16, 4096).unwrap();
        for seq in 0..3 {
            producer.push(&frame(seq)).unwrap();
        }
        let stride = stride(4096).unwrap();
        let file = OpenOptions::new().write(true).open(producer.path()).unwrap();
        file.write_all_at(&[0xFF; 4], HEADER_BYTES + stride + SLOT_HEADER_BYTES + 2)
            .unwrap();
        let mut consumer = SharedMemoryDataSource::open(&ring.0, 0, 1, None).unwrap();
        assert_eq!(seqs(&mut consumer, 100), [0, 2]);
        assert!(consumer.stats().note.unwrap().contains("1 unreadable slots"));
    }

    #[test]
    fn slots_sized_for_a_frame_hold_its_stream() {
        let first = frame(0);
        let slot_bytes = ShmProducer::slot_bytes_for(&first).unwrap();
        assert_eq!(slot_bytes % 64, 0);
        let ring = Ring::new("sized-slots");
        let mut producer = ShmProducer::create(&ring.0, 4, slot_bytes).unwrap();
        // The same shapes with the largest sequence numbers and time stamps still fit.
        let last = Frame {
            seq: u64::MAX,
            timestamp_ns: u64::MAX,
            ..first.clone()
        };
        producer.push(&first).unwrap();
        producer.push(&last).unwrap();
    }

    #[test]
    fn too_large_frames_are_refused() {
        let ring = Ring::new("large");
        let mut producer = ShmProducer::create(&ring.0, 4, 64).unwrap();
        let big = Frame {
            seq: 7,
            timestamp_ns: 0,
            fields: vec![("w".into(), FieldValue::Waveform(vec![1.0; 100]))],
        };
        let error = producer.push(&big).unwrap_err();
        assert!(
            matches!(
                error,
                SourceError::FrameTooLarge {
                    seq: 7,
                    slot_bytes: 64,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(producer.pushed(), 0);
    }

    #[test]
    fn missing_and_foreign_rings_are_errors() {
        let ring = Ring::new("missing");
        let error = SharedMemoryDataSource::open(&ring.0, 0, 1, None).err().unwrap();
        assert!(matches!(error, SourceError::ShmMissing { .. }), "{error}");
        assert!(error.to_string().contains("is the producer running"));
        let producer = ShmProducer::create(&ring.0, 4, 64).unwrap();
        assert_eq!(
            crate::source::max_frame_bytes(&SourceConfig::SharedMemory { name: ring.0.clone() }).unwrap(),
            crate::source::stored_bytes_bound(64, crate::source::SHM_FIELDS_BOUND)
        );
        let file = OpenOptions::new().write(true).open(producer.path()).unwrap();
        file.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
        let error = SharedMemoryDataSource::open(&ring.0, 0, 1, None).err().unwrap();
        assert!(matches!(error, SourceError::ShmVersion { found: 2, .. }), "{error}");
        file.write_all_at(b"NOTARING", 0).unwrap();
        let error = SharedMemoryDataSource::open(&ring.0, 0, 1, None).err().unwrap();
        assert!(matches!(error, SourceError::ShmBadHeader { .. }), "{error}");
    }
}
