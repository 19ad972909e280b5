//! Heartbeats of this process: which task attempts are running since when, which rounds the
//! driver has in flight, and when the robustness monitor last looked. Tasks write their beats here
//! as they run (see [`crate::robust`]); the monitor's watcher thread reads them. They live in
//! process memory because a task cannot read a region another running task writes without
//! waiting for it — the very thing a watchdog must not do. The driver copies a summary into the
//! control store for `ami2 status`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Default)]
struct Board {
    /// Running attempts: label → (attempt, started).
    running: HashMap<String, (u32, Instant)>,
    /// Last finished attempt per label.
    finished: HashMap<String, Instant>,
    /// Driver rounds in flight: round → launched.
    rounds: BTreeMap<u64, Instant>,
    /// Last report the driver received.
    last_report: Option<Instant>,
    /// When the current run started.
    run_started: Option<Instant>,
    /// The newest incidents the driver recorded (for status pages), oldest first.
    recent_incidents: std::collections::VecDeque<KeyedIncident>,
    /// Last time a monitor looked.
    monitor_beat: Option<Instant>,
    /// Number of the current run in this process; monitors of older runs return.
    run: u64,
    /// Set when the current run ends: its monitors return.
    stop: bool,
}

fn board() -> MutexGuard<'static, Board> {
    static BOARD: OnceLock<Mutex<Board>> = OnceLock::new();
    BOARD.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks one attempt of a component as running until dropped.
pub struct Beat {
    label: String,
}

impl Beat {
    pub fn start(label: &str, attempt: u32) -> Self {
        board().running.insert(label.to_string(), (attempt, Instant::now()));
        Self { label: label.to_string() }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        let mut board = board();
        board.running.remove(&self.label);
        board.finished.insert(std::mem::take(&mut self.label), Instant::now());
    }
}

/// The driver launched `round`.
pub fn round_launched(round: u64) {
    board().rounds.insert(round, Instant::now());
}

/// The driver received the report of `round`.
pub fn round_reported(round: u64) {
    let mut board = board();
    board.rounds.remove(&round);
    board.last_report = Some(Instant::now());
}

/// A new run starts: forget the previous run's rounds and let its monitors run. Returns the run's
/// number (what its monitors are given).
pub fn reset() -> u64 {
    let mut board = board();
    board.rounds.clear();
    board.last_report = None;
    board.run_started = Some(Instant::now());
    board.monitor_beat = None;
    board.stop = false;
    board.run += 1;
    board.run
}

/// The number of the current run of this process (0: none started here).
pub fn current_run() -> u64 {
    board().run
}

/// Asks the monitors to return (end of the run).
pub fn stop_monitors() {
    board().stop = true;
}

/// Whether the monitors of run `run` must return (that run ended, or a newer one began).
pub(crate) fn monitors_stopped(run: u64) -> bool {
    let board = board();
    board.stop || board.run != run
}

/// How long ago a watcher last looked (none since the run started).
pub(crate) fn monitor_beat_age() -> Option<Duration> {
    board().monitor_beat.map(|t| t.elapsed())
}

pub(crate) fn monitor_beat() {
    board().monitor_beat = Some(Instant::now());
}

/// How long things may take before a monitor calls them stalled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StallLimits {
    /// Longest a single task attempt may run.
    pub attempt_ms: u64,
    /// Longest the oldest round may stay in flight with no report arriving meanwhile (catches
    /// components in other processes, whose beats are not visible here).
    pub round_ms: u64,
}

impl Default for StallLimits {
    fn default() -> Self {
        Self {
            attempt_ms: 15_000,
            round_ms: 30_000,
        }
    }
}

/// A component that stopped making progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    pub component: String,
    pub stalled_ms: u64,
    pub what: String,
    /// The attempt that stalled (1-based), 0 for a stall that is not one attempt's (a round).
    #[serde(default)]
    pub attempt: u32,
}

