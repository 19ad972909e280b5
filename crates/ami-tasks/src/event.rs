//! Events as the pipeline sees them, and time bins.
//!
//! An event is a telemetry [`Frame`]: a global sequence number, a time stamp and named values
//! (scalars, waveforms, images). Sequence numbers are global across partitions: with `P`
//! partitions, partition `p` handles the events with `seq % P == p`, so the same input gives the
//! same events whatever the partition count. Results are reduced per *time bin*: bin `b` holds the
//! events with `timestamp_ns` in `[b * width, (b + 1) * width)`, `width = 1e9 / display_rate_hz`.

pub use kv_region::{FieldValue, Frame};

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
