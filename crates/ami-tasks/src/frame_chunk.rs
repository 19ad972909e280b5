//! Telemetry frames laid out to be read in place: a data source writes pixels straight into the
//! telemetry store, and a worker's graph reads them there as borrowed `&[f64]` (a region of
//! interest touches only its own rows). No encoding, no decoding, no per-frame allocation.
//!
//! A chunk is the value of one telemetry key (codec [`Codec::Raw`](kv_region::Codec::Raw)); all
//! integers and floats are little-endian, and every array starts 8-byte aligned in memory:
//!
//! ```text
//! byte 0           p: 1..=8, the padding that puts the header at an 8-aligned address
//! p                chunk header, 16 bytes: magic "AMI2FRC1", frame count u32, bytes used u32
//!                  (from byte 0: where the next frame goes)
//! p + 16           frames, one after the other, each a multiple of 8 bytes long:
//!   +0               frame header, 24 bytes: seq u64, timestamp_ns u64, field count u32,
//!                    frame length u32 (bytes, header included)
//!   +24              field entries, 32 bytes each: kind u8 (1 scalar, 2 waveform, 3 image), 0 u8,
//!                    name length u16, name offset u32, width u32, height u32 (1 for a waveform),
//!                    data offset u32 (from the frame's start), 0 u32, scalar value f64
//!   ...              names (UTF-8), zero-padded to a multiple of 8
//!   ...              arrays: width × height f64 per waveform and image field, in field order
//! ```
//!
//! The padding is computed from the address the value has when written; a copy of the region at
//! another alignment (another memory, another process) still reads correctly: arrays that are no
//! longer aligned are copied out ([`Cow::Owned`]) instead of borrowed.

use std::borrow::Cow;

use crate::event::{Event, FieldRef, FieldValue, Frame};

/// Magic bytes of a chunk.
pub const MAGIC: &[u8; 8] = b"AMI2FRC1";
const CHUNK_HEADER: usize = 16;
const FRAME_HEADER: usize = 24;
const FIELD_ENTRY: usize = 32;
/// Largest padding before the header (the value's first byte says how much).
const MAX_PAD: usize = 8;

const KIND_SCALAR: u8 = 1;
const KIND_WAVEFORM: u8 = 2;
const KIND_IMAGE: u8 = 3;

// Arrays are borrowed as native f64s.
#[cfg(target_endian = "big")]
compile_error!("frame chunks hold little-endian f64 arrays read in place; big-endian targets are not supported");

/// What a chunk that does not follow the layout looks like.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame chunk: {0}")]
pub struct ChunkError(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, ChunkError> {
    Err(ChunkError(what.into()))
}

/// The shape (and, for a scalar, the value) of one field of a frame to write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldShape {
    Scalar(f64),
    Waveform { len: usize },
    Image { width: u32, height: u32 },
}

impl FieldShape {
    fn elements(self) -> usize {
        match self {
            FieldShape::Scalar(_) => 0,
            FieldShape::Waveform { len } => len,
            FieldShape::Image { width, height } => width as usize * height as usize,
        }
    }
}

/// One field of a frame to write.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec<'n> {
    pub name: &'n str,
    pub shape: FieldShape,
}

impl<'n> FieldSpec<'n> {
    /// The fields of an owned frame.
    pub fn list(frame: &'n Frame) -> Vec<Self> {
        frame.fields.iter().map(|(name, value)| FieldSpec::of(name, value)).collect()
    }

    /// The field of an owned frame (to copy it into a chunk).
    pub fn of(name: &'n str, value: &FieldValue) -> Self {
        let shape = match value {
            FieldValue::Scalar(x) => FieldShape::Scalar(*x),
            FieldValue::Waveform(v) => FieldShape::Waveform { len: v.len() },
            FieldValue::Image { width, height, .. } => FieldShape::Image {
                width: *width,
                height: *height,
            },
        };
        FieldSpec { name, shape }
    }
}

