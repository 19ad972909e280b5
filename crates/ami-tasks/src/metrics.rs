//! The service's metrics: names, what updates them, and a summary read back from the Prometheus
//! text format.
//!
//! Metrics go through the [`metrics`] facade: without an installed recorder every update is a
//! no-op, so libraries and tests pay nothing. The `ami2` binary installs a Prometheus recorder and
//! serves it on loopback (`ami2 run --metrics ADDR`).
//!
//! The pipeline's metrics are updated by the driver (the task running [`crate::pipeline::run`])
//! from the global reports that reach it, not by the tasks themselves: the tasks may run in other
//! processes, whose recorders nobody scrapes, while every report comes back to the driver. The
//! counters are therefore exact: after a bounded run, [`EVENTS_IN`] is the number of frames the
//! sources delivered.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `ami2_events_in_total` | counter | | frames delivered by the data sources |
//! | `ami2_events_processed_total` | counter | | events that went through the workers and reached the global reducer |
//! | `ami2_frames_total` | counter | `partition` | frames delivered per telemetry partition |
//! | `ami2_bins_published_total` | counter | | time bins published to Results |
//! | `ami2_late_partials_total` | counter | | partials that arrived after their bin was published (not merged) |
//! | `ami2_superseded_partials_total` | counter | | partials of an older graph version dropped when a bin held two |
//! | `ami2_bins_dropped_early_total` | counter | | bins deleted from Results before `retained_bins` newer ones, to make room |
//! | `ami2_subscriber_messages_dropped_total` | counter | | messages a slow subscriber lost ([`subscriber_messages_dropped`]) |
//! | `ami2_incidents_total` | counter | `kind` | incidents (`graph_failure`, `store_warning` when a persisted store loads damaged or a snapshot fails, or [`incident`]) |
//! | `ami2_restarts_total` | counter | `component` | restarts (`shm_producer` seen by a source, or [`restart`]) |
//! | `ami2_source_overruns_total` | counter | `partition` | times a shared-memory producer lapped its consumer (frames lost) |
//! | `ami2_source_behind_seconds` | gauge | `partition` | how late the newest frame a source handed over was on its stream's clock (streams with a clock only) |
//! | `ami2_rounds_total` | counter | | rounds of source → worker → reducer launches |
//! | `ami2_rounds_in_flight` | gauge | | rounds launched whose report the driver has not read yet |
//! | `ami2_batch_frames` | gauge | | most frames a data source hands over per round: the batch size in use ([`crate::batch_tuner`]) |
//! | `ami2_batch_size_changes_total` | counter | | times the batch tuner took another batch size |
//! | `ami2_pending_bins` | gauge | | bins the global reducer holds, waiting for partitions |
//! | `ami2_graph_version` | gauge | | the graph version of the last published bin |
//! | `ami2_last_published_bin` | gauge | | number of the newest published bin |
//! | `ami2_pipeline_running` | gauge | | 1 while the pipeline runs, 0 once it has finished |
//! | `ami2_task_cpu_nanoseconds_total` | counter | `task` | CPU time of the data sources' (`source`) and the workers' (`worker`) own work ([`crate::task_cpu`]); divided by the events, what an event costs to bring in and to analyse |

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::task_cpu::TaskCpu;
use crate::tasks::GlobalReport;

