//! The layout of one segment: the contiguous range of points a key prefix owns, seen as bytes.
//!
//! Every point of a store region holds one [`Slot`] of [`SLOT_BYTES`] bytes, and a segment's
//! points are consecutive, so a mapped segment is one byte array:
//!
//! ```text
//! point 0            header: magic, sizes, key count, sequence number, owning prefix
//! dir_points         directory: open-addressing hash table, 32-byte entries
//!                    (state, codec, key length, first data point, point count, value length, hash)
//! bitmap_points      one bit per data point: in use or free
//! data_points        values: an entry's key bytes then value bytes, over `count` consecutive points
//! ```
//!
//! Everything a task needs to find a key is inside the segment, so a task that holds only its
//! segment (a subregion) can work on it. Pure Rust over a byte slice: testable without Legion.

use crate::{KvError, KvResult};

/// Bytes per point of a store region.
pub const SLOT_BYTES: usize = 256;
/// What one point holds.
pub type Slot = [u8; SLOT_BYTES];

const MAGIC: &[u8; 8] = b"AMI2SEG1";
const VERSION: u32 = 1;
const ENTRY_BYTES: usize = 32;
const ENTRIES_PER_POINT: usize = SLOT_BYTES / ENTRY_BYTES;
/// The directory is kept at most this full (percent), counting deleted entries.
const MAX_FILL_PERCENT: usize = 85;
/// Longest owning prefix: what fits in the header.
pub const MAX_PREFIX_BYTES: usize = SLOT_BYTES - H_PREFIX;

// Header field offsets.
const H_VERSION: usize = 8;
const H_DIR_CAPACITY: usize = 12;
const H_DIR_POINTS: usize = 16;
const H_BITMAP_POINTS: usize = 20;
const H_DATA_POINTS: usize = 24;
const H_KEY_COUNT: usize = 28;
const H_TOMBSTONES: usize = 32;
const H_USED_DATA: usize = 36;
const H_ALLOC_HINT: usize = 40;
const H_SEQ: usize = 44;
const H_PREFIX_LEN: usize = 52;
const H_PREFIX: usize = 54;

// Directory entry field offsets.
const E_STATE: usize = 0;
const E_CODEC: usize = 1;
const E_KEY_LEN: usize = 2;
const E_FIRST: usize = 4;
const E_COUNT: usize = 8;
const E_VALUE_LEN: usize = 12;
const E_HASH: usize = 16;

const EMPTY: u8 = 0;
const USED: u8 = 1;
const DELETED: u8 = 2;

/// How a value's bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    /// UTF-8 JSON text.
    Json,
    /// bincode (typed values of the stores).
    Bincode,
    /// Bytes in a layout of the caller's own (telemetry frame chunks: aligned raw arrays that
    /// tasks read in place).
    Raw,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Self::Json => 1,
            Self::Bincode => 2,
            Self::Raw => 3,
        }
    }
    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Json),
            2 => Some(Self::Bincode),
            3 => Some(Self::Raw),
            _ => None,
        }
    }
    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Bincode => "bincode",
            Self::Raw => "raw",
        }
    }
}

/// How big a segment is: the capacity its owner asked for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentSpec {
    /// The owning prefix (`/` or a key followed by `/`).
    pub prefix: String,
    /// Most keys the segment holds at once.
    pub max_keys: usize,
    /// Bytes for keys and values together (each entry rounds up to whole points).
    pub data_bytes: usize,
}