fn names_bytes(fields: &[FieldSpec<'_>]) -> usize {
    fields.iter().map(|f| f.name.len()).sum::<usize>().next_multiple_of(8)
}

/// Bytes a frame with `fields` takes in a chunk.
pub fn frame_bytes(fields: &[FieldSpec<'_>]) -> usize {
    FRAME_HEADER + FIELD_ENTRY * fields.len() + names_bytes(fields) + 8 * fields.iter().map(|f| f.shape.elements()).sum::<usize>()
}

/// Bytes of a chunk around its frames (padding and header), at most.
pub const CHUNK_OVERHEAD: usize = MAX_PAD + CHUNK_HEADER;

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Writes frames into a chunk's bytes (a value reserved in the store), front to back.
pub struct ChunkWriter<'b> {
    bytes: &'b mut [u8],
    /// Where the header starts (after the padding).
    header: usize,
    /// End of the frames written so far.
    end: usize,
    frames: u32,
}

impl<'b> ChunkWriter<'b> {
    /// Starts a chunk over `bytes` (at least [`CHUNK_OVERHEAD`] long).
    pub fn new(bytes: &'b mut [u8]) -> Result<Self, ChunkError> {
        if bytes.len() < CHUNK_OVERHEAD {
            return bad(format!("{} bytes cannot hold a chunk header", bytes.len()));
        }
        // 1..=8 bytes, so that the header (and every frame after it) is 8-byte aligned.
        let pad = MAX_PAD - bytes.as_ptr() as usize % 8;
        let header = pad;
        bytes[0] = pad as u8;
        bytes[1..header].fill(0);
        bytes[header..header + 8].copy_from_slice(MAGIC);
        put_u32(bytes, header + 8, 0);
        put_u32(bytes, header + 12, (header + CHUNK_HEADER) as u32);
        Ok(ChunkWriter {
            bytes,
            header,
            end: header + CHUNK_HEADER,
            frames: 0,
        })
    }

    /// Continues a chunk started by [`new`](Self::new) over the same bytes.
    pub fn resume(bytes: &'b mut [u8]) -> Result<Self, ChunkError> {
        let header = bytes.first().copied().unwrap_or(0) as usize;
        if !(1..=MAX_PAD).contains(&header) || bytes.len() < header + CHUNK_HEADER || &bytes[header..header + 8] != MAGIC {
            return bad("no chunk header to continue");
        }
        let frames = get_u32(bytes, header + 8).unwrap_or(0);
        let end = get_u32(bytes, header + 12).unwrap_or(0) as usize;
        if end < header + CHUNK_HEADER || end > bytes.len() {
            return bad(format!("chunk claims {end} bytes used of {}", bytes.len()));
        }
        Ok(ChunkWriter {
            bytes,
            header,
            end,
            frames,
        })
    }

    /// Bytes written so far: what the chunk's value should be truncated to.
    pub fn len(&self) -> usize {
        self.end
    }

    /// True when no frame was written.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Number of frames written.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Room left for frames.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.end
    }

    /// Appends a frame with `fields` (scalars set, arrays to fill through the returned
    /// [`FrameMut`]); `None` when it does not fit.
    pub fn push(&mut self, seq: u64, timestamp_ns: u64, fields: &[FieldSpec<'_>]) -> Option<FrameMut<'_>> {
        ChunkWriter {
            bytes: &mut *self.bytes,
            ..*self
        }
        .into_push(seq, timestamp_ns, fields)
        .inspect(|frame| {
            self.end += frame.bytes.len();
            self.frames += 1;
        })
    }

    /// [`push`](Self::push), the frame borrowing the chunk's bytes rather than the writer.
    pub fn into_push(self, seq: u64, timestamp_ns: u64, fields: &[FieldSpec<'_>]) -> Option<FrameMut<'b>> {
        let len = frame_bytes(fields);
        if len > self.remaining() || self.end + len > u32::MAX as usize || fields.len() > u32::MAX as usize {
            return None;
        }
        let start = self.end;
        put_u32(self.bytes, self.header + 8, self.frames + 1);
        put_u32(self.bytes, self.header + 12, (start + len) as u32);
        let frame = &mut self.bytes[start..start + len];
        put_u64(frame, 0, seq);
        put_u64(frame, 8, timestamp_ns);
        put_u32(frame, 16, fields.len() as u32);
        put_u32(frame, 20, len as u32);
        let mut name_at = FRAME_HEADER + FIELD_ENTRY * fields.len();
        let mut data_at = name_at + names_bytes(fields);
        frame[name_at..data_at].fill(0);
        for (i, field) in fields.iter().enumerate() {
            let e = FRAME_HEADER + FIELD_ENTRY * i;
            let (kind, width, height, scalar) = match field.shape {
                FieldShape::Scalar(x) => (KIND_SCALAR, 0, 0, x),
                FieldShape::Waveform { len } => (KIND_WAVEFORM, len as u32, 1, 0.0),
                FieldShape::Image { width, height } => (KIND_IMAGE, width, height, 0.0),
            };
            frame[e] = kind;
            frame[e + 1] = 0;
            put_u16(frame, e + 2, field.name.len() as u16);
            put_u32(frame, e + 4, name_at as u32);
            put_u32(frame, e + 8, width);
            put_u32(frame, e + 12, height);
            put_u32(frame, e + 16, data_at as u32);
            put_u32(frame, e + 20, 0);
            put_u64(frame, e + 24, scalar.to_bits());
            frame[name_at..name_at + field.name.len()].copy_from_slice(field.name.as_bytes());
            name_at += field.name.len();
            data_at += 8 * field.shape.elements();
        }
        Some(FrameMut {
            bytes: frame,
            fields: fields.len(),
        })
    }

    /// Appends a copy of an owned frame; false when it does not fit.
    pub fn push_frame(&mut self, frame: &Frame) -> bool {
        let specs = FieldSpec::list(frame);
        let Some(mut out) = self.push(frame.seq, frame.timestamp_ns, &specs) else {
            return false;
        };
        fill_from(&mut out, frame);
        true
    }
}

/// Copies the arrays of `frame` into `out` (appended with `frame`'s fields).
pub fn fill_from(out: &mut FrameMut<'_>, frame: &Frame) {
    for (i, (_, value)) in frame.fields.iter().enumerate() {
        match value {
            FieldValue::Scalar(_) => {}
            FieldValue::Waveform(v) | FieldValue::Image { pixels: v, .. } => out.array(i).copy_from_slice(v),
        }
    }
}

/// A frame just appended to a chunk, its arrays to fill.
pub struct FrameMut<'b> {
    bytes: &'b mut [u8],
    fields: usize,
}

impl FrameMut<'_> {
    /// The elements of array field `i` (a waveform's samples, an image's pixels row by row),
    /// writable; empty for a scalar. Their initial values are whatever the store held.
    pub fn array(&mut self, i: usize) -> &mut [f64] {
        if i >= self.fields {
            return &mut [];
        }
        let e = FRAME_HEADER + FIELD_ENTRY * i;
        let (width, height) = (read_u32(self.bytes, e + 8), read_u32(self.bytes, e + 12));
        let elements = if self.bytes[e] == KIND_SCALAR { 0 } else { width * height };
        let at = read_u32(self.bytes, e + 16);
        // The writer aligned the frame; the layout keeps arrays at multiples of 8 from it.
        bytemuck::cast_slice_mut(&mut self.bytes[at..at + 8 * elements])
    }
}

fn read_u32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// A field entry of a frame read in place.
struct Entry<'a> {
    /// The name's bytes.
    name: Option<&'a [u8]>,
    kind: u8,
    /// Offset from the frame's start and number of elements of its data.
    data: Option<(usize, usize)>,
}

/// A chunk read in place.
#[derive(Clone, Copy, Debug)]
pub struct ChunkReader<'a> {
    frames: &'a [u8],
    count: u32,
}

