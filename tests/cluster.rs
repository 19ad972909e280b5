//! Multi-process runs on this machine: `ami2 launch --np N run ...` with real processes joined
//! by Realm's UCX network (p2p bootstrap, and the bundled mpirun). Tasks report the address space
//! they ran in; it must be where the placement policy puts them, and the results must be those
//! of the one-process run.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ami_mapper::{Machine, Placement, Roles, TaskKind};
use common::scratch;
use serde_json::Value;

const PARTITIONS: u32 = 2;

/// Legion flags of each process of these runs, after the `--` that ends ami2's own options.
const LEGION_PER_PROCESS: [&str; 7] = ["--", "-ll:cpu", "1", "-ll:util", "1", "-ll:csize", "256"];

/// The runs share 2 cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A graph over the synthetic source's scalar and waveform fields (the images are left out to
/// keep the runs small).
fn graph_file(dir: &Path) -> PathBuf {
    let graph = serde_json::json!({
        "nodes": [
            {"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
            {"id": "energy_hist", "op": "histogram", "inputs": ["energy"], "params": {"bins": 50, "low": 0.0, "high": 10.0}},
            {"id": "scan", "op": "select", "params": {"field": "scan", "kind": "scalar"}},
            {"id": "energy_vs_scan", "op": "binned_mean", "inputs": ["energy", "scan"], "params": {"bins": 20, "low": 0.0, "high": 1.0}},
            {"id": "trace", "op": "select", "params": {"field": "trace", "kind": "waveform", "length": 256}},
            {"id": "trace_peaks", "op": "peaks", "inputs": ["trace"], "params": {"threshold": 0.5}}
        ],
        "results": ["energy_hist", "energy_vs_scan", "trace", "trace_peaks"]
    });
    let path = dir.join("graph.json");
    std::fs::write(&path, graph.to_string()).unwrap();
    path
}

/// `run` arguments of the fixed synthetic input, writing the summary to `summary`.
fn run_args(dir: &Path, summary: &Path) -> Vec<String> {
    let graph = graph_file(dir);
    [
        "run",
        "--frames",
        "400",
        "--batch-size",
        "50",
        "--image-size",
        "0",
        "--partitions",
        &PARTITIONS.to_string(),
        "--json",
        "--graph",
        graph.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
    ]
    .iter()
    .chain(&LEGION_PER_PROCESS)
    .map(|s| s.to_string())
    .collect()
}

struct Run {
    output: Output,
    summary: Value,
}

fn run(name: &str, launch: &[&str]) -> Run {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch(name);
    let summary_path = dir.join("summary.json");
    let mut args: Vec<String> = launch.iter().map(|s| s.to_string()).collect();
    args.extend(run_args(&dir, &summary_path));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = common::ami2(&refs);
    assert!(
        output.status.success(),
        "ami2 {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = serde_json::from_slice(&std::fs::read(&summary_path).expect("the summary is written")).unwrap();
    Run { output, summary }
}

/// The one-process run of the same input (run once, shared).
fn baseline() -> &'static Run {
    static BASELINE: OnceLock<Run> = OnceLock::new();
    BASELINE.get_or_init(|| run("one", &[]))
}

/// The bins `run --json` printed.
fn bins(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout holds JSON lines only"))
        .collect()
}

/// Equal, numbers within a relative 1e-9: batches end where a source's time-out cuts them, so
/// sums may be added in another order (the last bits differ), never to another value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

/// Where the policy puts each task the pipeline reports, for `nodes` processes of one CPU each.
fn expected_placement(nodes: u32) -> Value {
    let placement = Placement::new(Machine::uniform(nodes, 1), Roles { service_nodes: 1 }, PARTITIONS).unwrap();
    let mut expected = serde_json::Map::new();
    for p in 0..PARTITIONS {
        let node = |kind| serde_json::json!([placement.node_for(&kind).unwrap()]);
        expected.insert(format!("source/{p}"), node(TaskKind::DataSource { partition: p }));
        expected.insert(format!("worker/{p}"), node(TaskKind::Worker { partition: p }));
    }
    for &n in placement.data_nodes() {
        if !placement.partitions_on(n).is_empty() {
            expected.insert(format!("local_reducer/{n}"), serde_json::json!([n]));
        }
    }
    expected.insert(
        "global_reducer".into(),
        serde_json::json!([placement.node_for(&TaskKind::GlobalReducer).unwrap()]),
    );
    Value::Object(expected)
}

/// The kinds of processor each task kind runs on in a run of `nodes` processes of one CPU
/// processor each: the data sources on IO processors where `ami2 run` gives the processes some.
fn expected_processors(nodes: u32) -> Value {
    let data_nodes = if nodes > 1 { nodes - 1 } else { 1 };
    let per_node = PARTITIONS.div_ceil(data_nodes) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let source = if ami_tasks::placement::io_processors_for(per_node, 1, cores) > 0 {
        "Io"
    } else {
        "Cpu"
    };
    serde_json::json!({"source": [source], "worker": ["Cpu"], "local_reducer": ["Cpu"], "global_reducer": ["Cpu"]})
}

fn check_multi_process(run: &Run, nodes: u32) {
    assert_eq!(run.summary["placement_installed"], true);
    assert_eq!(
        run.summary["ran_on"],
        expected_placement(nodes),
        "tasks ran where the policy does not put them"
    );
    assert_eq!(run.summary["processors"], expected_processors(nodes));
    assert_eq!(run.summary["mapper"]["rejected"], 0);
    // The sources' and workers' CPU, measured in the processes that ran them, reached the driver.
    for task in ["source", "worker"] {
        assert!(
            run.summary["task_cpu_ns"][task].as_u64().is_some_and(|ns| ns > 0),
            "{task} CPU: {}",
            run.summary["task_cpu_ns"]
        );
    }
    let (one, many) = (bins(&baseline().output), bins(&run.output));
    assert!(!one.is_empty());
    assert_eq!(one.len(), many.len(), "bins published");
    for (a, b) in one.iter().zip(&many) {
        assert!(same(a, b), "bin differs from the one-process run:\n{a}\n{b}");
    }
    assert_eq!(run.summary["events"], baseline().summary["events"]);
}

#[test]
fn one_process_runs_everything_in_address_space_0() {
    let run = baseline();
    assert_eq!(run.summary["ran_on"], expected_placement(1));
    assert_eq!(run.summary["processors"], expected_processors(1));
    assert_eq!(run.summary["events"], 400);
}

#[test]
fn two_processes_p2p_keep_data_on_node_0_and_reduce_on_the_service_node() {
    check_multi_process(&run("two", &["launch", "--np", "2", "--start-timeout", "60"]), 2);
}

#[test]
fn three_processes_p2p_spread_partitions_over_two_data_nodes() {
    check_multi_process(&run("three", &["launch", "--np", "3", "--start-timeout", "60"]), 3);
}

#[test]
fn two_processes_under_the_bundled_mpirun() {
    check_multi_process(
        &run("mpi", &["launch", "--np", "2", "--bootstrap", "mpi", "--start-timeout", "60"]),
        2,
    );
}

/// Two consecutive TCP ports on 127.0.0.1, the second held by a listener (returned).
fn base_port_with_second_taken() -> (u16, TcpListener) {
    for _ in 0..50 {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        if port > 1024 && TcpListener::bind((Ipv4Addr::LOCALHOST, port - 1)).is_ok() {
            return (port - 1, taken);
        }
    }
    panic!("no two consecutive free ports");
}

#[test]
fn a_peer_that_cannot_start_stops_the_launch_with_a_clear_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (base, _taken) = base_port_with_second_taken();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(["launch", "--np", "2", "--base-port", &base.to_string(), "--start-timeout", "30"])
        .args(["run", "--frames", "100", "--image-size", "0"])
        .args(LEGION_PER_PROCESS)
        .env_remove("LD_LIBRARY_PATH")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "the launch took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("process 1 failed") && stderr.contains("launched as one of 2, but the Legion runtime found 1"),
        "unclear error:\n{stderr}"
    );
    assert!(output.stdout.is_empty(), "a lone process ran the pipeline by itself");
}

