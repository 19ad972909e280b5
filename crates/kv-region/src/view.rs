//! The store as a task sees it: the segments of the (sub)region it was given, with key routing.
//!
//! A task that holds part of a store (a region requirement on a subregion, or the whole region)
//! wraps the mapped bytes in a [`View`]: the segments are found by walking their headers from the
//! first point, and each key goes to the segment with the longest matching prefix. Nothing outside
//! the mapped points is touched, so a task only ever works on its own part.

use std::path::Path;

use legion_bridge::{Field, PhysicalRegion};

use crate::persist::{self, Change, Record};
use crate::segment::{Codec, Segment, Slot, SLOT_BYTES};
use crate::tasks::{Op, Outcome};
use crate::{KvError, KvResult};

/// Where a value lies in a [`View`] (see [`View::locate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueLocation {
    segment: usize,
    range: std::ops::Range<usize>,
}

/// The segments of a mapped range of a store (`B` is `&[u8]` to read, `&mut [u8]` to write).
pub struct View<B> {
    segments: Vec<Segment<B>>,
}

/// Splits `total` bytes into the segment lengths found by walking headers.
fn segment_lengths(bytes: &[u8]) -> KvResult<Vec<usize>> {
    let mut lengths = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let segment = Segment::open(&bytes[at..])?;
        let len = segment.points() * SLOT_BYTES;
        lengths.push(len);
        at += len;
    }
    Ok(lengths)
}

impl<'a> View<&'a [u8]> {
    /// Reads the segments in `bytes` (a whole number of segments).
    pub fn read(mut bytes: &'a [u8]) -> KvResult<Self> {
        let mut segments = Vec::new();
        for len in segment_lengths(bytes)? {
            let (head, rest) = bytes.split_at(len);
            segments.push(Segment::open(head)?);
            bytes = rest;
        }
        Ok(Self { segments })
    }
}

impl<'a> View<&'a mut [u8]> {
    /// Opens the segments in `bytes` for writing.
    pub fn write(mut bytes: &'a mut [u8]) -> KvResult<Self> {
        let mut segments = Vec::new();
        for len in segment_lengths(bytes)? {
            let (head, rest) = std::mem::take(&mut bytes).split_at_mut(len);
            segments.push(Segment::open(head)?);
            bytes = rest;
        }
        Ok(Self { segments })
    }

    fn segment_mut(&mut self, key: &str) -> KvResult<&mut Segment<&'a mut [u8]>> {
        let index = self.route(key).ok_or_else(|| KvError::KeyNotInView { key: key.to_string() })?;
        Ok(&mut self.segments[index])
    }

    /// Stores `value` under `key` (already validated by the caller).
    pub fn put(&mut self, key: &str, codec: Codec, value: &[u8]) -> KvResult<()> {
        self.segment_mut(key)?.put(key, codec, value)
    }

    /// Makes room for a value of `len` bytes under `key` and returns it to be written in place
    /// (see [`Segment::reserve`]).
    pub fn reserve(&mut self, key: &str, codec: Codec, len: usize) -> KvResult<&mut [u8]> {
        self.segment_mut(key)?.reserve(key, codec, len)
    }

    /// `key`'s value, writable in place; `None` when absent.
    pub fn value_mut(&mut self, key: &str) -> KvResult<Option<&mut [u8]>> {
        Ok(self.segment_mut(key)?.value_mut(key))
    }

    /// Where `key`'s value lies, to write it again with [`value_at`](Self::value_at) without
    /// looking the key up: valid until that key is put, truncated or deleted, or the view
    /// cleared.
    pub fn locate(&self, key: &str) -> KvResult<Option<ValueLocation>> {
        let segment = self.route(key).ok_or_else(|| KvError::KeyNotInView { key: key.to_string() })?;
        Ok(self.segments[segment]
            .value_range(key)
            .map(|range| ValueLocation { segment, range }))
    }

    /// The value at `location`, writable in place.
    pub fn value_at(&mut self, location: &ValueLocation) -> KvResult<&mut [u8]> {
        let segment = self
            .segments
            .get_mut(location.segment)
            .ok_or_else(|| KvError::Layout("a value location of another view".into()))?;
        segment
            .bytes_mut(location.range.clone())
            .ok_or_else(|| KvError::Layout("a value location outside its segment's data".into()))
    }

    /// Shortens `key`'s value to `len` bytes (see [`Segment::truncate`]).
    pub fn truncate(&mut self, key: &str, len: usize) -> KvResult<bool> {
        Ok(self.segment_mut(key)?.truncate(key, len))
    }

    /// Removes `key`; true if it was there.
    pub fn delete(&mut self, key: &str) -> KvResult<bool> {
        Ok(self.segment_mut(key)?.delete(key))
    }

    /// Removes every key of every segment in the view (a reused buffer).
    pub fn clear(&mut self) {
        self.segments.iter_mut().for_each(Segment::clear);
    }

    /// The segments, for loading and logging.
    pub(crate) fn segments_mut(&mut self) -> &mut [Segment<&'a mut [u8]>] {
        &mut self.segments
    }
}