pub const EVENTS_IN: &str = "ami2_events_in_total";
pub const EVENTS_PROCESSED: &str = "ami2_events_processed_total";
pub const FRAMES: &str = "ami2_frames_total";
pub const BINS_PUBLISHED: &str = "ami2_bins_published_total";
pub const LATE_PARTIALS: &str = "ami2_late_partials_total";
pub const SUPERSEDED_PARTIALS: &str = "ami2_superseded_partials_total";
pub const BINS_DROPPED_EARLY: &str = "ami2_bins_dropped_early_total";
pub const SUBSCRIBER_MESSAGES_DROPPED: &str = "ami2_subscriber_messages_dropped_total";
pub const INCIDENTS: &str = "ami2_incidents_total";
pub const RESTARTS: &str = "ami2_restarts_total";
pub const SOURCE_OVERRUNS: &str = "ami2_source_overruns_total";
pub const SOURCE_BEHIND: &str = "ami2_source_behind_seconds";
pub const ROUNDS: &str = "ami2_rounds_total";
pub const ROUNDS_IN_FLIGHT: &str = "ami2_rounds_in_flight";
pub const BATCH_FRAMES: &str = "ami2_batch_frames";
pub const BATCH_SIZE_CHANGES: &str = "ami2_batch_size_changes_total";
pub const PENDING_BINS: &str = "ami2_pending_bins";
pub const GRAPH_VERSION: &str = "ami2_graph_version";
pub const LAST_PUBLISHED_BIN: &str = "ami2_last_published_bin";
pub const PIPELINE_RUNNING: &str = "ami2_pipeline_running";
pub const TASK_CPU: &str = "ami2_task_cpu_nanoseconds_total";

/// Registers the help text of every metric with the installed recorder (call once after
/// installing it; shown as `# HELP` lines).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(EVENTS_IN, "Frames delivered by the data sources");
    describe_counter!(
        EVENTS_PROCESSED,
        "Events that went through the workers and reached the global reducer"
    );
    describe_counter!(FRAMES, "Frames delivered per telemetry partition");
    describe_counter!(BINS_PUBLISHED, "Time bins published to Results");
    describe_counter!(LATE_PARTIALS, "Partials that arrived after their bin was published");
    describe_counter!(SUPERSEDED_PARTIALS, "Partials of an older graph version dropped from a bin");
    describe_counter!(BINS_DROPPED_EARLY, "Bins deleted from Results early to make room for newer ones");
    describe_counter!(SUBSCRIBER_MESSAGES_DROPPED, "Messages dropped for slow subscribers");
    describe_counter!(INCIDENTS, "Incidents, by kind");
    describe_counter!(RESTARTS, "Restarts, by component");
    describe_counter!(SOURCE_OVERRUNS, "Times a shared-memory producer lapped its consumer");
    describe_gauge!(
        SOURCE_BEHIND,
        "How late the newest frame a data source handed over was, on its stream's clock"
    );
    describe_counter!(ROUNDS, "Rounds of source, worker and reducer launches");
    describe_gauge!(ROUNDS_IN_FLIGHT, "Rounds launched whose report the driver has not read yet");
    describe_gauge!(
        BATCH_FRAMES,
        "Most frames a data source hands over per round (the batch size in use)"
    );
    describe_counter!(BATCH_SIZE_CHANGES, "Times the batch tuner took another batch size");
    describe_gauge!(PENDING_BINS, "Bins the global reducer holds, waiting for partitions");
    describe_gauge!(GRAPH_VERSION, "Graph version of the last published bin");
    describe_gauge!(LAST_PUBLISHED_BIN, "Number of the newest published bin");
    describe_gauge!(PIPELINE_RUNNING, "1 while the pipeline runs, 0 once it has finished");
    describe_counter!(
        TASK_CPU,
        "CPU time of the data sources' and the workers' own work (nanoseconds), by task"
    );
}

/// Counts `n` messages dropped for slow subscribers (called by the results server).
pub fn subscriber_messages_dropped(n: u64) {
    metrics::counter!(SUBSCRIBER_MESSAGES_DROPPED).increment(n);
}

/// Counts one incident of `kind` (e.g. `graph_failure`, `task_failure`).
pub fn incident(kind: &'static str) {
    metrics::counter!(INCIDENTS, "kind" => kind).increment(1);
}

/// Counts one restart of `component` (e.g. `data_source`, `worker`, `shm_producer`).
pub fn restart(component: &'static str) {
    metrics::counter!(RESTARTS, "component" => component).increment(1);
}

/// Turns the cumulative totals in the global reports into counter increments. One per run of the
/// pipeline, owned by the driver.
#[derive(Debug, Default)]
pub struct ReportMetrics {
    /// Last seen per partition: frames, overruns, producer restarts (cumulative since the source
    /// was opened).
    sources: BTreeMap<usize, (u64, u64, u64)>,
    events: u64,
    bins: u64,
    late: u64,
    superseded: u64,
    dropped_early: u64,
}