#[test]
fn doctor_under_launch_sees_every_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let args: Vec<&str> = ["launch", "--np", "2", "doctor", "--json"]
        .into_iter()
        .chain(LEGION_PER_PROCESS)
        .collect();
    let output = common::ami2(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // One report, from process 0, for the whole run.
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON report");
    assert_eq!(report["address_spaces"], 2);
    assert_eq!(report["index_processors"], 2, "the index launch did not reach both processes");
    assert_eq!(report["region_read_sum"], report["region_expected_sum"]);
}

#[test]
fn a_three_process_run_persists_its_stores_and_the_next_one_resumes() {
    let dir = scratch("persist");
    let data = dir.join("data");
    let launch = |summary: &Path| {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut args: Vec<String> = ["launch", "--np", "3", "run", "--data-dir", data.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // `run_args` starts with the subcommand name, which is already there.
        args.extend(run_args(&dir, summary).into_iter().skip(1));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = common::ami2(&refs);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: Value = serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
        summary
    };
    let first = launch(&dir.join("first.json"));
    assert_eq!(first["events"], 400);
    // Snapshots of every Control segment (written by tasks on the segments' nodes) and of Results.
    for prefix in ["control-", "component_source_0-", "component_source_1-"] {
        let found = std::fs::read_dir(data.join("control"))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix) && e.file_name().to_string_lossy().ends_with(".snap"));
        assert!(found, "no snapshot of {prefix}* in {}", data.display());
    }
    // The sources resume at their saved positions: the input is used up.
    let second = launch(&dir.join("second.json"));
    assert_eq!(second["events"], 0);
    assert_eq!(second["graph_version"], 1, "the graph was installed again");
}

