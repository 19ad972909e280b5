//! Service latency benchmark: starts `ami2 run` (synthetic events, 1 partition) and measures,
//! through `client-lib` over loopback TCP:
//!
//! - `ping`: request→answer of a message the server answers itself;
//! - `get_graph`: answered from the server's snapshot;
//! - `edit`: a graph edit (set_params) from sending the request to `accepted` — the graph manager
//!   task ran and the new version is fsynced in the Control log;
//! - `edit→bin`: from sending the edit to the first bin computed with the new graph version
//!   arriving at a subscriber.
//!
//! Run: `cargo bench --bench service_bench [-- --edits N --rate HZ --partitions P --run "ARGS"]`. Prints
//! median and p99 in milliseconds.

use std::time::{Duration, Instant};

use client_lib::{Answer, Client, ClientOptions, Event};
use protocol1::Edit;
use serde_json::json;

#[path = "common/options.rs"]
mod options;
use options::arg;

#[path = "../tests/common/mod.rs"]
mod common;

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what:<10} n={:<4} median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*samples.last().unwrap())
    );
}

fn main() {
    let edits: usize = arg("--edits", "50").parse().expect("--edits N");
    let rate = arg("--rate", "1000");
    let partitions = arg("--partitions", "1");
    let dir = common::scratch("bench");
    // Any other `ami2 run` arguments, e.g. `--run "--batch-interval-us 1000"`.
    let extra = arg("--run", "");
    let mut run_args = vec!["--rate", &rate, "--partitions", &partitions];
    run_args.extend(extra.split_whitespace());
    let service = common::service::Service::start(&dir, "127.0.0.1:0", &run_args);
    println!(
        "ami2 run: synthetic events at {rate} Hz, {partitions} partition(s), serving {}",
        service.addr
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let editor = Client::connect(&service.addr, ClientOptions::default()).await.unwrap();
        let mut watcher = Client::connect(&service.addr, ClientOptions::default()).await.unwrap();
        watcher.subscribe(&["trace_peaks"]).await.unwrap();

        let mut pings = Vec::new();
        for _ in 0..500 {
            pings.push(editor.ping().await.unwrap());
        }
        report("ping", pings);
        let mut reads = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            editor.graph().await.unwrap();
            reads.push(started.elapsed());
        }
        report("get_graph", reads);

        let mut answers = Vec::new();
        let mut first_bins = Vec::new();
        for i in 0..edits {
            let (version, _) = editor.graph().await.unwrap();
            let edit = Edit::SetParams {
                id: "trace_peaks".into(),
                params: json!({"threshold": 0.5 + (i % 2) as f64 * 0.1}),
            };
            let started = Instant::now();
            let new_version = match editor.request(version, vec![edit], None).await.unwrap() {
                Answer::Accepted(a) => a.version,
                Answer::Rejected(r) => panic!("rejected: {r:?}"),
            };
            answers.push(started.elapsed());
            loop {
                match watcher.next_event_timeout(Duration::from_secs(30)).await.unwrap() {
                    Some(Event::Bin(bin)) if bin.graph_version >= new_version => break,
                    Some(_) => {}
                    None => panic!("the watcher lost its connection"),
                }
            }
            first_bins.push(started.elapsed());
        }
        report("edit", answers);
        report("edit→bin", first_bins);
    });
}
