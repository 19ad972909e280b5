//! `RobustTask`: the common behaviour of every pipeline task. An attempt that fails (an error or
//! a panic) is retried under a bounded policy; every failed attempt becomes an [`Incident`] that
//! travels back to the driver in the task's report and is written to the control store. When the
//! attempts run out the task fails, the run ends with an error and the supervisor restarts the
//! service from its saved state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use legion_bridge::TaskError;
use serde::{Deserialize, Serialize};

use crate::{fault, health};

/// How often a failing task is tried.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Pause before the second attempt; doubled for each further one.
    pub first_backoff_ms: u64,
    /// Longest pause between attempts.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            first_backoff_ms: 10,
            max_backoff_ms: 500,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, failed_attempts: u32) -> Duration {
        let factor = 1u64 << failed_attempts.saturating_sub(1).min(16);
        Duration::from_millis(self.first_backoff_ms.saturating_mul(factor).min(self.max_backoff_ms))
    }
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// An attempt panicked.
    Panic,
    /// An attempt returned an error.
    Error,
    /// A component made no progress for too long (found by a robustness monitor).
    Stall,
    /// A component was started again (a monitor relaunched, the service restarted).
    Restart,
    /// A graph failed on an event at run time; workers went back to the last good graph.
    GraphFailure,
    /// Results was too small for the graph's values: the oldest bins were dropped early.
    ResultsFull,
    /// The service started with another partition count than its data sources' saved positions
    /// had; they were converted (a notice, not a failure).
    PartitionsChanged,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::Error => "error",
            Self::Stall => "stall",
            Self::Restart => "restart",
            Self::GraphFailure => "graph_failure",
            Self::ResultsFull => "results_full",
            Self::PartitionsChanged => "partitions_changed",
        }
    }
}

/// One failure of one component, as recorded under `/incident/` in the control store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Component label, e.g. `worker/1` or `global_reducer`.
    pub component: String,
    pub kind: IncidentKind,
    /// Attempt that failed (1-based; 0 when not about an attempt).
    pub attempt: u32,
    pub message: String,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Whether a later attempt succeeded.
    pub recovered: bool,
}

/// Longest incident message kept (bytes); longer ones are cut, so that incidents stay small in
/// Control and in the bounded reports of data sources.
pub const MAX_INCIDENT_MESSAGE: usize = 2048;

impl Incident {
    pub fn new(component: &str, kind: IncidentKind, attempt: u32, message: impl Into<String>) -> Self {
        let mut message = message.into();
        cut(&mut message, MAX_INCIDENT_MESSAGE);
        Self {
            component: component.to_string(),
            kind,
            attempt,
            message,
            at_ms: now_ms(),
            recovered: false,
        }
    }

    /// Key under which the incident is stored (time first, so a listing is in time order).
    pub fn key(&self, sequence: u64) -> String {
        format!("/incident/{:015}-{sequence:06}-{}", self.at_ms, self.component.replace('/', "-"))
    }
}

/// Cuts `text` to at most `max` bytes (`max` ≥ 3), on a character boundary, ending it with "...".
pub(crate) fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let keep = (0..=max.saturating_sub(3)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(keep);
        text.push_str("...");
    }
}

/// Incident messages are cut to this when a bounded report has to shrink.
pub const SHORT_INCIDENT_MESSAGE: usize = 200;

