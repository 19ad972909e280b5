//! Events as the pipeline sees them, and time bins.
//!
//! An event is a telemetry [`Frame`]: a global sequence number, a time stamp and named values
//! (scalars, waveforms, images). Sequence numbers are global across partitions: with `P`
//! partitions, partition `p` handles the events with `seq % P == p`, so the same input gives the
//! same events whatever the partition count. Results are reduced per *time bin*: bin `b` holds the
//! events with `timestamp_ns` in `[b * width, (b + 1) * width)`, `width = 1e9 / display_rate_hz`.

use std::borrow::Cow;

pub use kv_region::{FieldValue, Frame};

/// One field of an event, its arrays borrowed where they are stored.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldRef<'a> {
    Scalar(f64),
    Waveform(Cow<'a, [f64]>),
    Image { width: u32, height: u32, pixels: Cow<'a, [f64]> },
}

impl FieldRef<'_> {
    /// An owned copy.
    pub fn into_owned(self) -> FieldValue {
        match self {
            FieldRef::Scalar(x) => FieldValue::Scalar(x),
            FieldRef::Waveform(v) => FieldValue::Waveform(v.into_owned()),
            FieldRef::Image { width, height, pixels } => FieldValue::Image {
                width,
                height,
                pixels: pixels.into_owned(),
            },
        }
    }
}

/// What the graph reads of an event: an owned [`Frame`], or a frame read in place from the
/// telemetry store ([`FrameRef`](crate::frame_chunk::FrameRef)).
pub trait Event {
    fn seq(&self) -> u64;
    fn timestamp_ns(&self) -> u64;
    fn field_count(&self) -> usize;
    /// Name of field `i` (`None` past the last).
    fn field_name(&self, i: usize) -> Option<&str>;
    /// Value of field `i` (`None` past the last).
    fn field(&self, i: usize) -> Option<FieldRef<'_>>;
    /// Whether field `i` is called `name` (what the graph asks for every event).
    fn field_is(&self, i: usize, name: &str) -> bool {
        self.field_name(i) == Some(name)
    }
}

impl Event for Frame {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }
    fn field_count(&self) -> usize {
        self.fields.len()
    }
    fn field_name(&self, i: usize) -> Option<&str> {
        self.fields.get(i).map(|(name, _)| name.as_str())
    }
    fn field(&self, i: usize) -> Option<FieldRef<'_>> {
        Some(match &self.fields.get(i)?.1 {
            FieldValue::Scalar(x) => FieldRef::Scalar(*x),
            FieldValue::Waveform(v) => FieldRef::Waveform(Cow::Borrowed(v)),
            FieldValue::Image { width, height, pixels } => FieldRef::Image {
                width: *width,
                height: *height,
                pixels: Cow::Borrowed(pixels),
            },
        })
    }
}

/// Default display rate: bins per second.
pub const DEFAULT_DISPLAY_RATE_HZ: f64 = 20.0;

/// Width of a time bin in nanoseconds at `display_rate_hz` bins per second.
pub fn bin_width_ns(display_rate_hz: f64) -> u64 {
    (1e9 / display_rate_hz).round().max(1.0) as u64
}

/// The time bin of a time stamp.
pub fn bin_of(timestamp_ns: u64, bin_width_ns: u64) -> u64 {
    timestamp_ns / bin_width_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_at_the_display_rate() {
        let width = bin_width_ns(20.0);
        assert_eq!(width, 50_000_000);
        assert_eq!(bin_of(0, width), 0);
        assert_eq!(bin_of(49_999_999, width), 0);
        assert_eq!(bin_of(50_000_000, width), 1);
    }
}
