//! The robustness monitor. A watchdog cannot be an ordinary long-running Legion task: a stuck
//! task holds its processor, and on this Legion a long-running task on an I/O processor kept the
//! top-level task's futures from resolving. So the monitor task is short: it runs where the
//! mapper places it (a service node), makes sure the watcher thread of its process is alive
//! (starting it again when it died), and reports what the watcher saw. The driver launches it
//! every monitor interval. The watcher looks at the process's heartbeats (see [`crate::health`])
//! and, when a component stalled, records the incident durably — in the data directory's incident
//! file, which no task holds — and ends the process with [`RESTART_EXIT_CODE`]: Legion cannot
//! cancel a running task, so the supervisor (`ami2 run --supervise` or the cron watchdog)
//! restarts the service from its saved state, and the next run moves the incident into Control.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ami_mapper::TaskKind;
use legion_bridge::{Future, TaskContext, TaskError, TaskId, TaskLauncher};
use serde::{Deserialize, Serialize};

use crate::health::{self, StallLimits};
use crate::robust::{Incident, IncidentKind};
use crate::PipelineError;

/// Exit code of a process a monitor ends because a component stalled: "restart me".
pub const RESTART_EXIT_CODE: i32 = 75;

/// File in the data directory where monitors append incidents (JSON lines).
pub const INCIDENT_FILE: &str = "incidents.jsonl";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MonitorArgs {
    /// Which monitor this is (one per service node).
    pub index: usize,
    /// The run it watches (see [`health::reset`]).
    pub run: u64,
    pub interval_ms: u64,
    pub limits: StallLimits,
    /// Where stall incidents go (the data directory's incident file), when the run has one.
    pub incident_file: Option<PathBuf>,
    /// End the process on a stall (the service); otherwise only record it.
    pub exit_on_stall: bool,
}

/// What a monitor task found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MonitorReport {
    /// The watcher thread of this run was not running (it died, or this is the first check) and
    /// was started.
    pub started_watcher: bool,
    /// Why the previous watcher is gone, when it died.
    pub watcher_died: Option<String>,
    /// Stalls seen so far in this run.
    pub stalls: Vec<health::Stall>,
}

struct Watcher {
    run: u64,
    thread: JoinHandle<()>,
    started: std::time::Instant,
}

fn watcher() -> std::sync::MutexGuard<'static, Option<Watcher>> {
    static WATCHER: OnceLock<Mutex<Option<Watcher>>> = OnceLock::new();
    WATCHER.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

fn stalls_seen() -> std::sync::MutexGuard<'static, Vec<health::Stall>> {
    static STALLS: OnceLock<Mutex<Vec<health::Stall>>> = OnceLock::new();
    STALLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn monitor_task(_ctx: &TaskContext, args: MonitorArgs) -> Result<MonitorReport, TaskError> {
    crate::fault::inject(&format!("monitor/{}", args.index), 0).map_err(TaskError::msg)?;
    Ok(ensure_watcher(&args))
}

/// Makes sure this process has a live watcher thread (starting it again if it died) and says
/// what happened. In the driver's process it watches the driver's run (and ends with it); in
/// another process of a multi-process run, which has no run of its own, it watches the tasks of
/// that process for as long as the process lives.
pub fn ensure_watcher(args: &MonitorArgs) -> MonitorReport {
    let run = if health::current_run() == 0 { 0 } else { args.run };
    let label = format!("monitor/{}", args.index);
    let mut report = MonitorReport::default();
    let mut current = watcher();
    // A watcher that has not looked for several intervals is stuck: a thread cannot be stopped
    // from outside, so it is left behind and a new one takes over.
    let stuck_after = Duration::from_millis(args.interval_ms * 4 + 1000);
    let silent = |w: &Watcher| health::monitor_beat_age().unwrap_or_else(|| w.started.elapsed()) > stuck_after;
    let alive = current
        .as_ref()
        .is_some_and(|w| w.run == run && !w.thread.is_finished() && !silent(w));
    if !alive {
        if let Some(old) = current.take().filter(|w| w.run == run) {
            report.watcher_died = Some(if !old.thread.is_finished() {
                format!("stopped looking (nothing for {} ms)", stuck_after.as_millis())
            } else {
                match old.thread.join() {
                    Ok(()) => "returned".to_string(),
                    Err(payload) => legion_bridge::catch_panic(|| std::panic::resume_unwind(payload))
                        .err()
                        .unwrap_or_default(),
                }
            });
        }
        stalls_seen().clear();
        let watched = MonitorArgs { run, ..args.clone() };
        match std::thread::Builder::new()
            .name(label.clone())
            .spawn(move || watch(&label, &watched))
        {
            Ok(thread) => {
                *current = Some(Watcher {
                    run,
                    thread,
                    started: std::time::Instant::now(),
                });
                report.started_watcher = true;
            }
            Err(error) => report.watcher_died = Some(format!("cannot be started: {error}")),
        }
    }
    report.stalls = stalls_seen().clone();
    report
}