/// The processes whose command line holds `marker` (a test's scratch folder).
fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker)))
        .collect()
}

/// `ami2 launch --np 2 --bootstrap BOOTSTRAP run` serving clients in scratch folder `dir`,
/// once it serves them (its port file is written): the launcher and the clients' address.
fn launch_service(dir: &Path, bootstrap: &str) -> (common::KillOnDrop, String) {
    let port_file = dir.join("port");
    let child = Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(["launch", "--np", "2", "--bootstrap", bootstrap, "--start-timeout", "60", "run"])
        .args(["--seconds", "300", "--rate", "2000", "--image-size", "0", "--listen", "127.0.0.1:0"])
        .arg("--port-file")
        .arg(&port_file)
        .arg("--summary")
        .arg(dir.join("summary.json"))
        .args(LEGION_PER_PROCESS)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .expect("ami2 launch starts");
    let launcher = common::KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !port_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the launch did not serve clients within 90 s:\n{}",
            std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let addr = std::fs::read_to_string(&port_file).unwrap().trim().to_string();
    (launcher, addr)
}

/// Waits up to `limit` for `launcher` to end; its exit status.
fn wait_for_exit(launcher: &mut common::KillOnDrop, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = launcher.0.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clients reach the process that runs the driver (which one that is, Realm decides), and a
/// signal to the launcher alone (not to its process group) stops the run cleanly.
fn serve_clients_then_stop_on_a_signal_to_the_launcher(name: &str, bootstrap: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch(name);
    let (mut launcher, addr) = launch_service(&dir, bootstrap);
    let status = common::ami2(&["status", "--connect", &addr]);
    assert!(
        status.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["graph_running"], 1, "{status}");

    let signal = Command::new("kill").args(["-TERM", &launcher.0.id().to_string()]).status().unwrap();
    assert!(signal.success());
    let stderr = || std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    let exit = wait_for_exit(&mut launcher, Duration::from_secs(60));
    assert!(
        exit.is_some_and(|e| e.success()),
        "the launch did not end cleanly ({exit:?}):\n{}",
        stderr()
    );
    // The driver ended the run as on Ctrl-C: it wrote its summary.
    let summary: Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("a summary")).unwrap();
    assert!(summary["events"].as_u64().is_some_and(|n| n > 0), "{summary}");
    let left = processes_with(dir.to_str().unwrap());
    assert!(left.is_empty(), "processes {left:?} outlived the launch");
}

#[test]
fn a_p2p_launch_serves_clients_and_stops_on_a_signal_to_the_launcher() {
    serve_clients_then_stop_on_a_signal_to_the_launcher("signal-p2p", "p2p");
}

