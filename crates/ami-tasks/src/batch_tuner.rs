//! The batch size, tuned while the data sources are behind their stream.
//!
//! How many frames a round should carry depends on the host, and changes with it from one minute
//! to the next. Small batches of large frames stay in the last-level cache, and each frame then
//! costs little, but every round costs a few Legion launches. Large batches make the launches
//! cheap per frame, but their frames go through memory. Which of the two wins depends on how much
//! of the cache and of the memory bandwidth the host's other tenants leave. The benchmark of
//! 512×512 frames on 2 cores saw batch 2 do 8,600 frames/s and batch 64 20,200 in one minute, and
//! batch 2 17,400 and batch 64 16,500 in another (docs/benchmarks.md).
//!
//! So while every batch comes back full (the sources are behind: throughput is what counts), a
//! [`BatchTuner`] measures the pipeline's event rate at the size in use, then at its neighbours on
//! a ladder of sizes (each twice the one before), and moves to a neighbour that does better.
//! - A neighbour that did better is measured against the size in use once more, after it: it
//!   must beat both measurements by 3%, so that a host that sped up meanwhile is not taken for a
//!   better size.
//! - It climbs on while that pays.
//! - After a cycle it holds the size for a while (3 s, up to 12 s while cycles change nothing),
//!   then measures again: the host changes.
//! - The first cycle, and every third one after it, probes three rungs away (8 times larger or
//!   smaller), to cross a valley between the two regimes.
//! - Away from the initial size, every cycle probes the initial size first. That size is the one
//!   that fits the cache, and it is where a host that was slow for a while is fastest again: a
//!   slow phase favours large batches, and the sizes between them and the initial one do about
//!   the same, so climbing back rung by rung would not pay at any step (seen on the benchmark's
//!   host: 4,900 frames/s at batch 2 during such a phase, 11,000 after it, 8,000-8,600 at 4-32
//!   in both).
//! - A size that did 15% less than the one in use is not probed again for a minute; the initial
//!   size is probed all the same, at most once a cycle.
//! - While the sources keep up with their stream, it holds the size: batches are not full then,
//!   and the rate is the stream's, not the pipeline's.
//!
//! Measurements start with the first report that covers a round launched at the size measured,
//! so rounds still in flight at the old size do not count.

use std::time::{Duration, Instant};

/// How long one size is measured.
pub const MEASURE: Duration = Duration::from_millis(400);
/// How long a size is kept after a cycle of probes that changed it; each cycle in a row that
/// changes nothing doubles that, up to [`MAX_HOLD`]: probes cost throughput when the size in use is
/// best already.
pub const HOLD: Duration = Duration::from_secs(3);
pub const MAX_HOLD: Duration = Duration::from_secs(12);
/// How much more a probed size must do to be taken (3%): less is within a measurement's noise.
pub const MARGIN: f64 = 0.03;
/// Rungs below the initial size on the ladder: the ladder starts at an eighth of it.
const RUNGS_BELOW: u32 = 3;
/// A probed size that did this much less than the size in use (15%) is not probed again for
/// [`SHUN`]: a probe of it costs more than a probe's share of the time.
pub const SHUN_MARGIN: f64 = 0.15;
pub const SHUN: Duration = Duration::from_secs(60);
/// How far the probes of the first cycle and of every third one after it reach.
const FAR: usize = 3;

/// What a cycle does next when a probe does not pay.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Otherwise {
    /// After the probe of the initial size: the cycle's own probes.
    CycleProbes,
    /// After the cycle's first probe: the same reach on the other side of the size in use.
    OtherSide,
    /// After the other side, or a climb past a size just taken: the cycle ends.
    EndCycle,
}

/// Where the tuner is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// Measuring the size in use, as the reference for the probes.
    Reference,
    /// Measuring the rung `rung`, against the size in use's `reference` rate (events/s).
    Probe { rung: usize, reference: f64, otherwise: Otherwise },
    /// The probe of `rung` did `probe_rate`, more than the `reference` measured before it:
    /// measuring the size in use again, so that a host that sped up meanwhile is not taken for a
    /// better size.
    Confirm {
        rung: usize,
        reference: f64,
        probe_rate: f64,
        otherwise: Otherwise,
    },
    /// Keeping the size in use until then.
    Hold { until: Instant },
}

/// A measurement of the size in use at the time: from the first report covering round
/// `from_round` (set when the first round at that size is launched), the events since then.
#[derive(Clone, Copy, Debug)]
struct Measurement {
    from_round: Option<u64>,
    start: Option<(Instant, u64)>,
}