/// Shrinks the incidents of a report whose size is bounded until `fits(report)`: first their
/// messages are cut to [`SHORT_INCIDENT_MESSAGE`], then the oldest are left out, replaced by one
/// incident that counts them (with the first one's time). The newest incident is always kept.
/// Nothing is lost unseen: every incident was logged in full when it happened ([`run`]).
pub(crate) fn fit_incidents<R>(report: &mut R, incidents_of: impl Fn(&mut R) -> &mut Vec<Incident>, fits: impl Fn(&R) -> bool) {
    if fits(report) {
        return;
    }
    for incident in incidents_of(report).iter_mut() {
        cut(&mut incident.message, SHORT_INCIDENT_MESSAGE);
    }
    let mut left_out: Option<(Incident, usize)> = None;
    while !fits(report) {
        let incidents = incidents_of(report);
        // The summary (once there is one) stays first; the oldest real incident goes.
        let oldest = usize::from(left_out.is_some());
        if incidents.len() <= oldest + 1 {
            return;
        }
        let dropped = incidents.remove(oldest);
        let (first, count) = left_out.get_or_insert_with(|| (dropped.clone(), 0));
        *count += 1;
        first.recovered &= dropped.recovered;
        let summary = Incident {
            component: first.component.clone(),
            kind: first.kind,
            attempt: 0,
            message: format!("{count} earlier incident(s) left out of this bounded report; the log has them"),
            at_ms: first.at_ms,
            recovered: first.recovered,
        };
        if *count == 1 {
            incidents.insert(0, summary);
        } else {
            incidents[0] = summary;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Outcome of a robust task body: its result, and the incidents on the way to it.
pub struct Attempted<R> {
    pub result: Result<R, TaskError>,
    pub incidents: Vec<Incident>,
}

/// Runs `body` (given the 0-based attempt number) as component `label` until an attempt succeeds
/// or the policy's attempts are used up. Heartbeats mark each attempt's start and end, and
/// injected faults (see [`fault`]) strike at the start of an attempt.
pub fn run<R>(label: &str, policy: &RetryPolicy, mut body: impl FnMut(u32) -> Result<R, TaskError>) -> Attempted<R> {
    let mut incidents: Vec<Incident> = Vec::new();
    let attempts = policy.attempts.max(1);
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(policy.backoff(attempt));
        }
        let beat = health::Beat::start(label, attempt);
        let outcome = legion_bridge::catch_panic(|| {
            fault::inject(label, attempt).map_err(TaskError::msg)?;
            body(attempt)
        });
        drop(beat);
        let (kind, message) = match outcome {
            Ok(Ok(value)) => {
                for incident in &mut incidents {
                    incident.recovered = true;
                }
                return Attempted {
                    result: Ok(value),
                    incidents,
                };
            }
            // Another attempt would read the same failed input: that task's failure is the one
            // to report (and it recorded its incidents), not a cascade of this one's attempts.
            Ok(Err(error)) if error.is_input_failure() => {
                tracing::debug!(component = label, "an input failed: {error}");
                return Attempted {
                    result: Err(error),
                    incidents,
                };
            }
            Ok(Err(error)) => (IncidentKind::Error, error.to_string()),
            Err(panic) => (IncidentKind::Panic, format!("panicked: {panic}")),
        };
        tracing::warn!(component = label, attempt = attempt + 1, of = attempts, "attempt failed: {message}");
        incidents.push(Incident::new(label, kind, attempt + 1, message));
    }
    let last = incidents.last().map(|i| i.message.clone()).unwrap_or_default();
    Attempted {
        result: Err(TaskError::msg(format!("{label} failed {attempts} times; last: {last}"))),
        incidents,
    }
}

/// Runs a robust task body ([`run`]) and puts the incidents of its failed attempts into the
/// report it returns (`incidents_of` finds the report's list), so they reach the driver.
pub(crate) fn robustly<R>(
    label: &str,
    retry: &RetryPolicy,
    body: impl FnMut(u32) -> Result<R, TaskError>,
    incidents_of: impl FnOnce(&mut R) -> &mut Vec<Incident>,
) -> Result<R, TaskError> {
    let attempted = run(label, retry, body);
    let mut report = attempted.result?;
    incidents_of(&mut report).extend(attempted.incidents);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            first_backoff_ms: 1,
            max_backoff_ms: 2,
        }
    }

    #[test]
    fn a_failed_input_is_not_tried_again_nor_reported_as_this_components_failure() {
        let mut tries = 0;
        let attempted: Attempted<()> = run("worker/0", &quick(), |_| {
            tries += 1;
            Err(TaskError::input_failed(
                "task `data_source` failed: source/0 failed 3 times; last: disk full",
            ))
        });
        assert_eq!(tries, 1);
        assert!(attempted.incidents.is_empty(), "{:?}", attempted.incidents);
        let error = attempted.result.unwrap_err();
        assert!(error.is_input_failure());
        assert_eq!(
            error.to_string(),
            "task `data_source` failed: source/0 failed 3 times; last: disk full"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_INCIDENT_MESSAGE);
        let incident = Incident::new("source/0", IncidentKind::Error, 1, long);
        assert!(incident.message.len() <= MAX_INCIDENT_MESSAGE);
        assert!(incident.message.ends_with("..."));
        assert!(incident.message.starts_with("éé"));
        let short = Incident::new("source/0", IncidentKind::Error, 1, "disk full");
        assert_eq!(short.message, "disk full");
    }

    #[test]
    fn a_bounded_report_keeps_its_newest_incident_and_counts_the_left_out() {
        let size = |incidents: &Vec<Incident>| serde_json::to_vec(incidents).unwrap().len();
        let attempts: Vec<Incident> = (1..=16)
            .map(|a| {
                let mut incident = Incident::new("source/3", IncidentKind::Error, a, format!("attempt {a}: {}", "x".repeat(3000)));
                incident.recovered = true;
                incident
            })
            .collect();
        for (bound, shortened_only) in [(20_000, true), (2_000, false), (600, false)] {
            let mut report = attempts.clone();
            fit_incidents(&mut report, |r| r, |r| size(r) <= bound);
            assert!(size(&report) <= bound, "{} bytes for a bound of {bound}", size(&report));
            assert_eq!(
                report.len() == 16,
                shortened_only,
                "{} incidents for a bound of {bound}",
                report.len()
            );
            let newest = report.last().unwrap();
            assert!(newest.message.starts_with("attempt 16: xxx") && newest.message.len() <= SHORT_INCIDENT_MESSAGE);
            // The summary is the one incident not about an attempt.
            if report[0].attempt == 0 {
                let summary = &report[0];
                let left_out = 16 - (report.len() - 1);
                assert_eq!(
                    summary.message,
                    format!("{left_out} earlier incident(s) left out of this bounded report; the log has them")
                );
                assert_eq!((summary.at_ms, summary.recovered, summary.attempt), (attempts[0].at_ms, true, 0));
                assert_eq!(report[1].attempt as usize, left_out + 1, "the oldest go first");
            }
        }
        // A report that fits is left alone.
        let mut small = attempts[..1].to_vec();
        fit_incidents(&mut small, |r| r, |r| size(r) <= 100_000);
        assert_eq!(small, attempts[..1]);
    }

    #[test]
    fn a_panic_then_success_is_recovered() {
        let attempted = run("test/0", &quick(), |attempt| {
            if attempt == 0 {
                panic!("first attempt breaks");
            }
            Ok(attempt)
        });
        assert_eq!(attempted.result.ok(), Some(1));
        assert_eq!(attempted.incidents.len(), 1);
        let incident = &attempted.incidents[0];
        assert_eq!(
            (incident.kind, incident.attempt, incident.recovered),
            (IncidentKind::Panic, 1, true)
        );
        assert!(incident.message.contains("first attempt breaks"), "{}", incident.message);
    }

    #[test]
    fn attempts_are_bounded_and_every_failure_is_kept() {
        let mut calls = 0;
        let attempted: Attempted<()> = run("test/1", &quick(), |_| {
            calls += 1;
            Err(TaskError::msg("still broken"))
        });
        assert_eq!(calls, 3);
        let error = attempted.result.expect_err("fails").to_string();
        assert!(error.contains("failed 3 times") && error.contains("still broken"), "{error}");
        assert_eq!(attempted.incidents.len(), 3);
        assert!(attempted.incidents.iter().all(|i| i.kind == IncidentKind::Error && !i.recovered));
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let policy = RetryPolicy::default();
        let waits: Vec<u64> = (1..6).map(|n| policy.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![10, 20, 40, 80, 160]);
        assert_eq!(policy.backoff(30).as_millis(), 500);
    }
}
