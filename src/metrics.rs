//! The Prometheus endpoint: installs the process's metrics recorder and serves it over HTTP on
//! loopback; reads the values back as a [`MetricsSummary`] (for `ami2 status`).
//!
//! What is measured, and by whom, is in `ami_tasks::metrics`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use ami_tasks::metrics::MetricsSummary;
use anyhow::{Context, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Port of the endpoint when `--metrics` is not given (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 9464;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Where to serve the metrics, from `--metrics`: `0` (off), a port (on 127.0.0.1) or
/// `HOST:PORT`. `None` (the option not given) means the default port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Off,
    /// The default port: when it is taken (another ami2 on this machine), the run goes on without
    /// an endpoint and says so.
    Default,
    At(SocketAddr),
}

impl Endpoint {
    /// Parses the value of `option` (named in the error), `None` when it was not given.
    pub fn parse(option: &str, value: Option<&str>) -> Result<Self> {
        let Some(text) = value else {
            return Ok(Self::Default);
        };
        if let Ok(port) = text.parse::<u16>() {
            return Ok(match port {
                0 => Self::Off,
                port => Self::At(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            });
        }
        let addr: SocketAddr = text
            .parse()
            .with_context(|| format!("{option} takes 0 (off), a port or HOST:PORT, not {text:?}"))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(component = "metrics", %addr, "the metrics endpoint is reachable from other hosts");
        }
        Ok(Self::At(addr))
    }
}

/// Installs the metrics recorder of this process (once; later calls keep the first) and, unless
/// `endpoint` is off, serves `GET /metrics` (any path, in fact) in the Prometheus text format from
/// a background thread. Returns the address served.
pub fn install(endpoint: Endpoint) -> Result<Option<SocketAddr>> {
    let addr = match endpoint {
        Endpoint::Off => None,
        Endpoint::Default => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT)),
        Endpoint::At(addr) => Some(addr),
    };
    if HANDLE.get().is_some() {
        return Ok(None);
    }
    let Some(addr) = addr else {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .context("installing the metrics recorder")?;
        finish_install(handle);
        return Ok(None);
    };
    // The exporter is a future: it runs on a small runtime of its own, on a thread that lives as
    // long as the process. Binding happens in `build`, so a taken port is reported here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the metrics endpoint's runtime")?;
    let built = {
        let _guard = runtime.enter();
        PrometheusBuilder::new().with_http_listener(addr).build()
    };
    let (recorder, exporter) = match built {
        Ok(built) => built,
        Err(error) if endpoint == Endpoint::Default => {
            tracing::warn!(
                component = "metrics",
                %addr,
                "no metrics endpoint ({error}); pass --metrics PORT to choose another port"
            );
            return install(Endpoint::Off);
        }
        Err(error) => return Err(error).with_context(|| format!("serving metrics on {addr}")),
    };
    let handle = recorder.handle();
    std::thread::Builder::new()
        .name("ami2-metrics".into())
        .spawn(move || {
            if let Err(error) = runtime.block_on(exporter) {
                tracing::error!(component = "metrics", "metrics endpoint stopped: {error:?}");
            }
        })
        .context("starting the metrics endpoint")?;
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    finish_install(handle);
    tracing::info!(component = "metrics", %addr, "metrics served at http://{addr}/metrics");
    Ok(Some(addr))
}

fn finish_install(handle: PrometheusHandle) {
    let _ = HANDLE.set(handle);
    ami_tasks::metrics::describe();
}

/// The current values of this process's metrics (`None` before [`install`]).
pub fn summary() -> Option<MetricsSummary> {
    HANDLE.get().map(|handle| MetricsSummary::from_prometheus_text(&handle.render()))
}

/// The metrics an endpoint serves, in the Prometheus text format.
pub fn scrape_text(addr: SocketAddr) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{addr}/metrics");
    let mut response = agent.get(&url).call().with_context(|| format!("scraping {url}"))?;
    response.body_mut().read_to_string().with_context(|| format!("reading {url}"))
}

