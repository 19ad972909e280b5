//! A count of repeated occurrences that is reported at most once per interval, so that a
//! condition met thousands of times a second makes one log line, not thousands.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts occurrences and says when to report them: at the first, then at most once per interval.
pub(crate) struct RateLimitedCount {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedCount {
    pub(crate) const fn new(interval: Duration) -> Self {
        RateLimitedCount {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one; `Some(count since the last report)` when it is time to report.
    pub(crate) fn note(&self) -> Option<u64> {
        self.note_at(Instant::now())
    }

    /// Counts one and reports it now, whenever the last report was (a last chance to say it):
    /// the count since the last report.
    pub(crate) fn report_now(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        *last = Some(Instant::now());
        std::mem::take(count)
    }

    /// [`Self::note`] at time `now`.
    fn note_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        if last.is_some_and(|at| now.saturating_duration_since(at) < self.interval) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_count_reports_the_first_then_once_per_interval() {
        let count = RateLimitedCount::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(count.note_at(at(0)), Some(1));
        assert_eq!((count.note_at(at(1)), count.note_at(at(9))), (None, None));
        // The two held back, and this one.
        assert_eq!(count.note_at(at(10)), Some(3));
        assert_eq!(count.note_at(at(15)), None);
        // On the real clock, the first counts at once.
        let count = RateLimitedCount::new(Duration::from_secs(10));
        assert_eq!(count.note(), Some(1));
        assert_eq!(count.note(), None);
        // A report now counts the one held back, then the interval starts again.
        assert_eq!(count.report_now(), 2);
        assert_eq!(count.note(), None);
    }
}