/// The watcher thread: looks every interval until its run ends.
fn watch(label: &str, args: &MonitorArgs) {
    while !health::monitors_stopped(args.run) {
        health::sleep_unless_stopped(args.run, Duration::from_millis(args.interval_ms));
        if health::monitors_stopped(args.run) {
            break;
        }
        if let Err(error) = crate::fault::inject(&label.replace("monitor/", "monitor-watcher/"), 0) {
            panic!("{error}");
        }
        health::monitor_beat();
        let stalls = health::find_stalls(&args.limits);
        if stalls.is_empty() {
            continue;
        }
        for stall in &stalls {
            tracing::error!(component = %stall.component, stalled_ms = stall.stalled_ms, "stalled: {}", stall.what);
            let incident = Incident::new(
                &stall.component,
                IncidentKind::Stall,
                stall.attempt,
                format!("{} (seen by {label})", stall.what),
            );
            if let Some(file) = &args.incident_file {
                if let Err(error) = append_incident(file, &incident) {
                    tracing::error!("cannot record the stall in {}: {error}", file.display());
                }
            }
        }
        if args.exit_on_stall {
            tracing::error!("{label}: ending the process so that it restarts from its saved state");
            std::process::exit(RESTART_EXIT_CODE);
        }
        // Only recording: report each stall once.
        let mut seen = stalls_seen();
        for stall in stalls {
            if !seen.iter().any(|s| s.component == stall.component) {
                seen.push(stall);
            }
        }
    }
}

/// The robustness monitors of a run, as its driver sees them: one monitor task per service node
/// (node 0 in a one-process run), placed by the policy, launched again every interval once the
/// previous one returned; and the driver's own watcher, where the rounds are seen (in a
/// one-process run, the same one). Dropping it (however the run ends) tells the watchers to
/// return: Legion waits for running monitor tasks.
pub(crate) struct Monitors {
    task: TaskId<MonitorArgs, MonitorReport>,
    args: MonitorArgs,
    indexes: Vec<u32>,
    running: Vec<Option<Future<MonitorReport>>>,
    launched: Instant,
}

impl Monitors {
    pub(crate) fn start(ctx: &TaskContext, task: TaskId<MonitorArgs, MonitorReport>, args: MonitorArgs) -> Result<Self, PipelineError> {
        let indexes: Vec<u32> = crate::placement::current()
            .map(|p| p.monitors().into_iter().map(|(index, _)| index).collect())
            .unwrap_or_else(|| vec![0]);
        let mut monitors = Self {
            task,
            args,
            running: indexes.iter().map(|_| None).collect(),
            indexes,
            launched: Instant::now(),
        };
        monitors.launch_finished(ctx)?;
        Ok(monitors)
    }

    /// Launches monitor `i` again wherever the previous one returned.
    fn launch_finished(&mut self, ctx: &TaskContext) -> Result<(), PipelineError> {
        for (slot, &index) in self.running.iter_mut().zip(&self.indexes) {
            if slot.is_none() {
                let args = MonitorArgs {
                    index: index as usize,
                    ..self.args.clone()
                };
                let launcher = TaskLauncher::new(self.task, &args)?.tag(crate::placement::tag(TaskKind::RobustnessMonitor { index }));
                *slot = Some(ctx.execute(&launcher)?);
            }
        }
        self.launched = Instant::now();
        Ok(())
    }

    /// Collects the monitor tasks that returned and, every interval, checks the driver's own
    /// watcher and launches the monitors again. Returns the incidents: a watcher that had to be
    /// replaced, a monitor task that failed.
    pub(crate) fn poll(&mut self, ctx: &TaskContext) -> Result<Vec<Incident>, PipelineError> {
        let mut reports = Vec::new();
        for (slot, &index) in self.running.iter_mut().zip(&self.indexes) {
            if let Some(done) = slot.take_if(|m| m.is_ready()) {
                reports.push((format!("monitor/{index}"), done.get()));
            }
        }
        if self.launched.elapsed() >= Duration::from_millis(self.args.interval_ms) {
            reports.push(("monitor/driver".into(), Ok(ensure_watcher(&self.args))));
            self.launch_finished(ctx)?;
        }
        let mut incidents = Vec::new();
        for (component, outcome) in reports {
            let trouble = match outcome {
                Ok(report) => report
                    .watcher_died
                    .map(|why| (IncidentKind::Restart, format!("watcher {why}; started again"))),
                Err(error) => Some((IncidentKind::Error, error.to_string())),
            };
            if let Some((kind, message)) = trouble {
                tracing::error!(component, "{message}");
                incidents.push(Incident::new(&component, kind, 0, message));
            }
        }
        Ok(incidents)
    }

    /// The run ended: the watchers return, and so do the monitor tasks still running.
    pub(crate) fn finish(mut self) {
        health::stop_monitors();
        for error in self.running.iter_mut().filter_map(Option::take).filter_map(|m| m.get().err()) {
            tracing::warn!("robustness monitor: {error}");
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        health::stop_monitors();
    }
}

/// Appends `incident` to `file` as one JSON line and makes it durable.
pub fn append_incident(file: &Path, incident: &Incident) -> std::io::Result<()> {
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
    let mut line = serde_json::to_vec(incident).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.sync_all()
}

/// The incidents in `file` (a torn last line, from a crash while writing, is skipped).
pub fn read_incidents(file: &Path) -> std::io::Result<Vec<Incident>> {
    let reader = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut incidents = Vec::new();
    for line in reader.lines() {
        match serde_json::from_str(&line?) {
            Ok(incident) => incidents.push(incident),
            Err(error) => tracing::warn!("{}: skipping a damaged incident line: {error}", file.display()),
        }
    }
    Ok(incidents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_survive_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("ami2-incidents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(INCIDENT_FILE);
        let _ = std::fs::remove_file(&file);
        let first = Incident::new("worker/0", IncidentKind::Stall, 0, "attempt 1 has run for 20000 ms");
        append_incident(&file, &first).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{\"component\":\"sou")
            .unwrap();
        assert_eq!(read_incidents(&file).unwrap(), vec![first]);
        assert!(read_incidents(&dir.join("missing")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