impl Measurement {
    fn new() -> Self {
        Self {
            from_round: None,
            start: None,
        }
    }
}

/// A change of size the tuner made, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Adopted {
    pub from: usize,
    pub to: usize,
    /// Events/s measured at `from` and at `to`.
    pub from_rate: f64,
    pub to_rate: f64,
}

/// Picks the batch size of each round (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct BatchTuner {
    /// The sizes it may use, ascending.
    ladder: Vec<usize>,
    /// The rung in use (outside probes).
    current: usize,
    /// The initial size's rung, probed first by every cycle that starts away from it.
    home: usize,
    step: Step,
    measurement: Measurement,
    cycles: u64,
    /// Cycles in a row that kept the size, and whether the one under way changed it.
    quiet_cycles: u32,
    changed: bool,
    /// Per rung: not probed before then ([`SHUN_MARGIN`]).
    shunned_until: Vec<Option<Instant>>,
}

impl BatchTuner {
    /// A tuner that starts at `initial` frames and uses sizes from an eighth of it up to
    /// `largest`, doubling (never above `largest`, except `initial` itself).
    pub fn new(initial: usize, largest: usize) -> Self {
        let initial = initial.max(1);
        let mut ladder: Vec<usize> = (1..=RUNGS_BELOW).rev().map(|k| initial >> k).filter(|&s| s >= 1).collect();
        ladder.dedup();
        let current = ladder.len();
        let mut size = initial;
        ladder.push(size);
        while let Some(next) = size.checked_mul(2).filter(|&n| n <= largest) {
            ladder.push(next);
            size = next;
        }
        Self::on(ladder, current)
    }

    /// A tuner that never changes `size`.
    pub fn fixed(size: usize) -> Self {
        Self::on(vec![size.max(1)], 0)
    }

    /// A tuner on `ladder`, starting at rung `current`.
    fn on(ladder: Vec<usize>, current: usize) -> Self {
        Self {
            shunned_until: vec![None; ladder.len()],
            ladder,
            current,
            home: current,
            step: Step::Reference,
            measurement: Measurement::new(),
            cycles: 0,
            quiet_cycles: 0,
            changed: false,
        }
    }

    /// The largest size it may use (what the telemetry buffers must hold).
    pub fn largest(&self) -> usize {
        *self.ladder.last().expect("never empty")
    }

    /// The size it uses outside probes.
    pub fn current(&self) -> usize {
        self.ladder[self.current]
    }

    /// The size of the rounds launched now.
    pub fn size(&self) -> usize {
        match self.step {
            Step::Probe { rung, .. } => self.ladder[rung],
            _ => self.current(),
        }
    }

    /// Round `round` is launched now, at [`Self::size`].
    pub fn launched(&mut self, round: u64) {
        self.measurement.from_round.get_or_insert(round);
    }

    /// The report covering the rounds up to `round`, with `events` merged since the start,
    /// arrived at `now`; `behind` tells whether the sources filled their batches. Returns the
    /// change of size when it took another one.
    pub fn reported(&mut self, round: u64, events: u64, now: Instant, behind: bool) -> Option<Adopted> {
        if self.ladder.len() == 1 {
            return None;
        }
        if !behind {
            // The stream's rate, not the pipeline's: keep the size, measure again once behind.
            self.hold_until(now + HOLD);
            return None;
        }
        if let Step::Hold { until } = self.step {
            if now >= until {
                self.step = Step::Reference;
                self.measurement = Measurement {
                    from_round: Some(round + 1),
                    start: None,
                };
            }
            return None;
        }
        if self.measurement.from_round.is_none_or(|from| round < from) {
            return None;
        }
        let Some((start, events_at_start)) = self.measurement.start else {
            self.measurement.start = Some((now, events));
            return None;
        };
        let elapsed = now.duration_since(start);
        if elapsed < MEASURE {
            return None;
        }
        let rate = events.saturating_sub(events_at_start) as f64 / elapsed.as_secs_f64();
        self.measured(rate, now)
    }

