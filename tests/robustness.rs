//! Robustness against the real runtime and real processes: every component made to fail (panic,
//! error) and to hang through `AMI2_FAULT`; the service killed with `kill -9` again and again while
//! a client edits the graph; the cron watchdog run as cron would run it.
//!
//! The crash loop runs `AMI2_CRASH_LOOPS` times (3 by default, so CI stays short); the full count:
//! `AMI2_CRASH_LOOPS=50 cargo test --release --test robustness crash_loop -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use client_lib::{Answer, BlockingClient, Event};
use common::scratch;
use common::service::{client, free_port, graph_node, subscriber, Service};
use protocol1::Edit;
use serde_json::{json, Value};

mod common;

/// `ami2 run ARGS` with `AMI2_FAULT=fault`, to completion: bins as JSON lines, no metrics endpoint,
/// no client server, one CPU processor.
fn run_with_fault(fault: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ami2"))
        .arg("run")
        .args(args)
        .args(["--json", "--metrics", "0", "--no-listen", "--", "-ll:cpu", "1", "-ll:util", "1"])
        .env("AMI2_FAULT", fault)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("ami2 runs")
}

/// The bins printed with `--json`.
fn bins(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a bin is JSON"))
        .collect()
}

fn events_in(bins: &[Value]) -> u64 {
    bins.iter().map(|b| b["events"].as_u64().unwrap()).sum()
}