#[test]
fn an_mpi_launch_serves_clients_and_stops_on_a_signal_to_the_launcher() {
    serve_clients_then_stop_on_a_signal_to_the_launcher("signal-mpi", "mpi");
}

#[test]
fn the_processes_of_a_launch_stop_when_the_launcher_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("launcher-killed");
    let (mut launcher, _) = launch_service(&dir, "p2p");
    let marker = dir.to_str().unwrap();
    assert_eq!(processes_with(marker).len(), 3, "the launcher and its 2 processes");
    launcher.0.kill().unwrap();
    launcher.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_with(marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes {:?} still run 60 s after the launcher was killed",
            processes_with(marker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // They stopped as on Ctrl-C, not killed: the driver wrote its summary.
    assert!(dir.join("summary.json").exists(), "the driver did not end the run cleanly");
}

#[test]
fn launch_refuses_commands_that_do_not_start_legion() {
    let dir = scratch("refused");
    let recording = dir.join("r.ami2");
    let output = common::ami2(&["launch", "--np", "2", "record", "--frames", "10", recording.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("run, demo or doctor"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!recording.exists(), "the recording was written anyway");
}

/// A data directory that a one-process run wrote, with Results' snapshots then damaged so that
/// no good one is left: `ami2 run` cannot load it (exit code 65).
fn unloadable_data_dir(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let first = common::ami2(&[
        "run",
        "--frames",
        "200",
        "--rate",
        "0",
        "--image-size",
        "0",
        "--metrics",
        "0",
        "--no-listen",
        "--data-dir",
        data.to_str().unwrap(),
        "--",
        "-ll:cpu",
        "1",
        "-ll:util",
        "1",
    ]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let snapshots: Vec<PathBuf> = std::fs::read_dir(data.join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".snap"))
        .collect();
    assert!(!snapshots.is_empty(), "no Results snapshot in {}", data.display());
    for file in &snapshots {
        std::fs::write(file, b"AMI2SNAP damaged").unwrap();
    }
    data
}

#[test]
fn a_launch_whose_data_directory_cannot_be_loaded_ends_with_exit_code_65_naming_the_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("unloadable");
    let data = unloadable_data_dir(&dir);
    for bootstrap in ["p2p", "mpi"] {
        let args: Vec<&str> = ["launch", "--np", "2", "--bootstrap", bootstrap, "--start-timeout", "60", "run"]
            .into_iter()
            .chain(["--frames", "200", "--image-size", "0", "--metrics", "0", "--no-listen"])
            .chain(["--data-dir", data.to_str().unwrap()])
            .chain(LEGION_PER_PROCESS)
            .collect();
        let output = common::ami2_within(&args, Duration::from_secs(120)).expect("the launch ends by itself");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(65), "{bootstrap}: {stderr}");
        // The driver's process says what is wrong and how to recover; the launch says which
        // process it was and why it ends.
        assert!(
            stderr.contains("no snapshot verifies") && stderr.contains("To recover"),
            "{bootstrap}: {stderr}"
        );
        assert!(
            stderr.contains("rank 0 cannot load the data directory (exit code 65; its error above says"),
            "{bootstrap}: {stderr}"
        );
        let left = processes_with(data.to_str().unwrap());
        assert!(left.is_empty(), "{bootstrap}: processes {left:?} outlived the launch");
    }
}

#[test]
fn a_launch_whose_processes_refuse_their_arguments_ends_with_exit_code_2() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for bootstrap in ["p2p", "mpi"] {
        let args: Vec<&str> = [
            "launch",
            "--np",
            "2",
            "--bootstrap",
            bootstrap,
            "run",
            "--source",
            "nosuch:x",
            "--no-listen",
        ]
        .into_iter()
        .chain(LEGION_PER_PROCESS)
        .collect();
        let output = common::ami2_within(&args, Duration::from_secs(60)).expect("the launch ends by itself");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bootstrap}: {stderr}");
        assert!(
            stderr.contains("--source must be"),
            "{bootstrap}: the processes' own error is missing: {stderr}"
        );
        assert!(
            stderr.contains("refused the arguments (exit code 2; their errors above say which)"),
            "{bootstrap}: {stderr}"
        );
    }
}