    /// The size being measured did `rate` events/s.
    fn measured(&mut self, rate: f64, now: Instant) -> Option<Adopted> {
        match self.step {
            Step::Reference => {
                if self.current != self.home {
                    self.probe(self.home, rate, Otherwise::CycleProbes);
                } else {
                    self.cycle_probes(rate, now);
                }
                None
            }
            Step::Probe {
                rung,
                reference,
                otherwise,
            } => {
                if rate > reference * (1.0 + MARGIN) {
                    self.step = Step::Confirm {
                        rung,
                        reference,
                        probe_rate: rate,
                        otherwise,
                    };
                    self.measurement = Measurement::new();
                    return None;
                }
                if rate < reference * (1.0 - SHUN_MARGIN) && rung != self.home {
                    self.shunned_until[rung] = Some(now + SHUN);
                }
                self.not_paid(rung, reference, otherwise, now);
                None
            }
            Step::Confirm {
                rung,
                reference,
                probe_rate,
                otherwise,
            } => {
                if probe_rate <= reference.max(rate) * (1.0 + MARGIN) {
                    self.not_paid(rung, rate, otherwise, now);
                    return None;
                }
                let adopted = Adopted {
                    from: self.current(),
                    to: self.ladder[rung],
                    from_rate: reference.max(rate),
                    to_rate: probe_rate,
                };
                let up = rung > self.current;
                self.current = rung;
                self.changed = true;
                // Climb on in the direction that paid, one rung at a time.
                match self.rung_towards(up, 1, now) {
                    Some(next) => self.probe(next, probe_rate, Otherwise::EndCycle),
                    None => self.end_cycle(now),
                }
                Some(adopted)
            }
            Step::Hold { .. } => None,
        }
    }

    /// The cycle's own probes, against the size in use measured at `reference`: one rung away,
    /// or [`FAR`] in the first cycle and every third one, on one side first, then the other.
    fn cycle_probes(&mut self, reference: f64, now: Instant) {
        let reach = if self.cycles % 3 == 0 { FAR } else { 1 };
        // Alternate which side is probed first, so that neither is favoured.
        let up_first = self.cycles % 2 == 0;
        let first = self.cycle_rung(up_first, reach, now);
        match first.or_else(|| self.cycle_rung(!up_first, reach, now)) {
            Some(rung) => self.probe(rung, reference, Otherwise::OtherSide),
            None => self.end_cycle(now),
        }
    }

    /// After a probe of `rung` that did not pay, against the size in use measured at
    /// `reference`: what `otherwise` says.
    fn not_paid(&mut self, rung: usize, reference: f64, otherwise: Otherwise, now: Instant) {
        match otherwise {
            Otherwise::CycleProbes => self.cycle_probes(reference, now),
            Otherwise::OtherSide => {
                let up = rung > self.current;
                let reach = rung.abs_diff(self.current);
                match self.cycle_rung(!up, reach, now) {
                    Some(other) => self.probe(other, reference, Otherwise::EndCycle),
                    None => self.end_cycle(now),
                }
            }
            Otherwise::EndCycle => self.end_cycle(now),
        }
    }

    /// The rung `reach` rungs above (`up`) or below the one in use, or the last one that way
    /// when the ladder ends sooner; `None` when the size in use is already at that end, or that
    /// rung is shunned at `now`.
    fn rung_towards(&self, up: bool, reach: usize, now: Instant) -> Option<usize> {
        let rung = if up {
            (self.current + reach).min(self.ladder.len() - 1)
        } else {
            self.current.saturating_sub(reach)
        };
        let shunned = self.shunned_until[rung].is_some_and(|until| now < until);
        (rung != self.current && !shunned).then_some(rung)
    }

    /// [`rung_towards`](Self::rung_towards) for the cycle's own probes, which leave out the initial
    /// size: a cycle probed it already when it started away from it.
    fn cycle_rung(&self, up: bool, reach: usize, now: Instant) -> Option<usize> {
        self.rung_towards(up, reach, now).filter(|&rung| rung != self.home)
    }

    fn probe(&mut self, rung: usize, reference: f64, otherwise: Otherwise) {
        self.step = Step::Probe {
            rung,
            reference,
            otherwise,
        };
        self.measurement = Measurement::new();
    }

    fn end_cycle(&mut self, now: Instant) {
        self.cycles += 1;
        self.quiet_cycles = if self.changed { 0 } else { self.quiet_cycles.saturating_add(1) };
        self.changed = false;
        let hold = HOLD.saturating_mul(1 << self.quiet_cycles.min(8)).min(MAX_HOLD);
        self.hold_until(now + hold);
    }

