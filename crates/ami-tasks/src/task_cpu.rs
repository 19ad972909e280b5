//! What the pipeline's own work costs in CPU time: bringing frames in (the data sources) and
//! analysing them (the workers). Each task measures the CPU time of the thread that runs its
//! body, so a source waiting for data costs nothing, and the runtime's work around the tasks
//! (mapping, dependence analysis, moving futures) is left out: what the process spends beyond
//! these two is the reducers', the driver's and the runtime's. The totals travel with the reports
//! to the driver, which sums them into [`crate::RunSummary::task_cpu`] and the
//! `ami2_task_cpu_nanoseconds_total` metric; the run measures its whole process too
//! ([`ProcessCpuStopwatch`], [`crate::RunSummary::process_cpu_ns`]), for the runtime's share.

use serde::{Deserialize, Serialize};

/// CPU time of the data sources' and the workers' task bodies, summed over the rounds a report
/// covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCpu {
    pub source_ns: u64,
    pub worker_ns: u64,
}

impl TaskCpu {
    /// Adds `other`'s times to these.
    pub fn add(&mut self, other: TaskCpu) {
        self.source_ns = self.source_ns.saturating_add(other.source_ns);
        self.worker_ns = self.worker_ns.saturating_add(other.worker_ns);
    }

    /// Microseconds of CPU per event `(source, worker)`; `None` before any event.
    pub fn per_event_us(&self, events: u64) -> Option<(f64, f64)> {
        (events > 0).then(|| {
            let per = |ns: u64| ns as f64 / 1e3 / events as f64;
            (per(self.source_ns), per(self.worker_ns))
        })
    }

    /// The costs per event in words, as `ami2 run` and the metrics summary say them; `None`
    /// before any event.
    pub fn per_event_text(&self, events: u64) -> Option<String> {
        self.per_event_us(events)
            .map(|(source, worker)| format!("{source:.1} µs per event in the data sources, {worker:.1} µs in the workers"))
    }
}

/// The CPU time of the calling thread from [`start`](Self::start) on. Read it on the thread that
/// started it, within one task body that does not wait on the runtime (a waiting task's thread may
/// run other tasks meanwhile).
#[derive(Debug)]
pub struct CpuStopwatch(Option<cpu_time::ThreadTime>);

impl CpuStopwatch {
    pub fn start() -> Self {
        // Without a thread clock (not on Linux or Windows) the costs read zero rather than fail a task.
        CpuStopwatch(cpu_time::ThreadTime::try_now().ok())
    }

    /// Nanoseconds of this thread's CPU time since the start.
    pub fn elapsed_ns(&self) -> u64 {
        nanos(self.0.as_ref().and_then(|start| start.try_elapsed().ok()))
    }
}

/// The CPU time of the whole process (every thread) from [`start`](Self::start) on.
#[derive(Debug)]
pub struct ProcessCpuStopwatch(Option<cpu_time::ProcessTime>);

impl ProcessCpuStopwatch {
    pub fn start() -> Self {
        // Without a process clock the cost reads zero: it is a report, not a reason to fail a run.
        ProcessCpuStopwatch(cpu_time::ProcessTime::try_now().ok())
    }

    /// Nanoseconds of the process's CPU time since the start.
    pub fn elapsed_ns(&self) -> u64 {
        nanos(self.0.as_ref().and_then(|start| start.try_elapsed().ok()))
    }
}

/// `elapsed` in nanoseconds; 0 when there is no clock.
fn nanos(elapsed: Option<std::time::Duration>) -> u64 {
    elapsed.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn counts_work_and_not_sleep() {
        let watch = CpuStopwatch::start();
        std::thread::sleep(Duration::from_millis(50));
        let asleep = watch.elapsed_ns();
        let busy = Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let total = watch.elapsed_ns();
        // Sleeping took almost no CPU; spinning for 50 ms took most of 50 ms (a loaded machine
        // may take the core away for part of it).
        assert!(asleep < 10_000_000, "{asleep} ns of CPU while asleep");
        assert!(total - asleep > 10_000_000, "{} ns of CPU in 50 ms of spinning", total - asleep);
        assert!(total - asleep < 60_000_000, "{} ns of CPU in 50 ms of spinning", total - asleep);
    }

    #[test]
    fn adds_and_divides_by_events() {
        let mut cpu = TaskCpu {
            source_ns: 3_000,
            worker_ns: 9_000,
        };
        cpu.add(TaskCpu {
            source_ns: 1_000,
            worker_ns: 1_000,
        });
        assert_eq!(
            cpu,
            TaskCpu {
                source_ns: 4_000,
                worker_ns: 10_000
            }
        );
        assert_eq!(cpu.per_event_us(2), Some((2.0, 5.0)));
        assert_eq!(cpu.per_event_us(0), None);
        assert_eq!(
            cpu.per_event_text(2).as_deref(),
            Some("2.0 µs per event in the data sources, 5.0 µs in the workers")
        );
        assert_eq!(cpu.per_event_text(0), None);
        cpu.add(TaskCpu {
            source_ns: u64::MAX,
            worker_ns: 0,
        });
        assert_eq!(cpu.source_ns, u64::MAX);
    }
}