impl<B: AsRef<[u8]>> View<B> {
    /// Index of the segment owning `key`: the longest prefix that matches.
    fn route(&self, key: &str) -> Option<usize> {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| key.starts_with(s.prefix()))
            .max_by_key(|(_, s)| s.prefix().len())
            .map(|(i, _)| i)
    }

    /// The codec and bytes of `key`'s value, `None` when absent.
    pub fn get(&self, key: &str) -> KvResult<Option<(Codec, &[u8])>> {
        let index = self.route(key).ok_or_else(|| KvError::KeyNotInView { key: key.to_string() })?;
        Ok(self.segments[index].get(key))
    }

    /// Keys under `prefix` held in this view, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.segments.iter().flat_map(|s| s.keys_with_prefix(prefix)).collect();
        keys.sort_unstable();
        keys
    }

    /// The segments of this view.
    pub fn segments(&self) -> &[Segment<B>] {
        &self.segments
    }
}

/// Runs a batch of operations on a writable view, in order; one result per operation. With
/// `log`, the view must hold exactly one segment (a logged store's segment): the changes get the
/// segment's next sequence numbers and are appended to `log` and fsynced before this returns, so a
/// change reported done is on disk.
pub fn apply_ops(view: &mut View<&mut [u8]>, ops: Vec<Op>, log: Option<&Path>) -> KvResult<Vec<KvResult<Outcome>>> {
    if log.is_some() && view.segments.len() != 1 {
        return Err(KvError::Layout(format!(
            "a logged batch needs exactly one segment, the view holds {}",
            view.segments.len()
        )));
    }
    let mut changes: Vec<(u64, Change)> = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            Op::Put { key, codec, value } => view.put(&key, codec, &value).map(|()| {
                if log.is_some() {
                    changes.push((0, Change::Put(Record { key, codec, value })));
                }
                Outcome::Stored
            }),
            Op::Delete { key } => view.delete(&key).map(|existed| {
                if existed && log.is_some() {
                    changes.push((0, Change::Delete(key)));
                }
                Outcome::Deleted(existed)
            }),
            ref read => read_op(view, read),
        };
        results.push(outcome);
    }
    if let (Some(log), false) = (log, changes.is_empty()) {
        // Number the changes after the segment's last sequence number.
        let segment = &mut view.segments[0];
        let mut seq = segment.seq();
        for change in changes.iter_mut() {
            seq += 1;
            change.0 = seq;
        }
        segment.set_seq(seq);
        persist::append_log(log, &persist::encode_log_records(&changes))?;
    }
    Ok(results)
}

/// Runs a read operation (get or list) on a view.
pub fn read_op<B: AsRef<[u8]>>(view: &View<B>, op: &Op) -> KvResult<Outcome> {
    match op {
        Op::Get { key } => Ok(Outcome::Value(view.get(key)?.map(|(codec, bytes)| (codec, bytes.to_vec())))),
        Op::List { prefix } => Ok(Outcome::Keys(view.list(prefix))),
        Op::Put { .. } | Op::Delete { .. } => Err(KvError::Layout("a write in a read-only batch".into())),
    }
}

/// Runs `body` over a read-only view of `field` of a mapped store region.
pub fn with_reader<T>(region: &PhysicalRegion<'_>, field: Field<Slot>, body: impl FnOnce(&View<&[u8]>) -> KvResult<T>) -> KvResult<T> {
    let accessor = region.read(field)?;
    let slots = accessor
        .as_slice()
        .ok_or_else(|| KvError::Layout("store region is not laid out densely".into()))?;
    body(&View::read(bytemuck::cast_slice(slots))?)
}

/// Runs `body` over a writable view of `field` of a mapped store region.
pub fn with_writer<T>(
    region: &PhysicalRegion<'_>,
    field: Field<Slot>,
    body: impl FnOnce(&mut View<&mut [u8]>) -> KvResult<T>,
) -> KvResult<T> {
    let mut accessor = region.write(field)?;
    let slots = accessor
        .as_mut_slice()
        .ok_or_else(|| KvError::Layout("store region is not laid out densely".into()))?;
    body(&mut View::write(bytemuck::cast_slice_mut(slots))?)
}

/// Raw bytes of `field` of a mapped region, writable (to format segments).
pub(crate) fn with_raw_bytes<T>(
    region: &PhysicalRegion<'_>,
    field: Field<Slot>,
    body: impl FnOnce(&mut [u8]) -> KvResult<T>,
) -> KvResult<T> {
    let mut accessor = region.write(field)?;
    let slots = accessor
        .as_mut_slice()
        .ok_or_else(|| KvError::Layout("store region is not laid out densely".into()))?;
    body(bytemuck::cast_slice_mut(slots))
}