    /// Back to the size in use, kept until `until`.
    fn hold_until(&mut self, until: Instant) {
        self.step = Step::Hold { until };
        self.measurement = Measurement::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a tuner against a pipeline whose event rate at each batch size is
    /// `rate(size, rounds reported before)`,
    /// with reports every 10 ms and 4 rounds in flight; returns the sizes in use, one per second.
    fn drive(tuner: &mut BatchTuner, seconds: u64, mut rate: impl FnMut(usize, u32) -> f64) -> Vec<usize> {
        let start = Instant::now();
        let tick = Duration::from_millis(10);
        let mut in_flight = std::collections::VecDeque::new();
        let (mut events, mut round) = (0f64, 0u64);
        let mut per_second = Vec::new();
        for step in 1..=seconds * 100 {
            let now = start + tick * step as u32;
            let size = tuner.size();
            tuner.launched(round);
            in_flight.push_back((round, size));
            round += 1;
            if in_flight.len() > 4 {
                let (done, size) = in_flight.pop_front().unwrap();
                events += rate(size, done as u32) * tick.as_secs_f64();
                tuner.reported(done, events as u64, now, true);
            }
            if step % 100 == 0 {
                per_second.push(tuner.current());
            }
        }
        per_second
    }

    /// Drives a tuner for `seconds` as [`drive`] does; returns, per round reported, whether it
    /// ran at another size than `kept`.
    fn probing(tuner: &mut BatchTuner, seconds: u64, kept: usize, rate: impl Fn(usize) -> f64) -> Vec<bool> {
        let mut probing = Vec::new();
        drive(tuner, seconds, |s, _| {
            probing.push(s != kept);
            rate(s)
        });
        probing
    }

    /// The share of `true` in `part`.
    fn share(part: &[bool]) -> f64 {
        part.iter().filter(|&&p| p).count() as f64 / part.len() as f64
    }

    #[test]
    fn the_ladder_doubles_from_an_eighth_of_the_initial_size_to_the_largest() {
        assert_eq!(BatchTuner::new(2, 32).ladder, vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(BatchTuner::new(31, 496).ladder, vec![3, 7, 15, 31, 62, 124, 248, 496]);
        assert_eq!(BatchTuner::new(1, 1).ladder, vec![1]);
        let tuner = BatchTuner::new(2, 32);
        assert_eq!((tuner.current(), tuner.size(), tuner.largest()), (2, 2, 32));
    }

    #[test]
    fn it_climbs_to_the_best_size_and_stays_there() {
        // Memory-bound minute: larger is better up to 32.
        let mut tuner = BatchTuner::new(2, 64);
        let sizes = drive(&mut tuner, 30, |s, _| {
            [8_600.0, 9_300.0, 12_000.0, 14_800.0, 17_200.0, 20_500.0, 20_600.0][s.trailing_zeros() as usize]
        });
        assert_eq!(sizes.last(), Some(&32), "{sizes:?}");
        assert!(sizes[10..].iter().all(|&s| s >= 32), "{sizes:?}");
    }

    #[test]
    fn it_keeps_a_size_that_is_best_already() {
        // Cache-bound minute: 2 is best, its neighbours 10% worse.
        let mut tuner = BatchTuner::new(2, 64);
        let sizes = drive(&mut tuner, 30, |s, _| if s == 2 { 17_400.0 } else { 15_600.0 });
        assert!(sizes.iter().all(|&s| s == 2), "{sizes:?}");
    }

    #[test]
    fn probes_grow_rarer_while_the_size_in_use_stays_best() {
        let mut tuner = BatchTuner::new(2, 64);
        let probing = probing(&mut tuner, 120, 2, |s| if s == 2 { 17_400.0 } else { 15_600.0 });
        let (first, last) = (share(&probing[..2_000]), share(&probing[probing.len() - 6_000..]));
        assert!(
            last < 0.08 && last < first,
            "probing {first:.3} of the first 20 s, {last:.3} of the last 60 s"
        );
    }

    #[test]
    fn a_much_worse_size_is_probed_at_most_once_a_minute() {
        // Batch 1 does 35% less than 2, every other size 5% less.
        let mut tuner = BatchTuner::new(2, 64);
        let (mut previous, mut probes_of_one) = (2, 0);
        let sizes = drive(&mut tuner, 125, |s, _| {
            if s == 1 && previous != 1 {
                probes_of_one += 1;
            }
            previous = s;
            match s {
                1 => 11_300.0,
                2 => 17_400.0,
                _ => 16_500.0,
            }
        });
        assert!(sizes.iter().all(|&s| s == 2), "{sizes:?}");
        assert!((1..=3).contains(&probes_of_one), "{probes_of_one} probes of batch 1 in 125 s");
    }

    #[test]
    fn a_host_that_speeds_up_during_a_probe_is_not_taken_for_a_better_size() {
        // Every size does the same, 10% more each second: a probe always beats the measurement
        // before it (by 4%), never the one after it.
        let mut tuner = BatchTuner::new(2, 64);
        let sizes = drive(&mut tuner, 30, |_, reported| 15_000.0 * (1.0 + 0.1 * f64::from(reported) / 100.0));
        assert!(sizes.iter().all(|&s| s == 2), "{sizes:?}");
    }

    #[test]
    fn the_far_probe_crosses_a_valley() {
        // 2 is a local best; 16 and more are better still, past a valley at 4-8.
        let mut tuner = BatchTuner::new(2, 64);
        let sizes = drive(&mut tuner, 60, |s, _| match s {
            1 => 11_800.0,
            2 => 17_400.0,
            4 | 8 => 15_200.0,
            16 => 18_500.0,
            32 => 19_600.0,
            _ => 21_300.0,
        });
        assert_eq!(sizes.last(), Some(&64), "{sizes:?}");
    }

    #[test]
    fn it_follows_the_host_when_the_best_size_changes() {
        let mut tuner = BatchTuner::new(2, 64);
        // The first 30 s (3,000 rounds reported) favour 64, the next 30 s 2.
        let sizes = drive(&mut tuner, 60, |s, reported| {
            let rungs_from_best = if reported < 3_000 {
                6 - s.trailing_zeros()
            } else {
                s.trailing_zeros().abs_diff(1)
            };
            20_000.0 - 1_500.0 * rungs_from_best as f64
        });
        assert_eq!(sizes[29], 64, "{sizes:?}");
        assert_eq!(sizes.last(), Some(&2), "{sizes:?}");
    }

    #[test]
    fn it_goes_back_to_the_initial_size_when_a_slow_phase_ends() {
        // The benchmark host's two states (frames/s at batches 1-32): during a slow phase the
        // largest batch is best; after it the initial size, 2, is best by far, while 4-32 stay
        // within 3% of each other, so that no single rung down from 32 pays.
        let slow = [3_500.0, 4_900.0, 6_000.0, 7_200.0, 7_700.0, 8_400.0];
        let fast = [7_000.0, 11_000.0, 8_600.0, 8_350.0, 8_300.0, 8_400.0];
        let mut tuner = BatchTuner::new(2, 32);
        // The first 10 s (1,000 rounds reported) are slow.
        let sizes = drive(&mut tuner, 60, |s, reported| {
            let rates = if reported < 1_000 { &slow } else { &fast };
            rates[s.trailing_zeros() as usize]
        });
        assert_eq!(sizes[9], 32, "{sizes:?}");
        // Cycles start at most 12 s apart; one from 32 probes 2 first.
        assert!(sizes[25..].iter().all(|&s| s == 2), "{sizes:?}");
    }

    #[test]
    fn probes_of_the_initial_size_cost_little_while_another_size_is_best() {
        let mut tuner = BatchTuner::new(2, 32);
        let probing = probing(&mut tuner, 120, 32, |s| {
            [8_600.0, 9_300.0, 12_000.0, 14_800.0, 17_200.0, 20_500.0][s.trailing_zeros() as usize]
        });
        let last = share(&probing[probing.len() - 6_000..]);
        assert!(last < 0.08, "probing {last:.3} of the last 60 s");
    }

    #[test]
    fn a_fixed_tuner_and_sources_that_keep_up_change_nothing() {
        let mut fixed = BatchTuner::fixed(8);
        assert!(drive(&mut fixed, 10, |s, _| s as f64 * 1000.0).iter().all(|&s| s == 8));
        let mut tuner = BatchTuner::new(2, 64);
        let now = Instant::now();
        for round in 0..1000u64 {
            tuner.launched(round);
            assert_eq!(
                tuner.reported(round, round * 10, now + Duration::from_millis(round * 10), false),
                None
            );
        }
        assert_eq!((tuner.current(), tuner.size()), (2, 2));
    }

    #[test]
    fn rounds_in_flight_at_the_old_size_are_not_measured() {
        let mut tuner = BatchTuner::new(2, 64);
        let now = Instant::now();
        tuner.launched(5);
        // A report of round 4 (launched before the measurement began) does not start it.
        tuner.reported(4, 100, now, true);
        assert!(tuner.measurement.start.is_none());
        tuner.reported(5, 200, now, true);
        assert_eq!(tuner.measurement.start, Some((now, 200)));
    }
}
