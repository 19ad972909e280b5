//! Recovery benchmark: how long results stop when a component fails. For each component and
//! fault (a panic, retried inside the task; a hang, found by the monitor and ended by a restart
//! under `--supervise`), starts `ami2 run --supervise` on synthetic events with `AMI2_FAULT`, watches
//! one result through `client-lib` (which reconnects by itself) and prints the longest gap between
//! two result bins — the time results were interrupted — next to the run without a fault.
//!
//! Run: `cargo bench --bench recovery [-- --seconds S --stall-timeout S --only SUBSTRING]`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client_lib::{Client, ClientOptions, Event};
use protocol1::Edit;
use serde_json::json;

#[path = "common/options.rs"]
mod options;
use options::arg;

#[path = "../tests/common/mod.rs"]
mod common;

/// Runs the supervised service with `fault` for `seconds`; returns (longest gap between bins,
/// bins seen, restarts).
fn measure(fault: Option<&str>, seconds: f64, stall_timeout: &str) -> (Duration, usize, usize) {
    let name = fault.unwrap_or("none").replace(['/', ':', '@'], "-");
    let dir = common::scratch(&format!("recovery-{name}"));
    let listen = format!("127.0.0.1:{}", common::service::free_port());
    let port_file = dir.join("port");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ami2"));
    command
        .args([
            "run",
            "--supervise",
            "--rate",
            "1000",
            "--metrics",
            "0",
            "--stall-timeout",
            stall_timeout,
            "--listen",
            &listen,
        ])
        .args([
            "--port-file",
            port_file.to_str().unwrap(),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ])
        .args(["--", "-ll:cpu", "1", "-ll:util", "1"])
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .process_group(0);
    if let Some(fault) = fault {
        command.env("AMI2_FAULT", fault);
    }
    let mut supervisor = command.spawn().expect("ami2 starts");
    let started = Instant::now();
    while !port_file.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the service did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (gap, bins) = runtime.block_on(async {
        let mut watcher = Client::connect(&listen, ClientOptions::default()).await.unwrap();
        watcher.subscribe(&["energy_hist"]).await.unwrap();
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut last: Option<Instant> = None;
        let (mut gap, mut bins) = (Duration::ZERO, 0);
        // The graph manager runs only for requests: an editor sends one after the fault is armed
        // (its answer is lost with the process when the fault is a hang).
        if fault.is_some_and(|f| f.starts_with("graph_manager")) {
            let listen = listen.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let editor = Client::connect(&listen, ClientOptions::default()).await.unwrap();
                let (version, _) = editor.graph().await.unwrap();
                let edit = Edit::SetParams {
                    id: "energy_hist".into(),
                    params: json!({"bins": 40, "low": 0.0, "high": 10.0}),
                };
                let _ = editor.request(version, vec![edit], None).await;
            });
        }
        while Instant::now() < until {
            if let Ok(Some(Event::Bin(_))) = watcher.next_event_timeout(Duration::from_millis(100)).await {
                let now = Instant::now();
                if let Some(last) = last {
                    gap = gap.max(now - last);
                }
                last = Some(now);
                bins += 1;
            }
        }
        (gap, bins)
    });
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", supervisor.id())])
        .status();
    let _ = supervisor.wait();
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    (gap, bins, stderr.matches("ami2 supervisor: service").count())
}

fn main() {
    let seconds: f64 = arg("--seconds", "12").parse().expect("--seconds S");
    let stall_timeout = arg("--stall-timeout", "2");
    let only = arg("--only", "");
    println!("synthetic events at 1 kHz, bins every 50 ms, stall timeout {stall_timeout} s, {seconds} s per case");
    println!("{:<26} {:>14} {:>6} {:>9}", "fault (AMI2_FAULT)", "longest gap", "bins", "restarts");
    for fault in [
        None,
        Some("source/0:panic@5s"),
        Some("worker/0:panic@5s"),
        Some("local_reducer:panic@5s"),
        Some("global_reducer:panic@5s"),
        Some("graph_manager:panic@1"),
        Some("monitor:panic@5s"),
        Some("source/0:hang@5s"),
        Some("worker/0:hang@5s"),
        Some("local_reducer:hang@5s"),
        Some("global_reducer:hang@5s"),
        Some("graph_manager:hang@1"),
        Some("monitor:hang@5s"),
        Some("monitor-watcher:hang@5s"),
    ]
    .into_iter()
    .filter(|fault| fault.unwrap_or("(none)").contains(only.as_str()))
    {
        let (gap, bins, restarts) = measure(fault, seconds, &stall_timeout);
        println!(
            "{:<26} {:>11.0} ms {:>6} {:>9}",
            fault.unwrap_or("(none)"),
            gap.as_secs_f64() * 1e3,
            bins,
            restarts
        );
    }
}
