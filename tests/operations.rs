//! Operating the service: Legion Prof and Legion Spy on real runs (`--profile`/`--spy`, then
//! `ami2 prof`/`ami2 spy`, which run legion_prof and legion_spy.py), the Prometheus endpoint
//! scraped while a bounded run goes, and JSON logs. Real processes, the real runtime and tools.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ami_tasks::metrics::MetricsSummary;
use common::{ami2, scratch, with_legion};
use serde_json::Value;

mod common;

fn succeeded(out: &std::process::Output) -> bool {
    if !out.status.success() {
        eprintln!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

#[test]
fn a_profiled_run_is_read_by_legion_prof() {
    let dir = scratch("profile");
    let prof = dir.join("prof");
    let out = ami2(&with_legion(&[
        "run",
        "--frames",
        "400",
        "--partitions",
        "2",
        "--metrics",
        "0",
        "--profile",
        prof.to_str().unwrap(),
    ]));
    assert!(succeeded(&out));
    assert!(prof.join("prof_0.gz").is_file(), "no profile log in {}", prof.display());

    let out = ami2(&["prof", prof.to_str().unwrap()]);
    assert!(succeeded(&out), "legion_prof could not read the profile");
    let statistics = std::fs::read_to_string(prof.join("statistics.txt")).unwrap();
    for task in ["data_source", "worker", "local_reducer", "global_reducer"] {
        assert!(
            statistics.contains(&format!("Task {task} ")),
            "{task} missing from the statistics:\n{statistics}"
        );
    }
    let trace: Value = serde_json::from_slice(&std::fs::read(prof.join("trace.json")).unwrap()).unwrap();
    let events = trace.as_array().expect("a trace is a JSON array of events");
    assert!(
        events.iter().any(|e| e["name"].as_str().is_some_and(|n| n.contains("worker"))),
        "no worker task in the trace"
    );
}

#[test]
fn a_spied_run_is_drawn_by_legion_spy() {
    let dir = scratch("spy");
    let spy = dir.join("spy");
    let out = ami2(&with_legion(&[
        "run",
        "--frames",
        "100",
        "--metrics",
        "0",
        "--spy",
        spy.to_str().unwrap(),
    ]));
    assert!(succeeded(&out));
    assert!(spy.join("spy_0.log").is_file());

    let out = ami2(&["spy", spy.to_str().unwrap()]);
    assert!(succeeded(&out), "legion_spy.py failed");
    let pdfs: Vec<String> = std::fs::read_dir(&spy)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pdf"))
        .collect();
    for graph in ["dataflow_top_level_", "event_graph_top_level_"] {
        let file = pdfs
            .iter()
            .find(|n| n.starts_with(graph))
            .unwrap_or_else(|| panic!("no {graph}*.pdf among {pdfs:?}"));
        let bytes = std::fs::read(spy.join(file)).unwrap();
        assert!(bytes.starts_with(b"%PDF"), "{file} is not a PDF");
    }
}

#[test]
fn legion_spy_over_logs_it_cannot_read_is_an_error() {
    let dir = scratch("spy-garbage");
    std::fs::write(dir.join("spy_0.log"), "not a Legion Spy log\n").unwrap();
    let out = ami2(&["spy", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without legion_spy.py or graphviz it fails earlier, saying so.
    assert!(
        !out.status.success(),
        "ami2 spy succeeded on garbage: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("drew no graphs") || stderr.contains("not found") || stderr.contains("not installed"),
        "{stderr}"
    );
}

#[test]
fn metrics_names_its_own_option_when_refusing_an_address() {
    let out = ami2(&["metrics", "--addr", "garbage"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--addr takes 0 (off), a port or HOST:PORT"), "{stderr}");
}

#[test]
fn cron_install_writes_an_entry_in_the_cron_folder_and_uninstall_removes_it() {
    let dir = scratch("cron");
    let (data, cron_d) = (dir.join("data"), dir.join("cron.d"));
    std::fs::create_dir_all(&cron_d).unwrap();
    let target = ["--data-dir", data.to_str().unwrap(), "--cron-dir", cron_d.to_str().unwrap()];
    let out = ami2(&[&["cron", "install"][..], &target].concat());
    assert!(succeeded(&out));
    let entries: Vec<_> = std::fs::read_dir(&cron_d).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(entries.len(), 1, "one cron.d file");
    let entry = std::fs::read_to_string(entries[0].path()).unwrap();
    let script = data.join("ami2-watchdog");
    assert!(entry.contains("* * * * * ") && entry.contains(script.to_str().unwrap()), "{entry}");
    assert!(script.is_file() && data.join("watchdog.conf").is_file());

    let out = ami2(&[&["cron", "uninstall"][..], &target].concat());
    assert!(succeeded(&out));
    assert_eq!(std::fs::read_dir(&cron_d).unwrap().count(), 0, "the entry is left");

    // A cron folder that is not there is refused, not replaced by the user's crontab.
    let elsewhere = dir.join("data2");
    let missing = dir.join("no-such-cron.d");
    let out = ami2(&[
        "cron",
        "install",
        "--data-dir",
        elsewhere.to_str().unwrap(),
        "--cron-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a folder"));
    assert!(!elsewhere.exists(), "the refused install wrote its files");
}

#[test]
fn client_commands_refuse_an_address_that_is_not_host_and_port() {
    // A typo in the address is named as such (a refused argument), not reported as a service
    // that does not run.
    for addr in ["localhost", "127.0.0.1:99999", ":7820", "127.0.0.1:"] {
        for command in [&["status"][..], &["get", "/control/graph/version"], &["graph", "show"], &["watch"]] {
            let args: Vec<&str> = command.iter().copied().chain(["--connect", addr]).collect();
            let out = common::ami2_within(&args, Duration::from_secs(20)).unwrap_or_else(|| panic!("ami2 {args:?} did not end"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "ami2 {args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("--connect (or AMI2_ADDR) {addr:?} is not an address")),
                "ami2 {args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn numbers_that_are_not_seconds_or_rates_are_refused_not_ignored_nor_a_panic() {
    let run = ["run", "--frames", "10", "--metrics", "0", "--no-listen"];
    let cases: [(&[&str], &str); 5] = [
        (&["launch", "--np", "1"], "--start-timeout"),
        (&run, "--seconds"),
        (&run, "--rate"),
        (&["daq-sim", "--frames", "10", "--name", "ami2-ops-rate"], "--rate"),
        (&["status", "--connect", "127.0.0.1:1"], "--check"),
    ];
    for (command, option) in cases {
        for value in ["NaN", "inf", "-1"] {
            let given = format!("{option}={value}");
            let mut args: Vec<&str> = command.to_vec();
            args.push(&given);
            if command[0] == "launch" {
                args.extend(run);
            }
            if command.contains(&"run") || command[0] == "launch" {
                args.extend(common::LEGION);
            }
            let out = common::ami2_within(&args, Duration::from_secs(60)).unwrap_or_else(|| panic!("ami2 {args:?} did not end"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "ami2 {args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("invalid value '{value}' for '{option}")),
                "ami2 {args:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "ami2 {args:?}: {stderr}");
        }
    }
    // A rate past 1e9 frames a second would give frames 1 ns apart the same time stamp.
    for command in [&run[..], &["daq-sim", "--frames", "10", "--name", "ami2-ops-rate"][..]] {
        let mut args: Vec<&str> = command.to_vec();
        args.push("--rate=2e9");
        if command[0] == "run" {
            args.extend(common::LEGION);
        }
        let out = common::ami2_within(&args, Duration::from_secs(60)).unwrap_or_else(|| panic!("ami2 {args:?} did not end"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "ami2 {args:?}: {stderr}");
        assert!(stderr.contains("from 0 (as fast as possible) to 1e9"), "ami2 {args:?}: {stderr}");
    }
    let _ = std::fs::remove_file("/dev/shm/ami2-ops-rate");
}

#[test]
fn watch_refuses_an_empty_result_name_before_connecting() {
    // No service needed: the name is refused first (it would never name a result).
    let out =
        common::ami2_within(&["watch", "energy_hist", "", "--connect", "127.0.0.1:1"], Duration::from_secs(20)).expect("ami2 watch ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a result name is empty"), "{stderr}");
}

#[test]
fn a_file_source_without_a_path_is_refused() {
    // Refused (not restarted by a supervisor), rather than "recording  does not exist".
    let out = ami2(&with_legion(&["run", "--source", "file:", "--metrics", "0", "--no-listen"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--source file:PATH needs the path of a recording"), "{stderr}");
}

#[test]
fn a_file_source_that_is_not_a_readable_recording_is_refused() {
    // Missing, not a recording, or a recording of another format version: a start again would
    // fail the same way, so it is refused (exit code 2, which a supervisor does not restart).
    let dir = scratch("unusable-recording");
    let missing = dir.join("missing.rec");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a recording at all, but long enough to hold a header of one\n".repeat(4)).unwrap();
    let future = dir.join("future.rec");
    common::record(&future, &["--frames", "5"]);
    // The format version is the u32 at bytes 8..12 (docs/sources.md, "Format").
    let mut bytes = std::fs::read(&future).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&future, bytes).unwrap();
    for (file, says) in [(&missing, "does not exist"), (&text, "not"), (&future, "version")] {
        let source = format!("file:{}", file.display());
        let args = with_legion(&["run", "--supervise", "--source", &source, "--metrics", "0", "--no-listen"]);
        let out = common::ami2_within(&args, Duration::from_secs(60)).expect("the supervisor ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file:?}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains(says),
            "{file:?}: {stderr}"
        );
        assert!(!stderr.contains("restart 1"), "{file:?}: {stderr}");
    }
}

#[test]
fn a_failed_command_prints_its_error_and_causes_without_a_backtrace() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(["status", "--connect", "127.0.0.1:1"])
        .env("RUST_BACKTRACE", "1")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("Error: is the service running"), "{stderr}");
    assert!(stderr.contains("Caused by:") && stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

#[test]
fn zero_client_limits_are_refused() {
    for option in ["--max-connections", "--idle-timeout", "--subscriber-queue"] {
        let out = ami2(&["run", option, "0"]);
        assert_eq!(out.status.code(), Some(2), "{option} 0 was accepted");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> Option<MetricsSummary> {
    let mut response = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call().ok()?;
    Some(MetricsSummary::from_prometheus_text(&response.body_mut().read_to_string().ok()?))
}

/// Scrapes the endpoint while a paced, bounded run goes: the counters only grow, never pass the
/// events fed in, and end exactly at them (per partition too), with as many bins as were printed.
#[test]
fn the_metrics_endpoint_counts_the_events_fed_in() {
    const FRAMES: u64 = 3000;
    let dir = scratch("metrics");
    let port = free_port();
    let stdout = dir.join("bins.json");
    let frames = FRAMES.to_string();
    let port_arg = port.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(with_legion(&[
            "run",
            "--frames",
            &frames,
            "--rate",
            "1000",
            "--partitions",
            "2",
            "--batch-size",
            "50",
            "--json",
            "--metrics",
            &port_arg,
            "--metrics-linger",
            "5",
        ]))
        .env_remove("LD_LIBRARY_PATH")
        .stdout(File::create(&stdout).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let started = Instant::now();
    let mut scrapes: Vec<MetricsSummary> = Vec::new();
    let finished = loop {
        assert!(started.elapsed() < Duration::from_secs(120), "the run did not finish");
        if let Some(summary) = scrape(port) {
            let done = !summary.running && summary.events_in > 0;
            scrapes.push(summary);
            if done {
                break scrapes.last().unwrap().clone();
            }
        } else if child.try_wait().unwrap().is_some() {
            panic!("the run ended before a final scrape; {} scrapes", scrapes.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(succeeded(&out));

    assert!(
        scrapes.iter().any(|s| s.running && s.events_in > 0 && s.events_in < FRAMES),
        "no scrape saw the run in progress: {scrapes:?}"
    );
    for pair in scrapes.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.events_in >= a.events_in && b.events_processed >= a.events_processed);
        assert!(b.bins_published >= a.bins_published && b.rounds >= a.rounds);
        assert!(b.task_cpu.source_ns >= a.task_cpu.source_ns && b.task_cpu.worker_ns >= a.task_cpu.worker_ns);
    }
    for s in &scrapes {
        assert!(s.events_in <= FRAMES && s.events_processed <= FRAMES, "{s:?}");
    }

    assert_eq!(finished.events_in, FRAMES);
    assert_eq!(finished.events_processed, FRAMES);
    assert_eq!(
        finished.frames_per_partition,
        BTreeMap::from([("0".to_string(), FRAMES / 2), ("1".to_string(), FRAMES / 2)])
    );
    assert_eq!(finished.late_partials, 0);
    assert_eq!(finished.rounds_in_flight, 0);
    assert_eq!(finished.pending_bins, 0);
    assert_eq!(finished.graph_version, 1);
    assert!(
        finished.task_cpu.source_ns > 0 && finished.task_cpu.worker_ns > 0,
        "{:?}",
        finished.task_cpu
    );
    let bins: Vec<Value> = std::fs::read_to_string(&stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(finished.bins_published, bins.len() as u64);
    assert_eq!(finished.last_published_bin, bins.last().and_then(|b| b["bin"].as_u64()));
    assert_eq!(bins.iter().map(|b| b["events"].as_u64().unwrap()).sum::<u64>(), FRAMES);
}

#[test]
fn json_logs_carry_component_partition_and_bin() {
    let out = ami2(&with_legion(&[
        "--log-format",
        "json",
        "--log",
        "ami_tasks=debug",
        "run",
        "--frames",
        "300",
        "--partitions",
        "2",
        "--metrics",
        "0",
    ]));
    assert!(succeeded(&out));
    // Realm writes its own lines to stderr too: the JSON ones are ours.
    let logs: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let find = |component: &str, fields: &[&str]| {
        logs.iter()
            .find(|l| l["component"] == component && fields.iter().all(|f| l[*f].is_u64()))
            .unwrap_or_else(|| panic!("no {component} line with {fields:?} among {} lines", logs.len()))
    };
    let line = find("data_source", &["partition", "frames"]);
    assert!(line["level"] == "DEBUG" && line["timestamp"].is_string(), "{line}");
    find("worker", &["partition", "bin", "events"]);
    find("global_reducer", &["bin", "events"]);
    let finished = find("driver", &["events", "bins"]);
    assert_eq!(finished["events"], 300, "{finished}");
}