impl ReportMetrics {
    /// A run starts: the pipeline is running, nothing is in flight.
    pub fn start() -> Self {
        metrics::gauge!(PIPELINE_RUNNING).set(1.0);
        metrics::gauge!(ROUNDS_IN_FLIGHT).set(0.0);
        Self::default()
    }

    /// Adds what `report` holds beyond the reports seen before.
    pub fn record(&mut self, report: &GlobalReport) {
        for (&partition, (_, stats)) in &report.sources {
            let seen = self.sources.entry(partition).or_default();
            let label = partition.to_string();
            // A source reopened (after a restart) counts from zero again.
            let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
            let frames = delta(stats.frames, seen.0);
            metrics::counter!(EVENTS_IN).increment(frames);
            metrics::counter!(FRAMES, "partition" => label.clone()).increment(frames);
            let overruns = delta(stats.overruns, seen.1);
            if overruns > 0 {
                metrics::counter!(SOURCE_OVERRUNS, "partition" => label.clone()).increment(overruns);
            }
            if let Some(ms) = stats.behind_ms {
                metrics::gauge!(SOURCE_BEHIND, "partition" => label).set(ms as f64 / 1e3);
            }
            let restarts = delta(stats.producer_restarts, seen.2);
            if restarts > 0 {
                metrics::counter!(RESTARTS, "component" => "shm_producer").increment(restarts);
            }
            *seen = (stats.frames, stats.overruns, stats.producer_restarts);
        }
        let state = &report.state;
        metrics::counter!(EVENTS_PROCESSED).increment(state.events.saturating_sub(self.events));
        metrics::counter!(BINS_PUBLISHED).increment(state.bins_emitted.saturating_sub(self.bins));
        metrics::counter!(LATE_PARTIALS).increment(state.late_partials.saturating_sub(self.late));
        metrics::counter!(SUPERSEDED_PARTIALS).increment(state.superseded_partials.saturating_sub(self.superseded));
        metrics::counter!(BINS_DROPPED_EARLY).increment(state.bins_dropped_early.saturating_sub(self.dropped_early));
        (self.events, self.bins, self.late, self.superseded, self.dropped_early) = (
            state.events,
            state.bins_emitted,
            state.late_partials,
            state.superseded_partials,
            state.bins_dropped_early,
        );
        metrics::gauge!(PENDING_BINS).set(state.pending_bins() as f64);
        // Per reduction already, not cumulative: nothing to subtract.
        metrics::counter!(TASK_CPU, "task" => "source").increment(report.cpu.source_ns);
        metrics::counter!(TASK_CPU, "task" => "worker").increment(report.cpu.worker_ns);
        if let Some(last) = report.emitted.last() {
            metrics::gauge!(LAST_PUBLISHED_BIN).set(last.bin as f64);
            metrics::gauge!(GRAPH_VERSION).set(last.graph_version as f64);
        }
    }

    /// A round was launched; `in_flight` rounds now wait for the driver.
    pub fn launched(in_flight: usize) {
        metrics::counter!(ROUNDS).increment(1);
        Self::in_flight(in_flight);
    }

    /// The batch size in use is now `frames`; `changed` when the tuner took it in place of another.
    pub fn batch_size(frames: usize, changed: bool) {
        metrics::gauge!(BATCH_FRAMES).set(frames as f64);
        if changed {
            metrics::counter!(BATCH_SIZE_CHANGES).increment(1);
        }
    }

    /// `in_flight` rounds wait for the driver.
    pub fn in_flight(in_flight: usize) {
        metrics::gauge!(ROUNDS_IN_FLIGHT).set(in_flight as f64);
    }
}

/// The run has finished, or failed.
impl Drop for ReportMetrics {
    fn drop(&mut self) {
        metrics::gauge!(ROUNDS_IN_FLIGHT).set(0.0);
        metrics::gauge!(PIPELINE_RUNNING).set(0.0);
    }
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments and malformed lines are skipped).
pub fn parse_prometheus_text(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].find('}')?;
            (&line[..=close], &line[close + 1..])
        }
        None => line.split_at(line.find(char::is_whitespace)?),
    };
    // The value, then an optional time stamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y"` (values may hold escaped quotes, backslashes and newlines).
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
}