impl<'a> ChunkReader<'a> {
    /// Checks the padding and header of `value`.
    pub fn new(value: &'a [u8]) -> Result<Self, ChunkError> {
        let Some(&pad) = value.first() else {
            return bad("empty value");
        };
        let pad = pad as usize;
        if !(1..=MAX_PAD).contains(&pad) || value.len() < pad + CHUNK_HEADER {
            return bad(format!("padding {pad} in a value of {} bytes", value.len()));
        }
        if &value[pad..pad + 8] != MAGIC {
            return bad("no chunk magic");
        }
        let count = get_u32(value, pad + 8).unwrap_or(0);
        Ok(ChunkReader {
            frames: &value[pad + CHUNK_HEADER..],
            count,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the chunk holds no frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frames, each checked against the bytes it claims.
    pub fn frames(&self) -> impl Iterator<Item = Result<FrameRef<'a>, ChunkError>> + 'a {
        let mut rest = self.frames;
        let mut left = self.count;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let frame = FrameRef::parse(rest);
            match &frame {
                Ok(f) => rest = &rest[f.bytes.len()..],
                Err(_) => left = 0,
            }
            Some(frame)
        })
    }
}

/// One frame of a chunk, borrowed: its arrays are views of the store's bytes.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    bytes: &'a [u8],
    fields: usize,
}