#[derive(clap::Args)]
pub struct MetricsArgs {
    /// The service's endpoint: a port on 127.0.0.1 or HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_PORT.to_string())]
    addr: String,
    /// Print the Prometheus text as served instead of the summary.
    #[arg(long)]
    raw: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// `ami2 metrics`: the summary (or the text) of a running service's metrics.
pub fn print(args: MetricsArgs) -> Result<()> {
    let Endpoint::At(addr) = Endpoint::parse("--addr", Some(&args.addr)).map_err(crate::refused)? else {
        return Err(crate::refused(anyhow::anyhow!("--addr needs a port or HOST:PORT")));
    };
    let text = scrape_text(addr)?;
    if args.raw {
        print!("{text}");
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&MetricsSummary::from_prometheus_text(&text))?);
    } else {
        println!("{}", MetricsSummary::from_prometheus_text(&text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ami_tasks::metrics::ReportMetrics;
    use ami_tasks::source::{SourcePosition, SourceStats};
    use ami_tasks::GlobalReport;

    use super::*;

    fn report(frames: [u64; 2], bins: u64) -> GlobalReport {
        let mut report = GlobalReport::default();
        for (p, frames) in frames.into_iter().enumerate() {
            let stats = SourceStats {
                frames,
                ..SourceStats::default()
            };
            report.sources.insert(p, (SourcePosition::default(), stats));
        }
        report.state.events = frames.iter().sum();
        report.state.bins_emitted = bins;
        report
    }

    #[test]
    fn endpoint_option() {
        assert_eq!(Endpoint::parse("--metrics", None).unwrap(), Endpoint::Default);
        assert_eq!(Endpoint::parse("--metrics", Some("0")).unwrap(), Endpoint::Off);
        assert_eq!(
            Endpoint::parse("--metrics", Some("9999")).unwrap(),
            Endpoint::At("127.0.0.1:9999".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("--metrics", Some("[::1]:80")).unwrap(),
            Endpoint::At("[::1]:80".parse().unwrap())
        );
        assert!(Endpoint::parse("--metrics", Some("localhost")).is_err());
        let named = Endpoint::parse("--addr", Some("garbage")).unwrap_err().to_string();
        assert!(named.starts_with("--addr takes"), "{named}");
    }

    /// Cumulative reports become counters the Prometheus exporter renders and the summary reads
    /// back: each report adds only what is new, a reopened source counts from zero.
    #[test]
    fn reports_become_exact_counters() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut tracker = ReportMetrics::start();
            tracker.record(&report([10, 5], 1));
            tracker.record(&report([30, 25], 4));
            ReportMetrics::launched(3);
            // Partition 0's source reopened (counts from 0 again) after its producer restarted; a
            // graph failed (the driver records it as an incident).
            let mut restarted = report([4, 25], 4);
            restarted.state.events = 59;
            restarted.sources.get_mut(&0).unwrap().1.producer_restarts = 1;
            tracker.record(&restarted);
            ami_tasks::metrics::incident("graph_failure");
            ami_tasks::metrics::subscriber_messages_dropped(2);
            let running = MetricsSummary::from_prometheus_text(&handle.render());
            assert!(running.running);
            assert_eq!(running.rounds_in_flight, 3);
            drop(tracker);
        });
        let summary = MetricsSummary::from_prometheus_text(&handle.render());
        assert_eq!(summary.events_in, 59);
        assert_eq!(summary.events_processed, 59);
        assert_eq!(
            summary.frames_per_partition,
            BTreeMap::from([("0".to_string(), 34), ("1".to_string(), 25)])
        );
        assert_eq!(summary.bins_published, 4);
        assert_eq!(summary.rounds, 1);
        assert_eq!(summary.subscriber_messages_dropped, 2);
        assert_eq!(summary.incidents, BTreeMap::from([("graph_failure".to_string(), 1)]));
        assert_eq!(summary.restarts, BTreeMap::from([("shm_producer".to_string(), 1)]));
        assert!(!summary.running);
        assert_eq!(summary.rounds_in_flight, 0);
        assert!(summary.to_string().contains("59 in, 59 processed"), "{summary}");
    }
}