/// The values a person running the service looks at, read from a Prometheus exposition (the
/// in-process recorder's, or a scrape of the endpoint). `ami2 status` prints it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    pub events_in: u64,
    pub events_processed: u64,
    /// Partition (as text) → frames delivered.
    pub frames_per_partition: BTreeMap<String, u64>,
    pub bins_published: u64,
    pub late_partials: u64,
    pub superseded_partials: u64,
    pub bins_dropped_early: u64,
    pub subscriber_messages_dropped: u64,
    /// Kind → count.
    pub incidents: BTreeMap<String, u64>,
    /// Component → count.
    pub restarts: BTreeMap<String, u64>,
    pub source_overruns: u64,
    /// The most any data source is behind its stream (s), for streams with a clock.
    pub source_behind_seconds: Option<f64>,
    pub rounds: u64,
    pub rounds_in_flight: u64,
    /// Most frames a source hands over per round now, and how often the tuner changed it.
    pub batch_frames: u64,
    pub batch_size_changes: u64,
    pub pending_bins: u64,
    pub graph_version: u64,
    pub last_published_bin: Option<u64>,
    pub running: bool,
    /// CPU time of the data sources' and the workers' own work.
    pub task_cpu: TaskCpu,
}

impl MetricsSummary {
    /// Reads the ami2 metrics out of a Prometheus text exposition; absent metrics are zero.
    pub fn from_prometheus_text(text: &str) -> Self {
        let mut summary = Self::default();
        for sample in parse_prometheus_text(text) {
            let value = sample.value.max(0.0) as u64;
            let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
            match sample.name.as_str() {
                EVENTS_IN => summary.events_in = value,
                EVENTS_PROCESSED => summary.events_processed = value,
                FRAMES => {
                    summary.frames_per_partition.insert(label("partition"), value);
                }
                BINS_PUBLISHED => summary.bins_published = value,
                LATE_PARTIALS => summary.late_partials = value,
                SUPERSEDED_PARTIALS => summary.superseded_partials = value,
                BINS_DROPPED_EARLY => summary.bins_dropped_early = value,
                SUBSCRIBER_MESSAGES_DROPPED => summary.subscriber_messages_dropped = value,
                INCIDENTS => {
                    summary.incidents.insert(label("kind"), value);
                }
                RESTARTS => {
                    summary.restarts.insert(label("component"), value);
                }
                SOURCE_OVERRUNS => summary.source_overruns += value,
                SOURCE_BEHIND => {
                    summary.source_behind_seconds = Some(summary.source_behind_seconds.unwrap_or(0.0).max(sample.value));
                }
                ROUNDS => summary.rounds = value,
                ROUNDS_IN_FLIGHT => summary.rounds_in_flight = value,
                BATCH_FRAMES => summary.batch_frames = value,
                BATCH_SIZE_CHANGES => summary.batch_size_changes = value,
                PENDING_BINS => summary.pending_bins = value,
                GRAPH_VERSION => summary.graph_version = value,
                LAST_PUBLISHED_BIN => summary.last_published_bin = Some(value),
                PIPELINE_RUNNING => summary.running = sample.value > 0.0,
                TASK_CPU => match label("task").as_str() {
                    "source" => summary.task_cpu.source_ns = value,
                    "worker" => summary.task_cpu.worker_ns = value,
                    _ => {}
                },
                _ => {}
            }
        }
        summary
    }
}