impl<'a> FrameRef<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, ChunkError> {
        let (Some(fields), Some(len)) = (get_u32(b, 16), get_u32(b, 20)) else {
            return bad("truncated frame header");
        };
        let (fields, len) = (fields as usize, len as usize);
        let table = fields.checked_mul(FIELD_ENTRY).and_then(|t| t.checked_add(FRAME_HEADER));
        if len > b.len() || table.is_none_or(|t| t > len) || len % 8 != 0 {
            return bad(format!("frame of {len} bytes with {fields} fields in {} bytes", b.len()));
        }
        let frame = FrameRef { bytes: &b[..len], fields };
        for i in 0..fields {
            let e = FRAME_HEADER + FIELD_ENTRY * i;
            let Entry { name, kind, data } = frame.entry(i);
            let ok = name.is_some()
                && matches!(kind, KIND_SCALAR | KIND_WAVEFORM | KIND_IMAGE)
                && (kind == KIND_SCALAR
                    || data.is_some_and(|(at, n)| {
                        at % 8 == 0 && n.checked_mul(8).and_then(|b| b.checked_add(at)).is_some_and(|end| end <= len)
                    }))
                && (kind != KIND_WAVEFORM || get_u32(b, e + 12) == Some(1));
            if !ok {
                return bad(format!("field {i} of frame {} is out of its frame", frame.seq()));
            }
        }
        Ok(frame)
    }

    /// Field `i`'s entry; `None`s where out of range.
    fn entry(&self, i: usize) -> Entry<'a> {
        let b = self.bytes;
        let e = FRAME_HEADER + FIELD_ENTRY * i;
        let name = get_u16(b, e + 2)
            .zip(get_u32(b, e + 4))
            .and_then(|(len, at)| b.get(at as usize..at as usize + len as usize));
        let kind = b.get(e).copied().unwrap_or(0);
        let data = get_u32(b, e + 8)
            .zip(get_u32(b, e + 12))
            .and_then(|(w, h)| (w as usize).checked_mul(h as usize))
            .zip(get_u32(b, e + 16))
            .map(|(n, at)| (at as usize, n));
        Entry { name, kind, data }
    }

    fn array(&self, at: usize, n: usize) -> Cow<'a, [f64]> {
        let bytes = &self.bytes[at..at + 8 * n];
        match bytemuck::try_cast_slice(bytes) {
            Ok(values) => Cow::Borrowed(values),
            // Not 8-aligned in this copy of the region: read it out.
            Err(_) => Cow::Owned(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
        }
    }

    /// An owned copy.
    pub fn to_frame(&self) -> Frame {
        Frame {
            seq: self.seq(),
            timestamp_ns: self.timestamp_ns(),
            fields: (0..self.fields)
                .filter_map(|i| {
                    let name = self.field_name(i)?.to_string();
                    Some((name, self.field(i)?.into_owned()))
                })
                .collect(),
        }
    }
}