#[test]
fn a_failing_attempt_of_every_pipeline_task_is_retried_and_nothing_is_lost() {
    let frames = 3000;
    for fault in [
        "source/0:panic@3",
        "source/1:error@4",
        "worker/1:panic@3",
        "worker/0:error@5",
        "local_reducer:panic@2",
        "global_reducer:panic@4",
        "global_reducer:error@6",
        "monitor:panic@1",
    ] {
        let out = run_with_fault(fault, &["--frames", "3000", "--rate", "3000", "--partitions", "2"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{fault}: {stderr}");
        let component = fault.split(':').next().unwrap();
        assert!(stderr.contains("injected fault"), "{fault}: the fault did not strike\n{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(component) && (l.contains("Panic") || l.contains("Error"))),
            "{fault}: no incident reported\n{stderr}"
        );
        // Retried: every event is in a published bin, once.
        assert_eq!(events_in(&bins(&out)), frames, "{fault}: events in bins\n{stderr}");
    }
}

#[test]
fn a_source_failing_fifteen_attempts_of_sixteen_delivers_everything_and_reports_each() {
    // The source's report carries an incident per failed attempt through a future bounded at
    // Legion's inline size (2 KiB): fifteen short ones fit whole (longer ones would be shortened,
    // then counted: robust::fit_incidents).
    let out = run_with_fault(
        "source/0:error@2x15",
        &["--frames", "2000", "--rate", "4000", "--partitions", "2", "--attempts", "16"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(events_in(&bins(&out)), 2000, "events in bins\n{stderr}");
    assert!(stderr.contains("15 incidents"), "{stderr}");
    for attempt in 1..=15 {
        let line = format!("source/0 Error: injected fault: source/0 Error at invocation 2, attempt {attempt}\n");
        assert!(stderr.contains(&line), "incident of attempt {attempt} missing\n{stderr}");
    }
}

#[test]
fn a_task_failing_every_attempt_ends_the_run_with_its_reason() {
    let out = run_with_fault("worker:error@3x3", &["--frames", "2000", "--rate", "2000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("worker/0 failed 3 times"), "{stderr}");
}

#[test]
fn a_source_failing_every_attempt_is_the_one_failure_reported_and_nothing_after_it_is_retried() {
    let out = run_with_fault("source/0:error@3x3", &["--frames", "2000", "--rate", "2000", "--image-size", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("source/0 failed 3 times; last: injected fault"), "{stderr}");
    // The tasks that read its output fail with it at once: no attempts of their own, no
    // "failed 3 times" of theirs around the source's reason, which shows twice: where it
    // happened (the source task's log line) and in the run's error.
    assert_eq!(stderr.matches("failed 3 times").count(), 2, "{stderr}");
    assert!(
        !stderr.contains("worker/0 failed") && !stderr.contains("reducer failed 3"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("attempt failed").count(), 3, "{stderr}");
}

#[test]
fn a_crash_while_positions_are_converted_to_another_partition_count_loses_and_repeats_nothing() {
    let data = scratch("partition-change-crash").join("data");
    let run = |fault: &str, partitions: &str, more: &[&str]| {
        let args = [
            &[
                "--frames",
                "4000",
                "--image-size",
                "0",
                "--data-dir",
                data.to_str().unwrap(),
                "--partitions",
                partitions,
            ][..],
            more,
        ]
        .concat();
        let out = run_with_fault(fault, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, stderr)
    };
    // 4 partitions, stopped part-way.
    let (first, stderr) = run("", "4", &["--rate", "1000", "--seconds", "2"]);
    assert!(first.status.success(), "{stderr}");
    let before = events_in(&bins(&first));
    assert!(before > 0 && before < 4000, "{before} events: {stderr}");
    // 2: the process dies once sources 0 and 1 have their new positions, before the states of 2
    // and 3 are removed.
    let (crashed, stderr) = run("partition_change:exit@1", "2", &[]);
    assert_eq!(crashed.status.code(), Some(86), "{stderr}");
    assert!(stderr.contains("injected fault: partition_change"), "{stderr}");
    assert_eq!(events_in(&bins(&crashed)), 0, "{stderr}");
    // 3 (yet another count), to the end: the interrupted conversion is finished, then converted.
    let (last, stderr) = run("", "3", &["--rate", "0"]);
    assert!(last.status.success(), "{stderr}");
    assert!(stderr.contains("partitions changed from 4 to 3"), "{stderr}");
    assert_eq!(before + events_in(&bins(&last)), 4000, "every frame analysed once: {stderr}");
}

/// The snapshot files (`*.snap`) in a data directory's store folders.
fn snapshot_files(data: &Path) -> Vec<PathBuf> {
    ["control", "results"]
        .iter()
        .flat_map(|store| std::fs::read_dir(data.join(store)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "snap"))
        .collect()
}

#[test]
fn a_snapshot_that_cannot_be_written_does_not_stop_the_service() {
    let data = scratch("snapshot-fails").join("data");
    let data_arg = data.to_str().unwrap();
    let first = run_with_fault("", &["--frames", "1000", "--rate", "0", "--data-dir", data_arg]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // A folder where each snapshot's temporary file would be written: the writes fail, also as
    // root (for whom a read-only folder would not).
    let snapshots = snapshot_files(&data);
    assert!(snapshots.len() >= 4, "{snapshots:?}");
    let blockers: Vec<PathBuf> = snapshots.iter().map(|s| s.with_extension("snap.tmp")).collect();
    for blocker in &blockers {
        std::fs::create_dir(blocker).unwrap();
    }
    let out = run_with_fault(
        "",
        &[
            "--frames",
            "3000",
            "--rate",
            "1500",
            "--snapshot-interval",
            "0.2",
            "--data-dir",
            data_arg,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a failed snapshot stopped the service:\n{stderr}");
    assert!(events_in(&bins(&out)) > 0, "{stderr}");
    // Said once when it starts failing, and again at the stop, not at each of the ~10 tries.
    let warnings = stderr.lines().filter(|l| l.contains("the service goes on and tries again")).count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings:\n{stderr}");
    assert!(stderr.contains(".snap.tmp") && stderr.contains("snapshot of store"), "{stderr}");
    // Once the folder can be written again, a half-written snapshot left behind is removed at
    // the next start, and snapshots work.
    for blocker in &blockers {
        std::fs::remove_dir(blocker).unwrap();
    }
    std::fs::write(&blockers[0], b"half a snapshot").unwrap();
    let last = run_with_fault("", &["--frames", "500", "--rate", "0", "--data-dir", data_arg]);
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(last.status.success(), "{stderr}");
    assert!(!blockers[0].exists(), "the half-written snapshot is still there\n{stderr}");
    assert!(!stderr.contains("tries again"), "{stderr}");
}

/// A torn tail of Control's log (a crash in the middle of an append) is cut off at the next
/// start, and said once in the service's log, with its context: not once by the store and again
/// by the service.
#[test]
fn a_torn_log_tail_is_reported_once() {
    let data = scratch("torn-log").join("data");
    let data_arg = data.to_str().unwrap();
    let first = run_with_fault("", &["--frames", "500", "--rate", "0", "--data-dir", data_arg]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let log = kv_region::persist::SegmentFiles::new(&data.join("control"), "/control/").log;
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);
    let second = run_with_fault("", &["--frames", "500", "--rate", "0", "--data-dir", data_arg]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    let warning = "is damaged (torn: the file ends 7 bytes into its 8-byte header)";
    let said: Vec<&str> = stderr.lines().filter(|line| line.contains(warning)).collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("stores") && said[0].contains("/control/"), "{}", said[0]);
    assert!(
        said[0].contains(&log.display().to_string()) && said[0].contains(".damaged-"),
        "{}",
        said[0]
    );
}

/// Makes `data` a data directory that cannot be loaded: a run writes it, then Results' snapshots
/// are damaged, with no good one left (Results has no log). Returns the damaged files.
fn unloadable_data_dir(data: &Path) -> Vec<PathBuf> {
    let first = run_with_fault("", &["--frames", "1000", "--rate", "0", "--data-dir", data.to_str().unwrap()]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let results: Vec<PathBuf> = std::fs::read_dir(data.join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".snap"))
        .collect();
    assert!(!results.is_empty());
    for file in &results {
        std::fs::write(file, b"AMI2SNAP damaged").unwrap();
    }
    results
}

#[test]
fn a_data_directory_that_cannot_be_loaded_ends_the_supervised_service_without_restarts() {
    let data = scratch("unloadable").join("data");
    let data_arg = data.to_str().unwrap();
    unloadable_data_dir(&data);
    let args = [
        "run",
        "--supervise",
        "--frames",
        "1000",
        "--json",
        "--metrics",
        "0",
        "--no-listen",
        "--data-dir",
        data_arg,
        "--",
        "-ll:cpu",
        "1",
        "-ll:util",
        "1",
    ];
    let out = common::ami2_within(&args, Duration::from_secs(60)).expect("the supervisor restarts the service again and again");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("restart 1"), "restarted:\n{stderr}");
    assert!(stderr.contains("cannot load its data directory"), "{stderr}");
    // The supervisor ends with its child's code, for what started it (the cron watchdog).
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    // The error says what is wrong and how to recover.
    assert!(
        stderr.contains("cannot be loaded")
            && stderr.contains("no snapshot verifies")
            && stderr.contains("To recover: put back good copies"),
        "{stderr}"
    );
    // Alone, the service ends with the code the supervisor does not restart.
    let alone = run_with_fault("", &["--frames", "1000", "--data-dir", data_arg]);
    assert_eq!(alone.status.code(), Some(65), "{}", String::from_utf8_lossy(&alone.stderr));
}

#[test]
fn a_stuck_monitor_watcher_is_replaced_without_stopping_results() {
    let out = run_with_fault("monitor-watcher:hang@1s", &["--frames", "5000", "--rate", "1000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped looking"), "no incident for the stuck watcher\n{stderr}");
    assert_eq!(events_in(&bins(&out)), 5000, "{stderr}");
}

/// Runs a bounded job under the supervisor with `fault` (a hang) and a 2 s stall limit; returns the
/// output and the bins printed by all the service's lives.
fn supervised_run_with_hang(fault: &str, dir: &Path) -> (Output, Vec<Value>) {
    let out = run_with_fault(
        fault,
        &[
            "--supervise",
            "--frames",
            "8000",
            "--rate",
            "2000",
            "--stall-timeout",
            "2",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    let bins = bins(&out);
    (out, bins)
}

#[test]
fn a_hung_task_is_found_by_the_monitor_and_the_service_restarts_from_its_saved_state() {
    for fault in ["worker/0:hang@12", "source/0:hang@12", "global_reducer:hang@12"] {
        let dir = scratch(&format!("hang-{}", fault.replace(['/', ':', '@'], "-")));
        let started = Instant::now();
        let (out, bins) = supervised_run_with_hang(fault, &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{fault}: {stderr}");
        let component = fault.split(':').next().unwrap();
        assert!(stderr.contains("stalled: attempt 1 has run for"), "{fault}: {stderr}");
        assert!(stderr.contains("restart 1"), "{fault}: no restart\n{stderr}");
        // The restarted service moved the monitor's record into Control and reports it.
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(component) && l.contains("Stall")),
            "{fault}: {stderr}"
        );
        assert!(stderr.contains("service Restart"), "{fault}: {stderr}");
        // Results resumed, and the source never went backwards: bins only move forward.
        let numbers: Vec<u64> = bins.iter().map(|b| b["bin"].as_u64().unwrap()).collect();
        assert!(numbers.len() > 40, "{fault}: only {} bins", numbers.len());
        assert!(
            numbers.windows(2).all(|w| w[0] <= w[1]),
            "{fault}: bins went backwards: {numbers:?}"
        );
        eprintln!(
            "{fault}: {} bins, {:.1} s including the stall and the restart",
            numbers.len(),
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn the_graph_manager_retries_and_the_incident_shows_in_status() {
    let dir = scratch("graph-manager-fault");
    let service = Service::start_with_env(&dir, "127.0.0.1:0", &[], &[("AMI2_FAULT", "graph_manager:panic@1")]);
    let editor = client(&service.addr);
    let (version, _) = editor.graph().unwrap();
    let edit = Edit::SetParams {
        id: "energy_hist".into(),
        params: json!({"bins": 40, "low": 0.0, "high": 10.0}),
    };
    match editor.request(version, vec![edit], None).unwrap() {
        Answer::Accepted(a) => assert_eq!(a.version, version + 1),
        Answer::Rejected(r) => panic!("rejected: {r:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = editor.status().unwrap();
        let incidents = status["health"]["recent_incidents"].as_array().cloned().unwrap_or_default();
        if incidents
            .iter()
            .any(|i| i["component"] == "graph_manager" && i["kind"] == "panic" && i["recovered"] == true)
        {
            assert!(status["metrics"]["incidents"]["panic"].as_u64() >= Some(1), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no graph manager incident in status: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // After a crash, the restarted service still shows it: status reads them from Control.
    let mut service = service;
    service.kill();
    let service = Service::start(&dir, "127.0.0.1:0", &[]);
    let status = client(&service.addr).status().unwrap();
    let incidents = status["health"]["recent_incidents"].as_array().cloned().unwrap_or_default();
    let shown = incidents
        .iter()
        .find(|i| i["component"] == "graph_manager" && i["kind"] == "panic")
        .unwrap_or_else(|| panic!("{status}"));
    // With its key, by which a client reads the whole record.
    let key = shown["key"].as_str().unwrap_or_else(|| panic!("no key: {shown}"));
    let stored = client(&service.addr).get_key(key).unwrap().unwrap_or_else(|| panic!("no {key}"));
    assert_eq!(stored["message"], shown["message"]);
}

#[test]
fn a_restarted_service_runs_the_graph_the_workers_reverted_to() {
    // A graph that fails at run time, then a crash: the new process has run no graph yet, and
    // must take the one the workers had reverted to (recorded with the failure), not none.
    let dir = scratch("revert-after-restart");
    let mut service = Service::start(&dir, "127.0.0.1:0", &[]);
    let editor = client(&service.addr);
    let (good, _) = editor.graph().unwrap();
    // Compiles (the field is declared an image) but fails on every event: `energy` is a scalar.
    let broken = json!({"nodes": [{"id": "img", "op": "select", "params": {"field": "energy", "kind": "image"}},
                                  {"id": "ghost", "op": "sum", "inputs": ["img"]}],
                        "results": ["ghost"]});
    let failed = match editor.submit_graph(&broken).unwrap() {
        Answer::Accepted(a) => a.version,
        Answer::Rejected(r) => panic!("rejected: {r:?}"),
    };
    let mark_key = ami_tasks::stores::bad_graph_key(failed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mark = loop {
        if let Some(mark) = editor.get_key(&mark_key).unwrap() {
            break mark;
        }
        assert!(Instant::now() < deadline, "graph {failed} was never marked failed");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(mark["reverted_to"], good, "{mark}");
    // `ami2 status` says which graph runs.
    let running = |addr: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = client(addr).status().unwrap();
            if status["graph_running"] == good {
                return status;
            }
            assert!(Instant::now() < deadline, "{status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(running(&service.addr)["graph_version"], failed);
    service.kill();
    let service = Service::start(&dir, "127.0.0.1:0", &[]);
    assert_eq!(running(&service.addr)["graph_version"], failed);
    let check = Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(["status", "--check", "60"])
        .env("AMI2_ADDR", &service.addr)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success()
            && said.contains(&format!(
                "graph version {failed} failed at run time; the workers run version {good}"
            )),
        "{said}"
    );
    let mut watcher = subscriber(&service.addr, &["energy_hist"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no bin of graph {good} after the restart");
        if let Ok(Some(Event::Bin(bin))) = watcher.next_event(Duration::from_millis(500)) {
            assert_eq!(bin.graph_version, good, "{bin:?}");
            break;
        }
    }
}

/// The saved position of data source 0 (frames delivered so far).
fn source_position(client: &BlockingClient) -> u64 {
    let state = client.get_key("/component/source/0/state").unwrap().expect("a saved source state");
    state["position"]["next_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no position in {state}"))
}

/// Waits for the next bin; returns when it came.
fn first_bin(watcher: &mut BlockingClient, deadline: Instant) -> Instant {
    loop {
        assert!(Instant::now() < deadline, "no result bin after the restart");
        if let Ok(Some(Event::Bin(_))) = watcher.next_event(Duration::from_millis(200)) {
            return Instant::now();
        }
    }
}

#[test]
fn crash_loop_loses_no_accepted_edit_and_never_goes_backwards() {
    let loops: usize = std::env::var("AMI2_CRASH_LOOPS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let dir = scratch("crash-loop");
    let listen = format!("127.0.0.1:{}", free_port());
    // Snapshots (and log compactions) several times a second, so that kills land on them too.
    let snapshots = ["--snapshot-interval", "0.2"];
    let mut service = Service::start(&dir, &listen, &snapshots);
    let mut watcher = subscriber(&service.addr, &["energy_hist"]);
    let editor = client(&service.addr);
    let mut last_position = 0;
    let mut accepted: Vec<(u64, u64)> = Vec::new(); // (version, bins param)
    let mut recoveries = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..loops {
        // Edits until a random moment, then kill -9 (possibly while a request is in flight).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_at = Instant::now() + Duration::from_millis(300 + rng % 1500);
        while Instant::now() < kill_at {
            let Ok((version, _)) = editor.graph() else { continue };
            let bins = 10 + accepted.len() as u64;
            let edit = Edit::SetParams {
                id: "energy_hist".into(),
                params: json!({"bins": bins, "low": 0.0, "high": 10.0}),
            };
            if let Ok(Answer::Accepted(a)) = editor.request(version, vec![edit], None) {
                accepted.push((a.version, bins));
            }
        }
        service.kill();
        let killed = Instant::now();
        service = Service::start(&dir, &listen, &snapshots);
        let back = first_bin(&mut watcher, killed + Duration::from_secs(60));
        recoveries.push(back - killed);

        // Nothing accepted is lost: the graph is at least the last accepted version, with its edit
        // (or a later one whose answer the kill cut off).
        let (version, graph) = client(&service.addr).graph().unwrap();
        if let Some(&(last_version, last_bins)) = accepted.last() {
            assert!(
                version >= last_version,
                "round {round}: version {version} < accepted {last_version}"
            );
            let hist = graph_node(&graph, "energy_hist");
            let bins = hist["params"]["bins"].as_u64().unwrap();
            assert!(bins >= last_bins, "round {round}: bins {bins} < accepted {last_bins}: {graph}");
        }
        // The source continues from where it was.
        let position = source_position(&client(&service.addr));
        assert!(
            position >= last_position,
            "round {round}: source went back from {last_position} to {position}"
        );
        last_position = position;
    }
    recoveries.sort();
    let median = recoveries[recoveries.len() / 2];
    let worst = recoveries[recoveries.len() - 1];
    eprintln!(
        "crash loop: {loops} kills, {} edits accepted, kill → first new bin: median {:.2} s, worst {:.2} s",
        accepted.len(),
        median.as_secs_f64(),
        worst.as_secs_f64()
    );
    assert!(!accepted.is_empty(), "no edit was accepted");
}

/// Runs the watchdog script as cron would (no terminal, its own environment).
fn watchdog(config: &Path) -> std::process::ExitStatus {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cron/ami2-watchdog"))
        .arg(config)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the watchdog runs")
}

fn status_ok(addr: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(["status", "--connect", addr, "--check", "30"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A watchdog configuration for a service of its own (free port, fresh data directory, checked
/// as soon as it starts) with `settings` added; returns (configuration file, data directory,
/// address).
fn watchdog_config(name: &str, settings: &str) -> (PathBuf, PathBuf, String) {
    let dir = scratch(name);
    let data = dir.join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("watchdog.conf");
    std::fs::write(
        &config,
        format!(
            "AMI2_BIN='{}'\nAMI2_DATA_DIR='{}'\nAMI2_ADDR='{addr}'\nAMI2_START_GRACE=0\n{settings}\n",
            env!("CARGO_BIN_EXE_ami2"),
            data.display()
        ),
    )
    .unwrap();
    (config, data, addr)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_watchdog_restarts_a_dead_service_and_leaves_a_healthy_one_alone() {
    let (config, data, addr) = watchdog_config("watchdog", "AMI2_RUN_ARGS=(--rate 500 --metrics 0 -- -ll:cpu 1 -ll:util 1)");
    let pid_file = data.join("service.pid");
    let log = data.join("watchdog.log");
    let stop = |pid: &str| {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
    };

    // No service yet: two watchdog runs at once (cron overlapping itself) start exactly one, and
    // it answers.
    let racing: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn({
                let config = config.clone();
                move || watchdog(&config)
            })
        })
        .collect();
    for run in racing {
        assert!(run.join().unwrap().success(), "{}", read(&log));
    }
    assert!(status_ok(&addr), "{}", read(&log));
    assert_eq!(read(&log).matches("started:").count(), 1, "{}", read(&log));
    let first = read(&pid_file);

    // Healthy: nothing changes (same process, nothing logged).
    let log_before = read(&log);
    assert!(watchdog(&config).success());
    assert_eq!(read(&pid_file), first);
    assert_eq!(read(&log), log_before);

    // kill -9 of the whole service (supervisor and child): the next run brings it back.
    stop(first.trim());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!status_ok(&addr));
    let log_before = read(&log);
    assert!(watchdog(&config).success(), "{}", read(&log));
    let second = read(&pid_file);
    assert_ne!(second, first);
    assert!(status_ok(&addr));
    let logged = read(&log)[log_before.len()..].to_string();
    assert!(logged.contains("not running") && logged.contains("started:"), "{logged}");

    // The same data directory: the graph the first life had.
    let (version, _) = client(&addr).graph().unwrap();
    assert!(version >= 1);
    stop(second.trim());
}

#[test]
fn the_watchdog_restarts_a_multi_process_job_when_a_rank_dies() {
    let (config, data, addr) = watchdog_config(
        "watchdog-mpi",
        "AMI2_LAUNCH=(launch --np 2 --bootstrap mpi)\n\
         AMI2_RUN_ARGS=(--rate 500 --partitions 2 --metrics 0 -- -ll:cpu 1 -ll:util 1 -ll:csize 256)",
    );
    let log = data.join("watchdog.log");
    assert!(watchdog(&config).success(), "{}", read(&log));
    assert!(status_ok(&addr), "{}", read(&log));

    // kill -9 of the rank that runs the driver: the launcher ends the job; the watchdog starts it again.
    let ranks = service_processes(&data);
    assert_eq!(ranks.len(), 2, "ranks of the job: {ranks:?}");
    let _ = Command::new("kill").args(["-KILL", &ranks[0].to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_ok(&addr) {
        assert!(Instant::now() < deadline, "the job still answers after its rank 0 was killed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_before = read(&log);
    assert!(watchdog(&config).success(), "{}", read(&log));
    assert!(status_ok(&addr), "{}", read(&log));
    let logged = read(&log)[log_before.len()..].to_string();
    assert!(logged.contains("started:") && logged.contains("launch --np 2"), "{logged}");
    assert_eq!(service_processes(&data).len(), 2);
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", read(&data.join("service.pid")).trim())])
        .status();
    for pid in service_processes(&data) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

#[test]
fn the_watchdog_does_not_restart_a_service_that_cannot_load_its_data_directory_until_it_is_repaired() {
    let (config, data, addr) = watchdog_config(
        "watchdog-unloadable",
        "AMI2_RUN_ARGS=(--rate 500 --metrics 0 -- -ll:cpu 1 -ll:util 1)",
    );
    let damaged = unloadable_data_dir(&data);
    let log = data.join("watchdog.log");
    let hold = data.join("watchdog.hold");

    // The first run starts the service, which ends with exit code 65; cron's next run does not
    // start it again. The watchdog said why and what to do, once.
    assert!(!watchdog(&config).success(), "{}", read(&log));
    let first = read(&log);
    assert!(!watchdog(&config).success(), "{}", read(&log));
    assert_eq!(read(&log).matches("started:").count(), 1, "started again:\n{}", read(&log));
    assert!(
        first.contains("the service exited with code 65: it cannot load its data directory")
            && first.contains("says which files are damaged and how to recover")
            && first.contains("Not restarting it")
            && first.contains(hold.to_str().unwrap()),
        "{first}"
    );
    assert!(read(&data.join("service.log")).contains("no snapshot verifies"));
    assert!(hold.is_file());
    // Nothing more is written while held.
    assert!(!watchdog(&config).success(), "{}", read(&log));
    assert_eq!(read(&log), first, "the watchdog acted again while held");
    assert!(service_processes(&data).is_empty());

    // The operator moves the damaged snapshots away (Results starts empty): the next run starts
    // the service again, and it answers.
    for file in &damaged {
        std::fs::rename(file, file.with_extension("moved-away")).unwrap();
    }
    assert!(watchdog(&config).success(), "{}", read(&log));
    assert!(status_ok(&addr), "{}", read(&log));
    let logged = read(&log)[first.len()..].to_string();
    assert!(logged.contains("the hold is lifted") && logged.contains("started:"), "{logged}");
    assert!(!hold.exists());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", read(&data.join("service.pid")).trim())])
        .status();
}

#[test]
fn the_watchdog_does_not_restart_a_service_that_refuses_its_arguments() {
    let (config, data, _) = watchdog_config("watchdog-refused", "AMI2_RUN_ARGS=(--source nosuch:x -- -ll:cpu 1 -ll:util 1)");
    let log = data.join("watchdog.log");
    assert!(!watchdog(&config).success(), "{}", read(&log));
    let first = read(&log);
    assert!(!watchdog(&config).success());
    assert_eq!(read(&log).matches("started:").count(), 1, "started again:\n{}", read(&log));
    assert!(
        first.contains("the service exited with code 2: it refused its arguments") && first.contains("AMI2_RUN_ARGS"),
        "{first}"
    );
    assert_eq!(read(&log), first, "the watchdog acted again while held");
    // Fixing the configuration lifts the hold: the next run starts the service again.
    std::fs::write(&config, read(&config).replace("nosuch:x", "nosuch:y")).unwrap();
    assert!(!watchdog(&config).success());
    let logged = read(&log)[first.len()..].to_string();
    assert!(logged.contains("the hold is lifted") && logged.contains("started:"), "{logged}");
}

/// The `ami2 run` processes serving `data` (found by their `--data-dir` argument), oldest first.
fn service_processes(data: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"ami2"))
                && args.get(1) == Some(&&b"run"[..])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--data-dir" && w[1] == data.to_str().unwrap().as_bytes())
        })
        .collect();
    pids.sort();
    pids
}
