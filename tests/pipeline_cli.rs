//! The pipeline through the `ami2` binary: `run` on each source kind (synthetic, a recording made by
//! `ami2 record`, a shared-memory ring filled by `ami2 daq-sim` in another process), `demo`'s live
//! table, refusal of an invalid graph, and a data directory continued with other partition counts.
//! Real processes, real files, the real runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ami2, ami2_within, record, scratch, spawn_ami2, with_legion};
use serde_json::Value;

mod common;

/// The bins `run --json` printed.
fn bins(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn total_events(bins: &[Value]) -> u64 {
    bins.iter().map(|b| b["events"].as_u64().unwrap()).sum()
}

#[test]
fn run_synthetic_publishes_every_event_in_consecutive_bins_and_says_where_the_cpu_went() {
    let summary = scratch("run-synthetic").join("summary.json");
    let out = ami2(&with_legion(&[
        "run",
        "--frames",
        "2000",
        "--partitions",
        "2",
        "--json",
        "--summary",
        summary.to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let bins = bins(&out);
    assert_eq!(total_events(&bins), 2000);
    let numbers: Vec<u64> = bins.iter().map(|b| b["bin"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "bins not consecutive: {numbers:?}");
    // The default graph's results are in every bin.
    assert!(bins.iter().all(|b| b["values"].get("energy_hist").is_some()), "{:?}", bins[0]);
    assert!(stderr.contains("2000 events"), "{stderr}");
    // Where the CPU went: the sources' and workers' bodies are part of the process's time, and
    // both are said.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let ns = |v: &Value| v.as_u64().unwrap_or(0);
    let bodies = ns(&summary["task_cpu_ns"]["source"]) + ns(&summary["task_cpu_ns"]["worker"]);
    assert!(bodies > 0 && bodies <= ns(&summary["process_cpu_ns"]), "{summary}");
    let cpu_line = stderr.lines().find(|l| l.starts_with("ami2: CPU: ")).unwrap_or_default();
    assert!(
        cpu_line.contains(" µs in the workers ") && cpu_line.contains(" µs in all "),
        "{stderr}"
    );
}

#[test]
fn recording_replays_and_a_truncated_one_replays_what_is_intact() {
    let dir = scratch("record");
    let file = dir.join("run.rec");
    // Default shapes: the default graph expects them.
    let file_arg = record(&file, &["--frames", "500"]);
    let out = ami2(&with_legion(&["run", "--source", &file_arg, "--json", "--partitions", "2"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(total_events(&bins(&out)), 500);

    // Cut the file in the middle of a record: the intact frames replay, the run ends cleanly.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 3 / 5 + 7]).unwrap();
    let out = ami2(&with_legion(&["run", "--source", &file_arg, "--json"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed = total_events(&bins(&out));
    assert!(
        replayed > 200 && replayed < 500,
        "{replayed} frames replayed from a truncated recording"
    );
}

#[test]
fn options_of_the_synthetic_source_are_refused_with_another_source() {
    let dir = scratch("synthetic-options");
    let file = dir.join("run.rec");
    let file_arg = record(&file, &["--frames", "20"]);
    let cases: [(&[&str], &str); 3] = [
        (
            &["--source", &file_arg, "--frames", "10"],
            "--frames is for the synthetic source only",
        ),
        (
            &["--source", &file_arg, "--image-size", "64"],
            "--image-size is for the synthetic source only",
        ),
        (
            &["--source", "shm:ami2-options-test", "--rate", "5", "--seed", "3"],
            "--rate, --seed are for the synthetic source only",
        ),
    ];
    for (case, says) in cases {
        let mut args = vec!["run", "--json"];
        args.extend_from_slice(case);
        let out = ami2_within(&with_legion(&args), Duration::from_secs(20)).unwrap_or_else(|| panic!("{case:?}: still running after 20 s"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case:?}: {stderr}");
        assert!(stderr.contains(says), "{case:?}: {stderr}");
        assert!(bins(&out).is_empty(), "{case:?}: analysed frames");
    }
}

#[test]
fn partitions_beyond_legions_processors_per_process_run_and_too_many_processors_are_refused() {
    // An IO processor per partition would take Legion past the 64 processors it runs in a
    // process (it aborted at start): the sources stay on the CPU processors instead.
    let args = with_legion(&[
        "run",
        "--partitions",
        "70",
        "--frames",
        "140",
        "--json",
        "--metrics",
        "0",
        "--no-listen",
    ]);
    let out = ami2_within(&args, Duration::from_secs(300)).expect("the run ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert_eq!(total_events(&bins(&out)), 140, "{stderr}");
    // Asked for in the Legion arguments: refused before the runtime starts.
    let out = ami2(&[
        "run",
        "--frames",
        "10",
        "--metrics",
        "0",
        "--no-listen",
        "--",
        "-ll:cpu",
        "1",
        "-ll:util",
        "1",
        "-ll:io",
        "70",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ask for 72 processors in a process") && !stderr.contains("LEGION ERROR"),
        "{stderr}"
    );
}

#[test]
fn daq_sim_refuses_slots_too_small_for_its_frames_before_making_the_ring() {
    let name = format!("ami2-cli-small-slots-{}", std::process::id());
    let ring = Path::new("/dev/shm").join(&name);
    let out = ami2(&["daq-sim", "--name", &name, "--slot-bytes", "100", "--frames", "10", "--rate", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let made = ring.exists();
    let _ = std::fs::remove_file(&ring);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--slot-bytes 100 cannot hold this stream's frames"), "{stderr}");
    assert!(!made, "a ring of slots too small was left in /dev/shm");
}

#[test]
fn a_replay_continued_past_the_end_of_its_recording_says_there_is_nothing_left() {
    let dir = scratch("replayed-again");
    let file = dir.join("short.rec");
    let data_dir = dir.join("data");
    let source = record(&file, &["--frames", "100", "--image-size", "16"]);
    let run = || {
        ami2(&with_legion(&[
            "run",
            "--source",
            &source,
            "--json",
            "--metrics",
            "0",
            "--no-listen",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]))
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert_eq!(total_events(&bins(&first)), 100);
    assert!(!stderr.contains("already replayed"), "{stderr}");
    // The same data directory again: nothing is left, and the run says why.
    let again = run();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(total_events(&bins(&again)), 0);
    assert!(
        stderr.contains(&format!("recording {} was already replayed to its end", file.display())),
        "{stderr}"
    );
}

#[test]
fn a_recording_stopped_by_ctrl_c_keeps_its_frames_and_leaves_no_temporary_file() {
    let dir = scratch("record-interrupted");
    let file = dir.join("long.rec");
    let stderr_file = scratch("record-interrupted-stderr").join("stderr");
    // Far more frames than it will write before the signal.
    let mut child = common::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ami2"))
            .args(["record", file.to_str().unwrap(), "--frames", "100000000", "--image-size", "16"])
            .env_remove("LD_LIBRARY_PATH")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .expect("ami2 runs"),
    );
    // Until its temporary file holds frames.
    let written = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&dir) < 1 << 20 {
        assert!(Instant::now() < deadline, "ami2 record wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = Command::new("kill").args(["-INT", &child.0.id().to_string()]).status();
    assert!(interrupted.unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ami2 record did not end after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped by a signal after"), "{stderr}");
    // A complete recording of what was recorded, and nothing else in the folder.
    let summary = ami_tasks::source::recording_info(&file).unwrap();
    assert!(summary.intact && summary.frames > 0, "{summary:?}");
    assert_eq!(summary.last_seq, Some(summary.frames - 1), "{summary:?}");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["long.rec"], "files left behind");
}

/// A bin's value of `result`.
fn result<'b>(bin: &'b Value, name: &str) -> &'b Value {
    bin["values"]
        .get(name)
        .filter(|v| v.is_object())
        .unwrap_or_else(|| panic!("no {name} in {bin}"))
}

#[test]
fn the_built_in_graph_fits_the_shapes_of_the_source_frames() {
    // Images of 24x24 and waveforms of 40 samples, not the defaults (128x128, 256): with no graph
    // given, the service's graph is fitted to the recording's first frame.
    let dir = scratch("fitted-graph");
    let file = dir.join("small.rec");
    let source = record(&file, &["--frames", "300", "--image-size", "24", "--waveform-length", "40"]);
    let out = ami2(&with_legion(&["run", "--source", &source, "--json"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("graph failure"), "{stderr}");
    let bins = bins(&out);
    assert_eq!(total_events(&bins), 300);
    for bin in &bins {
        assert_eq!(result(bin, "cspad_columns")["mean"].as_array().unwrap().len(), 24, "{bin}");
        assert_eq!(result(bin, "trace")["mean"].as_array().unwrap().len(), 40, "{bin}");
    }
    // The chart holds the mean of each image's middle half (x and y in 6..18), computed here
    // from the recording.
    let mut reader = ami_tasks::source::RecordingReader::open(&file).unwrap();
    let mut expected = 0.0;
    while let Some(frame) = reader.next_frame().unwrap() {
        let (_, image) = frame.fields.iter().find(|(name, _)| name == "cspad").unwrap();
        let ami_tasks::event::FieldValue::Image { width, pixels, .. } = image else {
            panic!("cspad is not an image: {image:?}")
        };
        let width = *width as usize;
        let roi: f64 = (6..18)
            .flat_map(|y| (6..18).map(move |x| (x, y)))
            .map(|(x, y)| pixels[y * width + x])
            .sum();
        expected += roi / 144.0;
    }
    let charted: f64 = bins
        .iter()
        .map(|bin| {
            let chart = result(bin, "cspad_roi_chart");
            chart["count"].as_f64().unwrap() * chart["mean"].as_f64().unwrap()
        })
        .sum();
    assert!((charted - expected).abs() <= 1e-9 * expected.abs(), "{charted} != {expected}");
}

#[test]
fn a_restart_refits_the_built_in_graph_and_keeps_a_graph_that_was_sent() {
    let data = scratch("refit-graph");
    // Each run continues the synthetic stream where the previous one stopped.
    let run = |frames: &str, extra: &[&str]| {
        let mut args = vec!["run", "--frames", frames, "--json", "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = ami2(&with_legion(&args));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("graph failure"), "{stderr}");
        let bins = bins(&out);
        assert_eq!(total_events(&bins), 200, "{stderr}");
        bins
    };
    let versions = |bins: &[Value]| {
        bins.iter()
            .map(|b| b["graph_version"].as_u64().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let first = run("200", &[]);
    assert_eq!(versions(&first), [1].into());
    assert_eq!(result(&first[0], "cspad_columns")["mean"].as_array().unwrap().len(), 128);
    // Smaller images after the restart: the built-in graph (version 1) is fitted to them again.
    let refitted = run("400", &["--image-size", "24"]);
    assert_eq!(versions(&refitted), [2].into());
    assert_eq!(result(&refitted[0], "cspad_columns")["mean"].as_array().unwrap().len(), 24);
    // A graph sent (here with --graph) is the service's from then on, restarts included.
    let graph = data.join("energy.json");
    std::fs::write(
        &graph,
        r#"{"nodes":[{"id":"e","op":"select","params":{"field":"energy","kind":"scalar"}}],"results":["e"]}"#,
    )
    .unwrap();
    let sent = run("600", &["--image-size", "24", "--graph", graph.to_str().unwrap()]);
    assert_eq!(versions(&sent), [3].into());
    let kept = run("800", &["--image-size", "24"]);
    assert_eq!(versions(&kept), [3].into());
    assert!(
        kept.iter().all(|b| b["values"].as_object().unwrap().keys().eq(["e"])),
        "{:?}",
        kept[0]
    );
}

#[test]
fn a_built_in_graph_stays_when_a_restart_sees_no_frame() {
    let name = format!("ami2-cli-refit-{}", std::process::id());
    let ring = Path::new("/dev/shm").join(&name);
    let data = scratch("refit-no-frame");
    let source = format!("shm:{name}");
    let daq_sim = |frames: &str| {
        let out = ami2(&["daq-sim", "--name", &name, "--frames", frames, "--rate", "0", "--image-size", "64"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let run = || {
        let summary = data.join("summary.json");
        let args = [
            "run",
            "--source",
            &source,
            "--seconds",
            "2",
            "--data-dir",
            data.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
        ];
        let out = ami2(&with_legion(&args));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        (summary["graph_version"].as_u64().unwrap(), stderr)
    };
    // Frames of 64x64 images wait in the ring: the built-in graph is fitted to them.
    daq_sim("100");
    let (version, stderr) = run();
    assert_eq!(version, 1, "{stderr}");
    assert!(!stderr.contains("not fitted"), "{stderr}");
    // A new, empty ring (the producer restarted and has not written yet): the restart keeps the
    // fitted graph rather than fall back to the default fields' one.
    daq_sim("0");
    let (version, stderr) = run();
    let _ = std::fs::remove_file(&ring);
    assert_eq!(version, 1, "{stderr}");
    assert!(stderr.contains("is not fitted again"), "{stderr}");
}

/// `ami2 daq-sim` filling ring `name` with `size`x`size` images at 500 frames/s, in the background.
fn paced_daq_sim(name: &str, size: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args([
            "daq-sim",
            "--name",
            name,
            "--frames",
            "1000000",
            "--rate",
            "500",
            "--image-size",
            size,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daq-sim starts")
}

#[test]
fn the_built_in_graph_is_fitted_again_when_the_frames_change_shape() {
    // The detector is reconfigured while the service runs: its producer restarts with 32x32
    // images instead of 64x64. The built-in graph fails on the new frames once, is fitted again
    // to them, and the analysis goes on, rather than failing again on every batch.
    let name = format!("ami2-cli-reshape-{}", std::process::id());
    let ring = Path::new("/dev/shm").join(&name);
    let dir = scratch("reshape");
    let summary = dir.join("summary.json");
    let mut producer = paced_daq_sim(&name, "64");
    let started = Instant::now();
    while !ring.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let source = format!("shm:{name}");
    let args = [
        "run",
        "--source",
        &source,
        "--json",
        "--seconds",
        "8",
        "--summary",
        summary.to_str().unwrap(),
    ];
    let run = spawn_ami2(&with_legion(&args), Stdio::piped());
    std::thread::sleep(Duration::from_secs(4));
    let _ = producer.kill();
    let _ = producer.wait();
    let mut producer = paced_daq_sim(&name, "32");
    let out = run.wait_with_output().unwrap();
    let _ = producer.kill();
    let _ = producer.wait();
    let _ = std::fs::remove_file(&ring);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let bins = bins(&out);
    let columns = |b: &Value| result(b, "cspad_columns")["mean"].as_array().unwrap().len();
    let first = bins.first().unwrap_or_else(|| panic!("no bins: {stderr}"));
    assert_eq!(
        (first["graph_version"].as_u64(), columns(first)),
        (Some(1), 64),
        "bin {}",
        first["bin"]
    );
    let last = bins.last().unwrap();
    assert_eq!(
        (last["graph_version"].as_u64(), columns(last)),
        (Some(2), 32),
        "bin {}\n{stderr}",
        last["bin"]
    );
    let refitted = bins.iter().filter(|b| b["graph_version"] == 2).count();
    assert!(refitted >= 20, "only {refitted} bins of the fitted graph\n{stderr}");
    // One failure of version 1, one incident for it and one for the new fit: not one per batch.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let failures = summary["graph_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["version"], 1, "{failures:?}");
    assert!(summary["incidents_total"].as_u64().unwrap() <= 3, "{summary}");
    assert!(stderr.contains("fitted again to the source's frames, it is version 2"), "{stderr}");
}

#[test]
fn frames_grown_beyond_the_telemetry_buffers_end_the_run_saying_it_must_start_again() {
    // The producer restarts with frames far larger than those the service sized its telemetry
    // buffers for (images of 512x512 after none): the run ends, saying why and what to do,
    // rather than that a store "is full" and needs "more capacity", which no user can give it.
    let name = format!("ami2-cli-grown-{}", std::process::id());
    let ring = Path::new("/dev/shm").join(&name);
    let producer = |size: &str, rate: &str| {
        common::KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_ami2"))
                .args([
                    "daq-sim",
                    "--name",
                    &name,
                    "--rate",
                    rate,
                    "--slots",
                    "16",
                    "--waveform-length",
                    "16",
                ])
                .args(["--image-size", size])
                .env_remove("LD_LIBRARY_PATH")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("daq-sim starts"),
        )
    };
    let small = producer("0", "200");
    let started = Instant::now();
    while !ring.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let source = format!("shm:{name}");
    let args = [
        "run",
        "--source",
        &source,
        "--batch-size",
        "1",
        "--seconds",
        "30",
        "--metrics",
        "0",
        "--no-listen",
    ];
    let run = spawn_ami2(&with_legion(&args), Stdio::null());
    std::thread::sleep(Duration::from_secs(4));
    drop(small);
    let large = producer("512", "50");
    let out = run.wait_with_output().unwrap();
    drop(large);
    let _ = std::fs::remove_file(&ring);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("more than an empty telemetry buffer holds") && stderr.contains("must start again"),
        "{stderr}"
    );
}

#[test]
fn events_of_a_producer_restarted_with_an_earlier_clock_are_said_to_be_in_no_result() {
    // A live producer (Unix time stamps) is replaced by one whose stamps count from 0: its
    // events fall in bins long published, so none reaches a result. The run says so, rather
    // than counting events that no bin shows without a word.
    let name = format!("ami2-cli-clock-{}", std::process::id());
    let ring = Path::new("/dev/shm").join(&name);
    let mut live = paced_daq_sim(&name, "16");
    let started = Instant::now();
    while !ring.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let source = format!("shm:{name}");
    let args = [
        "run",
        "--source",
        &source,
        "--json",
        "--seconds",
        "10",
        "--metrics",
        "0",
        "--no-listen",
    ];
    let run = spawn_ami2(&with_legion(&args), Stdio::piped());
    std::thread::sleep(Duration::from_secs(4));
    let _ = live.kill();
    let _ = live.wait();
    let restarted = ami2(&["daq-sim", "--name", &name, "--rate", "0", "--frames", "20000", "--image-size", "16"]);
    let out = run.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&ring);
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("came for time bins already published, and are in no result"),
        "{stderr}"
    );
}

#[test]
fn batches_start_from_the_frames_bytes_and_are_tuned_only_while_the_sources_are_behind() {
    // The default stream's frames take about 130 KiB: an automatic batch starts at 31 of them,
    // and the tuner may use 3 to 496 (an eighth of it to 16 times it, doubling).
    let ladder = [3, 7, 15, 31, 62, 124, 248, 496];
    let dir = scratch("auto-batch");
    let run = |extra: &[&str]| {
        let summary = dir.join("summary.json");
        let mut args = vec![
            "--log",
            "ami_tasks=info,ami2=info",
            "run",
            "--json",
            "--summary",
            summary.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = ami2(&with_legion(&args));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        (total_events(&bins(&out)), summary, stderr)
    };
    // As fast as it goes: the sources are behind, and the tuner may move.
    let (events, summary, stderr) = run(&["--rate", "0", "--frames", "30000"]);
    assert_eq!(events, 30000);
    assert!(stderr.contains("batch size: from 31 frames, tuned up to 496"), "{stderr}");
    let last = summary["batch_size"].as_u64().unwrap();
    assert!(ladder.contains(&last), "{last} is not on the ladder {ladder:?}");
    let used: Vec<u64> = summary["batch_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(
        used.contains(&31) && used.iter().all(|s| ladder.contains(s)),
        "rounds of {used:?} frames"
    );
    // Where the tuner spent the run: every round, at one of those sizes.
    let by_size = summary["rounds_by_batch_size"].as_object().unwrap();
    let mut sizes: Vec<u64> = by_size.keys().map(|s| s.parse().unwrap()).collect();
    sizes.sort_unstable();
    let rounds: u64 = by_size.values().map(|r| r.as_u64().unwrap()).sum();
    assert_eq!(sizes, used, "{summary}");
    assert_eq!(rounds, summary["rounds"].as_u64().unwrap(), "{summary}");
    for taken in stderr.lines().filter_map(|l| l.split("batch size ").nth(1)) {
        let to: u64 = taken
            .split(" -> ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(ladder.contains(&to), "{taken}");
    }
    // A stream the sources keep up with: batches are not full, the size stays.
    // (The 5 s include the runtime's start, which takes seconds while other tests run.)
    let (events, summary, stderr) = run(&["--rate", "200", "--seconds", "5"]);
    assert!(events > 250, "{events} events in 5 s at 200 Hz");
    assert_eq!(summary["batch_size"], 31, "{stderr}");
    assert_eq!(summary["batch_sizes"], serde_json::json!([31]), "{stderr}");
    assert!(!stderr.contains("batch size 31 ->"), "{stderr}");
    // Given: that many, always; 5,000 frames then take far fewer rounds than the 162 batches of 31
    // would (a batch that reaches a new time bin may go out before it is full).
    let (events, summary, stderr) = run(&["--rate", "0", "--frames", "5000", "--batch-size", "256"]);
    assert_eq!(events, 5000);
    assert_eq!(summary["batch_size"], 256);
    assert!(summary["rounds"].as_u64().unwrap() < 162, "{summary}");
    assert!(stderr.contains("batch size: 256 frames"), "{stderr}");
    // Memory given after `--`: the tuner's ceiling comes down, a rung at a time, to what it holds.
    let mut args = with_legion(&["--log", "ami2=info", "run", "--frames", "100", "--json"]);
    args.extend(["-ll:csize", "400"]);
    let out = ami2(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let fitted: u64 = stderr
        .split("batch size: tuned up to ")
        .nth(1)
        .and_then(|rest| rest.split(" frames, what 400 MiB of system memory holds").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(ladder.contains(&fitted) && fitted < 496, "{fitted}");
    // A ceiling below the start is refused.
    let out = ami2(&with_legion(&[
        "run",
        "--frames",
        "10",
        "--batch-size",
        "64",
        "--max-batch-size",
        "32",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-batch-size (32) must be at least the batch size (64)"));
}

#[test]
fn shared_memory_ring_fed_by_daq_sim_in_another_process() {
    let name = format!("ami2-cli-test-{}", std::process::id());
    let mut producer = Command::new(env!("CARGO_BIN_EXE_ami2"))
        // 200x200 images (320 KB a frame): the ring's slots are sized for them.
        .args([
            "daq-sim",
            "--name",
            &name,
            "--frames",
            "4000",
            "--rate",
            "1000",
            "--image-size",
            "200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daq-sim starts");
    let ring = Path::new("/dev/shm").join(&name);
    let started = Instant::now();
    while !ring.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ring.exists(), "daq-sim made no ring");
    let source = format!("shm:{name}");
    let out = ami2(&with_legion(&["run", "--source", &source, "--json", "--seconds", "3"]));
    let _ = producer.kill();
    let _ = producer.wait();
    let _ = std::fs::remove_file(&ring);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bins = bins(&out);
    let events = total_events(&bins);
    assert!(events > 100, "only {events} events read from the ring");
    // A paced daq-sim stamps frames with the Unix time they are due: bins of 50 ms of today.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let first_s = bins[0]["bin"].as_u64().unwrap() as f64 * 0.05;
    assert!(
        (now_s - 60.0..now_s).contains(&first_s),
        "bin {} starts at {first_s} s, now is {now_s}",
        bins[0]["bin"]
    );
    // The built-in graph was fitted to the ring's frames.
    assert!(
        bins.iter()
            .all(|b| result(b, "cspad_columns")["mean"].as_array().unwrap().len() == 200),
        "{:?}",
        bins[0]
    );
}

#[test]
fn demo_prints_a_live_table() {
    // Long enough for a few bins even on a machine busy with other tests (a 2 s demo printed 3).
    let out = ami2(&with_legion(&["demo", "--seconds", "4"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Nothing about GPUs this machine does not have (see docs/legion.md, the libcuda stand-in).
    assert!(!stderr.contains("cuInit") && !stderr.contains("CUDA"), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text
        .lines()
        .find(|l| l.contains("events") && l.contains("energy_hist"))
        .unwrap_or_else(|| panic!("no table header in {text}"));
    assert!(header.contains("bin"));
    let rows = text
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .count();
    assert!(rows >= 3, "{rows} rows in {text}");
}

#[test]
fn invalid_graph_is_refused_with_every_reason() {
    let dir = scratch("bad-graph");
    let graph = dir.join("bad.json");
    std::fs::write(
        &graph,
        r#"{"nodes":[{"id":"a","op":"select","params":{"field":"x","kind":"scalar"}},{"id":"b","op":"frobnicate","inputs":["a"]},{"id":"c","op":"sum","inputs":["a"]}],"results":["b","c","zzz"]}"#,
    )
    .unwrap();
    let out = ami2(&["run", "--graph", graph.to_str().unwrap(), "--frames", "10"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for reason in ["frobnicate", "`c`", "zzz"] {
        assert!(stderr.contains(reason), "no {reason:?} in: {stderr}");
    }
    // A refused argument exits with the usage code, 2, as a typo in an option does.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

#[test]
fn the_supervisor_does_not_restart_a_service_that_refuses_its_arguments() {
    let dir = scratch("refused-arguments");
    let empty = dir.join("empty.json");
    std::fs::write(&empty, r#"{"nodes": [], "results": []}"#).unwrap();
    let missing = dir.join("missing.json");
    let data = dir.join("data");
    let cases: [&[&str]; 10] = [
        &["--graph", empty.to_str().unwrap()],
        &["--graph", missing.to_str().unwrap()],
        &["--partitions", "0"],
        &["--attempts", "0"],
        &["--source", "foo"],
        &["--source", "shm:a/b"],
        &["--listen", "garbage"],
        &["--token-file", missing.to_str().unwrap()],
        &["--realtime"],
        &["--bin-wait", "61"],
    ];
    for case in cases {
        let mut args = vec!["run", "--supervise", "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(case);
        let out = ami2_within(&with_legion(&args), Duration::from_secs(20)).unwrap_or_else(|| panic!("{case:?}: still running after 20 s"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case:?}: {stderr}");
        assert!(stderr.contains("not restarting"), "{case:?}: {stderr}");
        assert!(!stderr.contains("restart 1"), "{case:?}: {stderr}");
    }
}

/// Size of partition 0's source-state log in `data`.
fn source_log_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("control"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("component_source_0") && name.ends_with(".log")
        })
        .map(|p| std::fs::metadata(p).unwrap().len())
        .expect("a source log")
}

#[test]
fn periodic_snapshots_keep_the_logs_bounded_and_a_restart_continues() {
    // 3 s of data in batches of 20 at 2 kHz: 300 rounds, each saving the source's position.
    let run = |data: &Path, interval: &str, frames: &str| {
        let out = ami2(&with_legion(&[
            "run",
            "--frames",
            frames,
            "--rate",
            "2000",
            "--batch-size",
            "20",
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
            "--snapshot-interval",
            interval,
        ]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let unbounded = scratch("log-unbounded");
    run(&unbounded, "0", "6000");
    let all_records = source_log_bytes(&unbounded);
    let bounded = scratch("log-bounded");
    run(&bounded, "0.5", "6000");
    let kept = source_log_bytes(&bounded);
    // The log keeps what the newest two snapshots lack: about a second of rounds, not all 3 s.
    assert!(
        kept * 2 < all_records,
        "log of {kept} bytes with snapshots every 0.5 s against {all_records} without"
    );
    // A restart from the snapshots and the compacted log continues where the run stopped.
    let more = run(&bounded, "0.5", "8000");
    assert_eq!(total_events(&bins(&more)), 2000, "{}", String::from_utf8_lossy(&more.stderr));
}

#[test]
fn partitions_get_cpu_processors_of_their_own_up_to_the_cores() {
    // Two partitions, with `legion` after `--`; the Legion arguments are in the bridge's debug log.
    let run_two_partitions = |frames: &str, legion: &[&str]| {
        let mut args = vec![
            "--log",
            "legion_bridge=debug",
            "run",
            "--frames",
            frames,
            "--partitions",
            "2",
            "--json",
        ];
        if !legion.is_empty() {
            args.push("--");
            args.extend(legion);
        }
        ami2(&args)
    };
    // No Legion flags: `run` chooses.
    let out = run_two_partitions("400", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(total_events(&bins(&out)), 400);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let utility = if cores > 8 { 2 } else { 1 };
    let default = cores.saturating_sub(utility + 1).max(1);
    let expected = default.max(2.min(cores));
    let flag = format!("\"-ll:cpu\", \"{expected}\"");
    assert!(stderr.contains(&flag), "no {flag} in the Legion arguments:\n{stderr}");
    // A choice made after `--` stands.
    let chosen = run_two_partitions("100", &["-ll:cpu", "1"]);
    let stderr = String::from_utf8_lossy(&chosen.stderr);
    assert!(chosen.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"-ll:cpu\", \"1\"") && !stderr.contains("\"-ll:cpu\", \"2\""),
        "{stderr}"
    );
}

#[test]
fn a_service_slower_than_its_stream_says_how_far_behind_it_is() {
    // Two million frames a second with the built-in graph: far more than a machine's one
    // partition analyses, so the source falls further behind its stream all run long.
    let out = ami2(&with_legion(&["run", "--json", "--rate", "2000000", "--seconds", "5"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("behind its stream: events come faster"), "no warning in {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ami2: the data sources ended"))
        .unwrap_or_else(|| panic!("no closing word on it in {stderr}"));
    let seconds: f64 = line["ami2: the data sources ended ".len()..]
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    // Behind by at least a few seconds, and by no more than the run lasted (its stream began with
    // the run): 5 s, and the run's start and stop, which take seconds more on a busy machine.
    let lasted: f64 = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("ami2: ")?
                .split_once(" events in ")?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no run length in {stderr}"));
    assert!(seconds >= 2.0 && seconds <= lasted + 0.1, "{line} (the run lasted {lasted} s)");
    // A stream it keeps up with: nothing said.
    let out = ami2(&with_legion(&["run", "--json", "--rate", "500", "--seconds", "3"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("behind"), "{stderr}");
}

/// A graph of one result, the `scan` scalar, which is `(seq % 1000) / 1000`: a bin's count and
/// sum of it tell which frames the bin got.
const SCAN_GRAPH: &str = r#"{"nodes":[{"id":"scan","op":"select","params":{"field":"scan","kind":"scalar"}}],"results":["scan"]}"#;

/// Each bin's events and sum of `scan`, over the bins of several runs (a bin that a stop cut in
/// two is published by both runs, each with its part).
fn scan_per_bin<'a>(bins: impl IntoIterator<Item = &'a Value>) -> BTreeMap<u64, (u64, f64)> {
    let mut per_bin: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
    for bin in bins {
        let entry = per_bin.entry(bin["bin"].as_u64().unwrap()).or_default();
        entry.0 += bin["events"].as_u64().unwrap();
        entry.1 += result(bin, "scan")["sum"].as_f64().unwrap();
    }
    per_bin
}

/// The runs of `runs` analysed between them exactly the frames of `reference` (one run over the
/// whole stream): bin by bin, as many and the same ones.
fn assert_same_frames(runs: &[Vec<Value>], reference: &[Value]) {
    let got = scan_per_bin(runs.iter().flatten());
    let expected = scan_per_bin(reference);
    assert_eq!(
        got.iter().map(|(bin, (events, _))| (*bin, *events)).collect::<Vec<_>>(),
        expected.iter().map(|(bin, (events, _))| (*bin, *events)).collect::<Vec<_>>(),
        "events per bin"
    );
    for (bin, (_, sum)) in &got {
        let want = expected[bin].1;
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "bin {bin}: scan sums to {sum}, not {want}"
        );
    }
}

/// `ami2 run` with the scan graph and `args` (its files in `dir`), on `data` when given: the bins,
/// the events it analysed (from its summary) and its stderr.
fn scan_run(dir: &Path, data: Option<&Path>, args: &[&str]) -> (Vec<Value>, u64, String) {
    let graph = dir.join("scan.json");
    std::fs::write(&graph, SCAN_GRAPH).unwrap();
    let summary = dir.join("summary.json");
    let mut all = vec![
        "run",
        "--json",
        "--graph",
        graph.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
    ];
    if let Some(data) = data {
        all.extend(["--data-dir", data.to_str().unwrap()]);
    }
    all.extend_from_slice(args);
    let out = ami2(&with_legion(&all));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    (bins(&out), summary["events"].as_u64().unwrap(), stderr)
}

#[test]
fn another_partition_count_on_a_data_directory_analyses_every_frame_once() {
    let dir = scratch("repartition-synthetic");
    let data = dir.join("data");
    // Bins wait for every partition (see the replay's test below).
    let stream = ["--frames", "6000", "--image-size", "0", "--bin-wait", "60"];
    let (reference, events, _) = scan_run(&dir, None, &[&stream[..], &["--rate", "0"]].concat());
    assert_eq!(events, 6000);
    // 2 partitions, stopped part-way; 4 (more), stopped part-way; 3 (fewer), to the end.
    let paced = [&stream[..], &["--rate", "1000", "--seconds", "2"]].concat();
    let mut runs = Vec::new();
    let mut said = Vec::new();
    let mut total = 0;
    for (partitions, args) in [("2", &paced), ("4", &paced), ("3", &[&stream[..], &["--rate", "0"]].concat())] {
        let (bins, events, stderr) = scan_run(&dir, Some(&data), &[&args[..], &["--partitions", partitions]].concat());
        assert!(events > 0 && total + events <= 6000, "{events} events after {total}: {stderr}");
        assert_eq!(total_events(&bins), events);
        total += events;
        runs.push(bins);
        said.push(stderr);
    }
    assert_eq!(total, 6000, "every frame analysed once over the three runs");
    assert_same_frames(&runs, &reference);
    // Said in the log, and as an incident for operators.
    for (stderr, change) in said[1..]
        .iter()
        .zip(["partitions changed from 2 to 4", "partitions changed from 4 to 3"])
    {
        assert!(stderr.contains(change) && stderr.contains("PartitionsChanged"), "{stderr}");
    }
}

/// The files of the data sources' segments in Control's folder of `data`, by partition.
fn source_files(data: &Path) -> BTreeMap<usize, Vec<String>> {
    let mut files: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(data.join("control")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let partition = name
            .strip_prefix("component_source_")
            .and_then(|rest| rest.split('-').next()?.parse().ok());
        if let Some(p) = partition.filter(|_| !name.contains(".damaged-")) {
            files.entry(p).or_default().push(name);
        }
    }
    files
}

#[test]
fn a_replay_continued_with_other_partition_counts_analyses_every_recorded_frame_once() {
    let dir = scratch("repartition-file");
    let file = dir.join("run.rec");
    let source = record(&file, &["--frames", "4000", "--image-size", "0", "--waveform-length", "16"]);
    let (reference, events, _) = scan_run(&dir, None, &["--source", &source]);
    assert_eq!(events, 4000);
    // Replayed at the recorded pace (1,000 frames a second): 4 partitions stopped part-way, then
    // 2, then 3 as fast as possible to the end of the recording.
    let data = dir.join("data");
    // A loaded machine may hold one partition back for seconds: bins wait for all of them (no
    // late partials), so that they can be compared with the single run's.
    let paced = ["--source", &source, "--realtime", "--seconds", "2", "--bin-wait", "60"];
    let mut runs = Vec::new();
    let mut total = 0;
    let fast = ["--source", &source, "--bin-wait", "60"];
    for (partitions, args) in [("4", &paced[..]), ("2", &paced[..]), ("3", &fast[..])] {
        let (bins, events, stderr) = scan_run(&dir, Some(&data), &[args, &["--partitions", partitions]].concat());
        assert!(events > 0 && total + events <= 4000, "{events} events after {total}: {stderr}");
        total += events;
        runs.push(bins);
        // Once the positions are converted, the files of the partitions the run does not have are
        // removed (they were left in Control's folder, empty, for good).
        let count: usize = partitions.parse().unwrap();
        assert_eq!(
            source_files(&data).into_keys().collect::<Vec<_>>(),
            (0..count).collect::<Vec<_>>(),
            "after the run of {partitions} partitions: {:?}",
            source_files(&data)
        );
    }
    assert_eq!(total, 4000, "every frame analysed once over the three runs");
    assert_same_frames(&runs, &reference);
}