/// The stalls on this process's board now.
pub fn find_stalls(limits: &StallLimits) -> Vec<Stall> {
    let board = board();
    let now = Instant::now();
    let age = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
    let mut stalls: Vec<Stall> = board
        .running
        .iter()
        .filter(|(_, (_, started))| age(*started) > limits.attempt_ms)
        .map(|(label, (attempt, started))| Stall {
            component: label.clone(),
            stalled_ms: age(*started),
            what: format!("attempt {} has run for {} ms", attempt + 1, age(*started)),
            attempt: attempt + 1,
        })
        .collect();
    if let Some((round, launched)) = board.rounds.iter().next() {
        let quiet = board.last_report.map_or(age(*launched), |t| age(t).min(age(*launched)));
        if quiet > limits.round_ms {
            stalls.push(Stall {
                component: "pipeline".into(),
                stalled_ms: quiet,
                what: format!("round {round} in flight for {} ms with no report meanwhile", age(*launched)),
                attempt: 0,
            });
        }
    }
    stalls.sort_by(|a, b| a.component.cmp(&b.component));
    stalls
}

/// What the board shows, for status pages.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthSnapshot {
    /// Running attempts: label → (attempt, running for ms).
    pub running: BTreeMap<String, (u32, u64)>,
    /// Milliseconds since each component last finished an attempt.
    pub finished_ms_ago: BTreeMap<String, u64>,
    pub rounds_in_flight: usize,
    pub last_report_ms_ago: Option<u64>,
    pub monitor_beat_ms_ago: Option<u64>,
    /// Milliseconds since the pipeline run started (none before it starts).
    pub run_age_ms: Option<u64>,
    /// The newest incidents recorded in Control (at most [`RECENT_INCIDENTS`]), oldest first.
    pub recent_incidents: Vec<KeyedIncident>,
}

/// Incidents a status page shows.
pub const RECENT_INCIDENTS: usize = 20;

/// An incident and its key in Control (`ami2 get KEY` reads it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedIncident {
    pub key: String,
    #[serde(flatten)]
    pub incident: crate::robust::Incident,
}

/// Shows `incidents` (oldest first) as the recent ones, in place of those noted so far: what
/// Control holds when a run opens it.
pub fn show_incidents(incidents: &[KeyedIncident]) {
    board().recent_incidents.clear();
    note_incidents(incidents);
}

/// Notes incidents the driver recorded, for [`snapshot`].
pub fn note_incidents(incidents: &[KeyedIncident]) {
    let mut board = board();
    for incident in incidents {
        if board.recent_incidents.len() == RECENT_INCIDENTS {
            board.recent_incidents.pop_front();
        }
        board.recent_incidents.push_back(incident.clone());
    }
}

impl HealthSnapshot {
    /// Milliseconds the pipeline has been without news: since the last report, or since the
    /// run started when no report came yet.
    pub fn quiet_ms(&self) -> Option<u64> {
        self.last_report_ms_ago.or(self.run_age_ms)
    }
}

pub fn snapshot() -> HealthSnapshot {
    let board = board();
    let now = Instant::now();
    let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
    HealthSnapshot {
        running: board.running.iter().map(|(k, (a, t))| (k.clone(), (*a, ms(*t)))).collect(),
        finished_ms_ago: board.finished.iter().map(|(k, t)| (k.clone(), ms(*t))).collect(),
        rounds_in_flight: board.rounds.len(),
        last_report_ms_ago: board.last_report.map(ms),
        monitor_beat_ms_ago: board.monitor_beat.map(ms),
        run_age_ms: board.run_started.map(ms),
        recent_incidents: board.recent_incidents.iter().cloned().collect(),
    }
}

/// Sleeps up to `total`, waking early when the monitors of run `run` are told to stop.
pub(crate) fn sleep_unless_stopped(run: u64, total: Duration) {
    let step = Duration::from_millis(20);
    let until = Instant::now() + total;
    while !monitors_stopped(run) && Instant::now() < until {
        std::thread::sleep(step.min(until.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_attempt_is_named_by_its_number_from_1_in_text_and_field() {
        // The second attempt (index 1) of a component that runs too long.
        let _beat = Beat::start("test/stalled", 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let limits = StallLimits {
            attempt_ms: 1,
            round_ms: u64::MAX,
        };
        let stalls = find_stalls(&limits);
        let stall = stalls.iter().find(|s| s.component == "test/stalled").expect("the stall is found");
        assert_eq!(stall.attempt, 2);
        assert!(stall.what.starts_with("attempt 2 has run for"), "{}", stall.what);
    }
}