impl SegmentSpec {
    fn dir_capacity(&self) -> usize {
        (self.max_keys.max(1) * 100).div_ceil(MAX_FILL_PERCENT).max(ENTRIES_PER_POINT)
    }
    fn dir_points(&self) -> usize {
        self.dir_capacity().div_ceil(ENTRIES_PER_POINT)
    }
    fn data_points(&self) -> usize {
        self.data_bytes.div_ceil(SLOT_BYTES).max(1)
    }
    fn bitmap_points(&self) -> usize {
        self.data_points().div_ceil(SLOT_BYTES * 8)
    }
    /// Points the segment occupies.
    pub fn points(&self) -> usize {
        1 + self.dir_points() + self.bitmap_points() + self.data_points()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn write_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn write_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn write_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A directory entry, decoded.
#[derive(Clone, Copy, Debug)]
struct Entry {
    state: u8,
    codec: u8,
    key_len: usize,
    first: usize,
    count: usize,
    value_len: usize,
    hash: u64,
}

impl Entry {
    fn decode(b: &[u8]) -> Self {
        Self {
            state: b[E_STATE],
            codec: b[E_CODEC],
            key_len: read_u16(b, E_KEY_LEN) as usize,
            first: read_u32(b, E_FIRST) as usize,
            count: read_u32(b, E_COUNT) as usize,
            value_len: read_u32(b, E_VALUE_LEN) as usize,
            hash: read_u64(b, E_HASH),
        }
    }
    fn encode(&self, b: &mut [u8]) {
        b[E_STATE] = self.state;
        b[E_CODEC] = self.codec;
        write_u16(b, E_KEY_LEN, self.key_len as u16);
        write_u32(b, E_FIRST, self.first as u32);
        write_u32(b, E_COUNT, self.count as u32);
        write_u32(b, E_VALUE_LEN, self.value_len as u32);
        write_u64(b, E_HASH, self.hash);
    }
}

/// Where a key was found, or where it would go.
enum Probe {
    Found(usize),
    Vacant(usize),
    /// The table has no empty entry left on the probe path.
    Full,
}

/// One segment over its bytes (`B` is `&[u8]` to read, `&mut [u8]` to write).
pub struct Segment<B> {
    bytes: B,
}

impl<B: AsRef<[u8]>> Segment<B> {
    /// Reads a formatted segment, checking its header against the bytes it covers.
    pub fn open(bytes: B) -> KvResult<Self> {
        let b = bytes.as_ref();
        if b.len() < SLOT_BYTES || &b[..8] != MAGIC {
            return Err(KvError::Layout("no segment header at this point (region not initialised?)".into()));
        }
        if read_u32(b, H_VERSION) != VERSION {
            return Err(KvError::Layout(format!(
                "segment version {} is not {VERSION}",
                read_u32(b, H_VERSION)
            )));
        }
        let segment = Self { bytes };
        let wanted = segment.points() * SLOT_BYTES;
        if wanted > segment.bytes.as_ref().len() || segment.dir_capacity() > segment.dir_points() * ENTRIES_PER_POINT {
            return Err(KvError::Layout(format!(
                "segment header claims {wanted} bytes, the region holds {}",
                segment.bytes.as_ref().len()
            )));
        }
        Ok(segment)
    }

    fn b(&self) -> &[u8] {
        self.bytes.as_ref()
    }
    fn header_u32(&self, at: usize) -> usize {
        read_u32(self.b(), at) as usize
    }
    fn dir_capacity(&self) -> usize {
        self.header_u32(H_DIR_CAPACITY)
    }
    fn dir_points(&self) -> usize {
        self.header_u32(H_DIR_POINTS)
    }
    fn bitmap_points(&self) -> usize {
        self.header_u32(H_BITMAP_POINTS)
    }
    fn data_points(&self) -> usize {
        self.header_u32(H_DATA_POINTS)
    }
    fn bitmap_start(&self) -> usize {
        (1 + self.dir_points()) * SLOT_BYTES
    }
    fn data_start(&self) -> usize {
        (1 + self.dir_points() + self.bitmap_points()) * SLOT_BYTES
    }
    fn entry_at(&self, index: usize) -> usize {
        SLOT_BYTES + index * ENTRY_BYTES
    }
    fn entry(&self, index: usize) -> Entry {
        let at = self.entry_at(index);
        Entry::decode(&self.b()[at..at + ENTRY_BYTES])
    }
    fn extent(&self, e: &Entry) -> &[u8] {
        let start = self.data_start() + e.first * SLOT_BYTES;
        &self.b()[start..start + e.key_len + e.value_len]
    }
    fn entry_key(&self, e: &Entry) -> &[u8] {
        &self.extent(e)[..e.key_len]
    }

    /// Points the segment occupies.
    pub fn points(&self) -> usize {
        1 + self.dir_points() + self.bitmap_points() + self.data_points()
    }
    /// The owning prefix.
    pub fn prefix(&self) -> &str {
        let len = read_u16(self.b(), H_PREFIX_LEN) as usize;
        std::str::from_utf8(&self.b()[H_PREFIX..H_PREFIX + len]).unwrap_or("")
    }
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.header_u32(H_KEY_COUNT)
    }
    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sequence number of the last logged change (0 when the segment is not logged).
    pub fn seq(&self) -> u64 {
        read_u64(self.b(), H_SEQ)
    }
    /// Most keys the segment can hold and data points free.
    pub fn free(&self) -> (usize, usize) {
        let max_keys = self.dir_capacity() * MAX_FILL_PERCENT / 100;
        (
            max_keys.saturating_sub(self.len()),
            self.data_points() - self.header_u32(H_USED_DATA),
        )
    }

    fn probe(&self, key: &[u8], hash: u64) -> Probe {
        let capacity = self.dir_capacity();
        let mut first_deleted = None;
        let start = (hash % capacity as u64) as usize;
        for step in 0..capacity {
            let index = (start + step) % capacity;
            let e = self.entry(index);
            match e.state {
                EMPTY => return Probe::Vacant(first_deleted.unwrap_or(index)),
                DELETED => {
                    first_deleted.get_or_insert(index);
                }
                _ if e.hash == hash && self.entry_key(&e) == key => return Probe::Found(index),
                _ => {}
            }
        }
        first_deleted.map_or(Probe::Full, Probe::Vacant)
    }

    /// The codec and bytes of `key`'s value.
    pub fn get(&self, key: &str) -> Option<(Codec, &[u8])> {
        match self.probe(key.as_bytes(), fnv1a(key.as_bytes())) {
            Probe::Found(index) => {
                let e = self.entry(index);
                let codec = Codec::from_byte(e.codec)?;
                Some((codec, &self.extent(&e)[e.key_len..]))
            }
            _ => None,
        }
    }

    /// Every (key, codec, value) held, in directory order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Codec, &[u8])> + '_ {
        (0..self.dir_capacity()).filter_map(move |index| {
            let e = self.entry(index);
            if e.state != USED {
                return None;
            }
            let extent = self.extent(&e);
            let key = std::str::from_utf8(&extent[..e.key_len]).ok()?;
            Some((key, Codec::from_byte(e.codec)?, &extent[e.key_len..]))
        })
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .entries()
            .filter(|(k, _, _)| k.starts_with(prefix))
            .map(|(k, _, _)| k.to_string())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// First run of `need` free data points, searching from the allocation hint and wrapping.
    fn find_free_run(&self, need: usize) -> Option<usize> {
        let total = self.data_points();
        if need > total {
            return None;
        }
        let bitmap = &self.b()[self.bitmap_start()..];
        let bit = |point: usize| bitmap[point / 8] & (1 << (point % 8)) != 0;
        let hint = self.header_u32(H_ALLOC_HINT).min(total);
        for (from, to) in [(hint, total), (0, hint + need - 1)] {
            let to = to.min(total);
            let mut run_start = from;
            let mut point = from;
            while point < to {
                if point % 64 == 0 && point + 64 <= to {
                    // 64 points at once: all used, or all free (a large value spans thousands
                    // of points, and a telemetry buffer is refilled every round).
                    let word = u64::from_le_bytes(bitmap[point / 8..point / 8 + 8].try_into().expect("8 bytes"));
                    match word {
                        u64::MAX => {
                            point += 64;
                            run_start = point;
                            continue;
                        }
                        0 if point + 64 - run_start < need => {
                            point += 64;
                            continue;
                        }
                        _ => {}
                    }
                }
                if bit(point) {
                    run_start = point + 1;
                } else if point + 1 - run_start == need {
                    return Some(run_start);
                }
                point += 1;
            }
        }
        None
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Segment<B> {
    /// Writes an empty segment for `spec` over `bytes` (which must be `spec.points()` slots).
    pub fn format(mut bytes: B, spec: &SegmentSpec) -> KvResult<Self> {
        crate::key::validate_prefix(&spec.prefix)?;
        if spec.prefix.len() > MAX_PREFIX_BYTES {
            return Err(KvError::Layout(format!(
                "prefix {:?} is longer than {MAX_PREFIX_BYTES} bytes",
                spec.prefix
            )));
        }
        let b = bytes.as_mut();
        if b.len() < spec.points() * SLOT_BYTES {
            return Err(KvError::Layout(format!(
                "segment {:?} needs {} points, got {}",
                spec.prefix,
                spec.points(),
                b.len() / SLOT_BYTES
            )));
        }
        let meta_end = (1 + spec.dir_points() + spec.bitmap_points()) * SLOT_BYTES;
        b[..meta_end].fill(0);
        b[..8].copy_from_slice(MAGIC);
        write_u32(b, H_VERSION, VERSION);
        write_u32(b, H_DIR_CAPACITY, spec.dir_capacity() as u32);
        write_u32(b, H_DIR_POINTS, spec.dir_points() as u32);
        write_u32(b, H_BITMAP_POINTS, spec.bitmap_points() as u32);
        write_u32(b, H_DATA_POINTS, spec.data_points() as u32);
        write_u16(b, H_PREFIX_LEN, spec.prefix.len() as u16);
        b[H_PREFIX..H_PREFIX + spec.prefix.len()].copy_from_slice(spec.prefix.as_bytes());
        Ok(Self { bytes })
    }

    fn bm(&mut self) -> &mut [u8] {
        self.bytes.as_mut()
    }
    fn set_header_u32(&mut self, at: usize, v: usize) {
        write_u32(self.bm(), at, v as u32);
    }
    fn write_entry(&mut self, index: usize, e: &Entry) {
        let at = self.entry_at(index);
        e.encode(&mut self.bm()[at..at + ENTRY_BYTES]);
    }
    fn mark(&mut self, first: usize, count: usize, used: bool) {
        let start = self.bitmap_start();
        let b = self.bm();
        let set = |b: &mut [u8], point: usize| {
            let byte = &mut b[start + point / 8];
            if used {
                *byte |= 1 << (point % 8);
            } else {
                *byte &= !(1 << (point % 8));
            }
        };
        let end = first + count;
        // Bit by bit up to a byte boundary, whole bytes in the middle (a telemetry chunk spans
        // thousands of points and is marked every round), bit by bit after.
        let whole_from = first.next_multiple_of(8).min(end);
        let whole_to = (end / 8 * 8).max(whole_from);
        for point in (first..whole_from).chain(whole_to..end) {
            set(b, point);
        }
        b[start + whole_from / 8..start + whole_to / 8].fill(if used { 0xFF } else { 0x00 });
    }

    /// Sets the sequence number of the last logged change.
    pub fn set_seq(&mut self, seq: u64) {
        write_u64(self.bm(), H_SEQ, seq);
    }

    /// Stores `value` under `key`, replacing any previous value. On error nothing changed.
    pub fn put(&mut self, key: &str, codec: Codec, value: &[u8]) -> KvResult<()> {
        self.reserve(key, codec, value.len())?.copy_from_slice(value);
        Ok(())
    }

    /// Makes room for a value of `len` bytes under `key` (replacing any previous value) and
    /// returns it to be written in place: a producer fills the store without building the value
    /// elsewhere first. Its bytes are whatever the points held before. On error nothing changed.
    pub fn reserve(&mut self, key: &str, codec: Codec, len: usize) -> KvResult<&mut [u8]> {
        let key_bytes = key.as_bytes();
        let hash = fnv1a(key_bytes);
        let need = (key_bytes.len() + len).div_ceil(SLOT_BYTES).max(1);
        let mut slot = self.probe(key_bytes, hash);
        let old = match slot {
            Probe::Found(index) => Some(self.entry(index)),
            _ => None,
        };
        if old.is_none() {
            let (free_keys, _) = self.free();
            let crowded = self.len() + self.header_u32(H_TOMBSTONES) + 1 > self.dir_capacity() * MAX_FILL_PERCENT / 100;
            if free_keys == 0 {
                return Err(KvError::StoreFull {
                    prefix: self.prefix().into(),
                    what: "no room for another key",
                    needed: 1,
                    free: 0,
                });
            }
            if crowded || matches!(slot, Probe::Full) {
                self.compact_directory();
                slot = self.probe(key_bytes, hash);
            }
        }
        // Place the value: in place when the extent size is unchanged, else in a new run (the old
        // run counts as free while searching, and is restored if nothing fits).
        let first = match old {
            Some(e) if e.count == need => e.first,
            _ => {
                if let Some(e) = old {
                    self.mark(e.first, e.count, false);
                }
                match self.find_free_run(need) {
                    Some(first) => first,
                    None => {
                        if let Some(e) = old {
                            self.mark(e.first, e.count, true);
                        }
                        let (_, free) = self.free();
                        let free = free + old.map_or(0, |e| e.count);
                        return Err(KvError::StoreFull {
                            prefix: self.prefix().into(),
                            what: "no run of free data points",
                            needed: need,
                            free,
                        });
                    }
                }
            }
        };
        self.mark(first, need, true);
        let start = self.data_start() + first * SLOT_BYTES;
        self.bm()[start..start + key_bytes.len()].copy_from_slice(key_bytes);
        let entry = Entry {
            state: USED,
            codec: codec.to_byte(),
            key_len: key_bytes.len(),
            first,
            count: need,
            value_len: len,
            hash,
        };
        let index = match slot {
            Probe::Found(index) | Probe::Vacant(index) => index,
            Probe::Full => unreachable!("a compacted directory below its fill limit has an empty entry"),
        };
        let reused_deleted = self.entry(index).state == DELETED;
        self.write_entry(index, &entry);
        let used = self.header_u32(H_USED_DATA) + need - old.map_or(0, |e| e.count);
        self.set_header_u32(H_USED_DATA, used);
        self.set_header_u32(H_ALLOC_HINT, first + need);
        if old.is_none() {
            self.set_header_u32(H_KEY_COUNT, self.len() + 1);
            if reused_deleted {
                self.set_header_u32(H_TOMBSTONES, self.header_u32(H_TOMBSTONES) - 1);
            }
        }
        let value_start = start + key_bytes.len();
        Ok(&mut self.bm()[value_start..value_start + len])
    }

    /// The bytes of `key`'s value, writable in place.
    pub fn value_mut(&mut self, key: &str) -> Option<&mut [u8]> {
        let range = self.value_range(key)?;
        Some(&mut self.bm()[range])
    }

    /// Where `key`'s value lies in the segment's bytes.
    pub(crate) fn value_range(&self, key: &str) -> Option<std::ops::Range<usize>> {
        let Probe::Found(index) = self.probe(key.as_bytes(), fnv1a(key.as_bytes())) else {
            return None;
        };
        let e = self.entry(index);
        let start = self.data_start() + e.first * SLOT_BYTES + e.key_len;
        Some(start..start + e.value_len)
    }

    /// The bytes at `range` (a value's, from [`value_range`](Self::value_range)); `None` outside
    /// the data points, so a stale range never touches the header or the directory.
    pub(crate) fn bytes_mut(&mut self, range: std::ops::Range<usize>) -> Option<&mut [u8]> {
        let data = self.data_start()..self.points() * SLOT_BYTES;
        (data.start <= range.start && range.start <= range.end && range.end <= data.end).then(|| &mut self.bm()[range])
    }

    /// Shortens `key`'s value to its first `len` bytes, freeing the points it no longer needs
    /// (a value reserved larger than what was written). False when the key is absent or its
    /// value is shorter than `len`.
    pub fn truncate(&mut self, key: &str, len: usize) -> bool {
        let Probe::Found(index) = self.probe(key.as_bytes(), fnv1a(key.as_bytes())) else {
            return false;
        };
        let mut e = self.entry(index);
        if len > e.value_len {
            return false;
        }
        let keep = (e.key_len + len).div_ceil(SLOT_BYTES).max(1);
        self.mark(e.first + keep, e.count - keep, false);
        self.set_header_u32(H_USED_DATA, self.header_u32(H_USED_DATA) - (e.count - keep));
        // The last value placed: the next one goes right after what it keeps, so values
        // reserved large and truncated pack without gaps.
        if self.header_u32(H_ALLOC_HINT) == e.first + e.count {
            self.set_header_u32(H_ALLOC_HINT, e.first + keep);
        }
        e.count = keep;
        e.value_len = len;
        self.write_entry(index, &e);
        true
    }

    /// Removes `key`; true if it was there.
    pub fn delete(&mut self, key: &str) -> bool {
        let Probe::Found(index) = self.probe(key.as_bytes(), fnv1a(key.as_bytes())) else {
            return false;
        };
        let mut e = self.entry(index);
        self.mark(e.first, e.count, false);
        self.set_header_u32(H_USED_DATA, self.header_u32(H_USED_DATA) - e.count);
        e.state = DELETED;
        self.write_entry(index, &e);
        self.set_header_u32(H_KEY_COUNT, self.len() - 1);
        self.set_header_u32(H_TOMBSTONES, self.header_u32(H_TOMBSTONES) + 1);
        true
    }

    /// Removes every key (keeps the layout).
    pub fn clear(&mut self) {
        let dir = SLOT_BYTES..self.data_start();
        self.bm()[dir].fill(0);
        for at in [H_KEY_COUNT, H_TOMBSTONES, H_USED_DATA, H_ALLOC_HINT] {
            self.set_header_u32(at, 0);
        }
    }

    /// Rebuilds the hash table without deleted entries.
    fn compact_directory(&mut self) {
        let live: Vec<Entry> = (0..self.dir_capacity())
            .map(|i| self.entry(i))
            .filter(|e| e.state == USED)
            .collect();
        let dir = SLOT_BYTES..self.bitmap_start();
        self.bm()[dir].fill(0);
        let capacity = self.dir_capacity();
        for e in live {
            let mut index = (e.hash % capacity as u64) as usize;
            while self.entry(index).state != EMPTY {
                index = (index + 1) % capacity;
            }
            self.write_entry(index, &e);
        }
        self.set_header_u32(H_TOMBSTONES, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn segment(max_keys: usize, data_bytes: usize) -> Segment<Vec<u8>> {
        let spec = SegmentSpec {
            prefix: "/t/".into(),
            max_keys,
            data_bytes,
        };
        Segment::format(vec![0u8; spec.points() * SLOT_BYTES], &spec).unwrap()
    }

    #[test]
    fn put_get_replace_delete() {
        let mut s = segment(16, 4096);
        s.put("/t/a", Codec::Json, b"1").unwrap();
        s.put("/t/b", Codec::Json, &[b'x'; 600]).unwrap();
        assert_eq!(s.get("/t/a"), Some((Codec::Json, &b"1"[..])));
        assert_eq!(s.get("/t/b").unwrap().1.len(), 600);
        s.put("/t/a", Codec::Bincode, &[7u8; 300]).unwrap();
        assert_eq!(s.get("/t/a"), Some((Codec::Bincode, &[7u8; 300][..])));
        assert!(s.delete("/t/a"));
        assert!(!s.delete("/t/a"));
        assert_eq!(s.get("/t/a"), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.keys_with_prefix("/t/"), vec!["/t/b".to_string()]);
    }

    #[test]
    fn reserve_write_in_place_then_truncate() {
        let mut s = segment(16, 8 * SLOT_BYTES);
        s.reserve("/t/a", Codec::Raw, 5 * SLOT_BYTES).unwrap().fill(7);
        assert_eq!(s.free().1, 8 - 6, "key and value take 6 points");
        s.value_mut("/t/a").unwrap()[..3].copy_from_slice(b"abc");
        assert!(s.truncate("/t/a", 300));
        assert!(!s.truncate("/t/a", 301), "cannot grow");
        assert!(!s.truncate("/t/b", 0), "absent key");
        assert_eq!(s.free().1, 8 - 2, "the trailing points are free again");
        let (codec, value) = s.get("/t/a").unwrap();
        assert_eq!((codec, value.len(), &value[..4]), (Codec::Raw, 300, &b"abc\x07"[..]));
        // The freed points hold new values.
        s.put("/t/b", Codec::Json, &[1; 5 * SLOT_BYTES]).unwrap();
        assert_eq!(s.get("/t/a").unwrap().1.len(), 300);
    }

    #[test]
    fn values_reserved_large_and_truncated_pack_without_gaps() {
        // 40 values of 3 points each, each reserved at 8 points: they fill 120 of 128 points.
        let mut s = segment(64, 128 * SLOT_BYTES);
        for i in 0..40 {
            let key = format!("/t/{i:02}");
            s.reserve(&key, Codec::Raw, 8 * SLOT_BYTES - key.len()).unwrap();
            assert!(s.truncate(&key, 3 * SLOT_BYTES - key.len()));
        }
        assert_eq!(s.free().1, 8);
    }

    #[test]
    fn full_segment_refuses_and_stays_unchanged() {
        let mut s = segment(4, 2 * SLOT_BYTES);
        s.put("/t/a", Codec::Json, &[b'1'; 200]).unwrap();
        s.put("/t/b", Codec::Json, &[b'2'; 200]).unwrap();
        let err = s.put("/t/c", Codec::Json, b"3").unwrap_err();
        assert!(matches!(err, KvError::StoreFull { .. }), "{err}");
        // Growing a value that has no room keeps the old value.
        let err = s.put("/t/a", Codec::Json, &[b'9'; 600]).unwrap_err();
        assert!(matches!(err, KvError::StoreFull { .. }), "{err}");
        assert_eq!(s.get("/t/a").unwrap().1, &[b'1'; 200][..]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn key_limit_is_enforced() {
        let mut s = segment(3, 64 * SLOT_BYTES);
        let max = s.free().0;
        for i in 0..max {
            s.put(&format!("/t/{i}"), Codec::Json, b"0").unwrap();
        }
        assert!(matches!(s.put("/t/x", Codec::Json, b"0"), Err(KvError::StoreFull { .. })));
        // Deleting makes room again, through the tombstone compaction.
        for round in 0..50 {
            assert!(s.delete(&format!("/t/{}", round % max)));
            s.put(&format!("/t/{}", round % max), Codec::Json, b"1").unwrap();
        }
    }

    #[test]
    fn open_checks_the_header() {
        assert!(Segment::open(vec![0u8; SLOT_BYTES]).is_err());
        let s = segment(8, 1024);
        let bytes = s.bytes.clone();
        let reopened = Segment::open(&bytes[..]).unwrap();
        assert_eq!(reopened.prefix(), "/t/");
        assert!(Segment::open(&bytes[..SLOT_BYTES * 2]).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, usize),
        Delete(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => (0u8..40, 0usize..900).prop_map(|(k, n)| Op::Put(k, n)), 1 => (0u8..40).prop_map(Op::Delete)]
    }

    /// The first free run the plain way: point by point from the hint to the end, then from the
    /// start for runs that begin before the hint.
    fn first_free_run(used: &[bool], hint: usize, need: usize) -> Option<usize> {
        let free = |p: &usize| used[*p..*p + need].iter().all(|u| !u);
        let ending_by = |to: usize| move |p: &usize| *p + need <= to;
        (hint..)
            .take_while(ending_by(used.len()))
            .find(free)
            .or_else(|| (0..).take_while(ending_by((hint + need - 1).min(used.len()))).find(free))
    }

    proptest! {
        #[test]
        fn free_runs_are_found_as_point_by_point(
            runs in prop::collection::vec((any::<bool>(), 1usize..150), 1..30),
            hint in 0usize..2000,
            need in 1usize..300,
        ) {
            // A bitmap of used and free stretches, some longer than a 64-point word.
            let used: Vec<bool> = runs.iter().flat_map(|&(u, n)| std::iter::repeat_n(u, n)).collect();
            let mut s = segment(4, used.len() * SLOT_BYTES);
            let points = s.data_points();
            prop_assert_eq!(points, used.len());
            for (point, &u) in used.iter().enumerate() {
                if u {
                    s.mark(point, 1, true);
                }
            }
            let hint = hint % points;
            s.set_header_u32(H_ALLOC_HINT, hint);
            prop_assert_eq!(s.find_free_run(need), first_free_run(&used, hint, need));
        }

        #[test]
        fn agrees_with_a_btreemap(ops in prop::collection::vec(op(), 1..200)) {
            let mut s = segment(30, 40 * SLOT_BYTES);
            let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, n) => {
                        let key = format!("/t/k{k}");
                        let value = vec![k; n];
                        match s.put(&key, Codec::Json, &value) {
                            Ok(()) => { model.insert(key, value); }
                            Err(KvError::StoreFull { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Delete(k) => {
                        let key = format!("/t/k{k}");
                        prop_assert_eq!(s.delete(&key), model.remove(&key).is_some());
                    }
                }
                prop_assert_eq!(s.len(), model.len());
            }
            for (key, value) in &model {
                prop_assert_eq!(s.get(key).map(|(_, v)| v.to_vec()), Some(value.clone()));
            }
            prop_assert_eq!(s.keys_with_prefix("/t/"), model.keys().cloned().collect::<Vec<_>>());
        }
    }
}