impl fmt::Display for MetricsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let listed = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "))
            }
        };
        writeln!(f, "pipeline      {}", if self.running { "running" } else { "not running" })?;
        writeln!(
            f,
            "events        {} in, {} processed{}",
            self.events_in,
            self.events_processed,
            listed(&self.frames_per_partition).replace(" (", " (per partition: ")
        )?;
        if let Some(behind) = self.source_behind_seconds {
            writeln!(f, "sources       {behind:.3} s behind their streams (the most of any partition)")?;
        }
        if let Some(costs) = self.task_cpu.per_event_text(self.events_processed) {
            writeln!(f, "cpu           {costs} (their task bodies only)")?;
        }
        writeln!(
            f,
            "bins          {} published (last {}), {} pending, graph version {}{}",
            self.bins_published,
            self.last_published_bin.map_or("-".to_string(), |b| b.to_string()),
            self.pending_bins,
            self.graph_version,
            if self.bins_dropped_early > 0 {
                format!(", {} dropped early (Results full)", self.bins_dropped_early)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "partials      {} late, {} superseded",
            self.late_partials, self.superseded_partials
        )?;
        writeln!(
            f,
            "rounds        {} launched, {} in flight; batches of up to {} frames ({} changes of size)",
            self.rounds, self.rounds_in_flight, self.batch_frames, self.batch_size_changes
        )?;
        writeln!(f, "subscribers   {} messages dropped", self.subscriber_messages_dropped)?;
        writeln!(f, "incidents     {}{}", total(&self.incidents), listed(&self.incidents))?;
        write!(
            f,
            "restarts      {}{}, {} source overruns",
            total(&self.restarts),
            listed(&self.restarts),
            self.source_overruns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP ami2_frames_total Frames\n# TYPE ami2_frames_total counter\n\
                    ami2_frames_total{partition=\"0\"} 12\n\
                    ami2_frames_total{partition=\"1\",odd=\"a \\\"q\\\", b\"} 7 1700000000\n\
                    ami2_pipeline_running 1\n\
                    broken line\n";
        let samples = parse_prometheus_text(text);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].labels["partition"], "0");
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].labels["odd"], "a \"q\", b");
        assert_eq!(samples[1].value, 7.0);
        assert_eq!(samples[2].name, PIPELINE_RUNNING);
        let summary = MetricsSummary::from_prometheus_text(text);
        assert_eq!(summary.frames_per_partition.values().sum::<u64>(), 19);
        assert!(summary.running);
        assert_eq!(summary.events_in, 0);
        assert!(!summary.to_string().contains("dropped early"));
        let full = MetricsSummary::from_prometheus_text("ami2_bins_dropped_early_total 3\n");
        assert_eq!(full.bins_dropped_early, 3);
        assert!(full.to_string().contains("3 dropped early (Results full)"), "{full}");
        // Sources behind their streams: the most of any partition, said only when known.
        assert_eq!(summary.source_behind_seconds, None);
        assert!(!summary.to_string().contains("behind"));
        let behind = MetricsSummary::from_prometheus_text(
            "ami2_source_behind_seconds{partition=\"0\"} 0.25\nami2_source_behind_seconds{partition=\"1\"} 3.5\n",
        );
        assert_eq!(behind.source_behind_seconds, Some(3.5));
        assert!(behind.to_string().contains("3.500 s behind their streams"), "{behind}");
        // The batch size in use, and how often the tuner changed it.
        let tuned = MetricsSummary::from_prometheus_text(
            "ami2_batch_frames 32
ami2_batch_size_changes_total 4
",
        );
        assert_eq!((tuned.batch_frames, tuned.batch_size_changes), (32, 4));
        assert!(
            tuned.to_string().contains("batches of up to 32 frames (4 changes of size)"),
            "{tuned}"
        );
        // What an event costs the sources and the workers, said once there are events.
        assert!(!summary.to_string().contains("per event"));
        let costs = MetricsSummary::from_prometheus_text(
            "ami2_events_processed_total 4000
ami2_task_cpu_nanoseconds_total{task=\"source\"} 200000000
ami2_task_cpu_nanoseconds_total{task=\"worker\"} 60000000
",
        );
        assert_eq!(
            costs.task_cpu,
            TaskCpu {
                source_ns: 200_000_000,
                worker_ns: 60_000_000
            }
        );
        assert!(
            costs
                .to_string()
                .contains("50.0 µs per event in the data sources, 15.0 µs in the workers"),
            "{costs}"
        );
    }
}