impl Event for FrameRef<'_> {
    fn seq(&self) -> u64 {
        get_u64(self.bytes, 0).unwrap_or(0)
    }
    fn timestamp_ns(&self) -> u64 {
        get_u64(self.bytes, 8).unwrap_or(0)
    }
    fn field_count(&self) -> usize {
        self.fields
    }
    fn field_name(&self, i: usize) -> Option<&str> {
        if i >= self.fields {
            return None;
        }
        std::str::from_utf8(self.entry(i).name?).ok()
    }
    fn field_is(&self, i: usize, name: &str) -> bool {
        i < self.fields && self.entry(i).name == Some(name.as_bytes())
    }
    fn field(&self, i: usize) -> Option<FieldRef<'_>> {
        if i >= self.fields {
            return None;
        }
        let e = FRAME_HEADER + FIELD_ENTRY * i;
        let Entry { kind, data, .. } = self.entry(i);
        let (at, n) = data?;
        Some(match kind {
            KIND_SCALAR => FieldRef::Scalar(f64::from_bits(get_u64(self.bytes, e + 24)?)),
            KIND_WAVEFORM => FieldRef::Waveform(self.array(at, n)),
            _ => FieldRef::Image {
                width: get_u32(self.bytes, e + 8)?,
                height: get_u32(self.bytes, e + 12)?,
                pixels: self.array(at, n),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            timestamp_ns: 1_000 + seq,
            fields: vec![
                ("energy".into(), FieldValue::Scalar(seq as f64 + 0.5)),
                ("wave".into(), FieldValue::Waveform(vec![1.0, -2.0, f64::MAX])),
                (
                    "cam".into(),
                    FieldValue::Image {
                        width: 3,
                        height: 2,
                        pixels: vec![1.0, 2.0, 3.0, 4.0, 5.0, f64::NAN],
                    },
                ),
                ("é".into(), FieldValue::Waveform(vec![])),
            ],
        }
    }

    fn same(a: &Frame, b: &Frame) -> bool {
        // NaN pixels compare by bits.
        bincode::serde::encode_to_vec(a, bincode::config::standard()).unwrap()
            == bincode::serde::encode_to_vec(b, bincode::config::standard()).unwrap()
    }

    #[test]
    fn frames_round_trip_at_every_alignment() {
        let frames: Vec<Frame> = (0..5).map(frame).collect();
        let mut storage = vec![0u64; 200];
        for offset in 0..8 {
            let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut storage)[offset..];
            let mut writer = ChunkWriter::new(bytes).unwrap();
            for f in &frames {
                assert!(writer.push_frame(f));
            }
            let len = writer.len();
            let expected = CHUNK_HEADER
                + frames
                    .iter()
                    .map(|f| {
                        let specs: Vec<_> = f.fields.iter().map(|(n, v)| FieldSpec::of(n, v)).collect();
                        frame_bytes(&specs)
                    })
                    .sum::<usize>();
            assert_eq!(len - bytes[0] as usize, expected);
            let reader = ChunkReader::new(&bytes[..len]).unwrap();
            assert_eq!(reader.len(), 5);
            let read: Vec<FrameRef<'_>> = reader.frames().collect::<Result<_, _>>().unwrap();
            for (r, f) in read.iter().zip(&frames) {
                assert!(same(&r.to_frame(), f), "offset {offset}");
                // Written aligned: arrays are borrowed, not copied.
                assert!(matches!(
                    r.field(2),
                    Some(FieldRef::Image {
                        pixels: Cow::Borrowed(_),
                        ..
                    })
                ));
            }
        }
    }

    #[test]
    fn a_copy_at_another_alignment_still_reads() {
        let mut storage = vec![0u64; 100];
        let bytes = bytemuck::cast_slice_mut::<u64, u8>(&mut storage);
        let mut writer = ChunkWriter::new(&mut bytes[..]).unwrap();
        assert!(writer.push_frame(&frame(7)));
        let len = writer.len();
        let mut moved = vec![0u8; len + 1];
        moved[1..].copy_from_slice(&bytes[..len]);
        let reader = ChunkReader::new(&moved[1..]).unwrap();
        let read = reader.frames().next().unwrap().unwrap();
        assert!(same(&read.to_frame(), &frame(7)));
    }

    #[test]
    fn writes_in_place_and_refuses_what_does_not_fit() {
        let mut storage = vec![0u64; 40];
        let bytes = bytemuck::cast_slice_mut::<u64, u8>(&mut storage);
        let mut writer = ChunkWriter::new(&mut bytes[..]).unwrap();
        let fields = [
            FieldSpec {
                name: "x",
                shape: FieldShape::Scalar(2.5),
            },
            FieldSpec {
                name: "img",
                shape: FieldShape::Image { width: 4, height: 4 },
            },
        ];
        let mut out = writer.push(9, 90, &fields).unwrap();
        out.array(1).iter_mut().enumerate().for_each(|(i, p)| *p = i as f64);
        assert!(out.array(0).is_empty() && out.array(5).is_empty());
        assert!(writer.push(10, 100, &fields).is_none(), "a second frame does not fit");
        let len = writer.len();
        let read = ChunkReader::new(&bytes[..len]).unwrap().frames().next().unwrap().unwrap();
        assert_eq!((read.seq(), read.timestamp_ns(), read.field_name(1)), (9, 90, Some("img")));
        let Some(FieldRef::Image {
            width: 4,
            height: 4,
            pixels,
        }) = read.field(1)
        else {
            panic!("image")
        };
        assert_eq!(pixels[15], 15.0);
    }

    #[test]
    fn corrupt_chunks_are_errors_not_panics() {
        let mut storage = vec![0u64; 100];
        let bytes = bytemuck::cast_slice_mut::<u64, u8>(&mut storage);
        let mut writer = ChunkWriter::new(&mut bytes[..]).unwrap();
        assert!(writer.push_frame(&frame(1)));
        let len = writer.len();
        let good = bytes[..len].to_vec();
        assert!(ChunkReader::new(&[]).is_err());
        assert!(ChunkReader::new(&good[..5]).is_err());
        // Every truncation and every single-byte change: an error or frames, never a panic.
        for cut in 0..good.len() {
            if let Ok(r) = ChunkReader::new(&good[..cut]) {
                for f in r.frames().flatten() {
                    let _ = f.to_frame();
                }
            }
        }
        for at in 0..good.len() {
            let mut broken = good.clone();
            broken[at] ^= 0xA5;
            if let Ok(r) = ChunkReader::new(&broken) {
                for f in r.frames().flatten() {
                    let _ = f.to_frame();
                }
            }
        }
    }
}
