//! Pipeline throughput with 1, 2 and 3 processes on this machine (`ami2 run` and
//! `ami2 launch --np N run`), and what the placement mapper costs per task.
//!
//! `cargo bench --bench cluster [-- --frames N --partitions P --batch B]`. Every process gets one
//! CPU and one utility processor; on a 2-core machine more processes cannot be faster (they share
//! the cores and add network hops): the numbers show the cost of distribution, not a speed-up.
//! Mapper numbers are those of process 0 (where every task is launched, so where every task's
//! placement is decided; `map_task` of tasks placed elsewhere runs in their process).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[path = "common/options.rs"]
mod options;
use options::arg;

fn option(name: &str, default: usize) -> usize {
    arg(name, &default.to_string()).parse().unwrap_or(default)
}

fn main() {
    let frames = option("--frames", 4000);
    let partitions = option("--partitions", 2);
    let batch = option("--batch", 200);
    let dir = std::env::temp_dir().join(format!("ami2-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("pipeline: synthetic source, {frames} frames without images, {partitions} partitions, batches of {batch}; -ll:cpu 1 -ll:util 1 per process");
    println!(
        "{:>9} {:>9} {:>11} {:>13} {:>14} {:>16} {:>15}",
        "processes", "wall [s]", "events/s", "placed tasks", "mapper/task", "policy/callback", "where"
    );
    for np in 1..=3u32 {
        let summary_path: PathBuf = dir.join(format!("summary-{np}.json"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_ami2"));
        if np > 1 {
            command.args(["launch", "--np", &np.to_string()]);
        }
        command
            .args(["run", "--frames", &frames.to_string(), "--partitions", &partitions.to_string()])
            .args(["--batch-size", &batch.to_string(), "--image-size", "0", "--graph"])
            .arg(graph(&dir))
            .arg("--summary")
            .arg(&summary_path)
            .args(["--", "-ll:cpu", "1", "-ll:util", "1", "-ll:csize", "256"])
            .env_remove("LD_LIBRARY_PATH");
        let output = command.output().expect("ami2 runs");
        if !output.status.success() {
            eprintln!("{np} processes failed: {}", String::from_utf8_lossy(&output.stderr));
            std::process::exit(1);
        }
        let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
        let mapper = &summary["mapper"];
        let number = |v: &Value| v.as_f64().unwrap_or(0.0);
        let tasks = number(&mapper["placed_tasks"]);
        let per_task_us = number(&mapper["placed_nanos"]) / tasks.max(1.0) / 1e3;
        let per_callback_us = number(&mapper["policy_nanos"]) / number(&mapper["policy_calls"]).max(1.0) / 1e3;
        let seconds = number(&summary["seconds"]);
        let nodes: std::collections::BTreeSet<u64> = summary["ran_on"]
            .as_object()
            .map(|tasks| {
                tasks
                    .values()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter_map(|n| n.as_u64())
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{np:>9} {seconds:>9.2} {:>11.0} {tasks:>13} {:>11.1} µs {:>13.2} µs {:>15}",
            number(&summary["events"]) / seconds,
            per_task_us,
            per_callback_us,
            format!("{nodes:?}")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The graph of the end-to-end cluster tests: scalars and a waveform (no images).
fn graph(dir: &std::path::Path) -> PathBuf {
    let graph = serde_json::json!({
        "nodes": [
            {"id": "energy", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
            {"id": "energy_hist", "op": "histogram", "inputs": ["energy"], "params": {"bins": 50, "low": 0.0, "high": 10.0}},
            {"id": "trace", "op": "select", "params": {"field": "trace", "kind": "waveform", "length": 256}},
            {"id": "trace_peaks", "op": "peaks", "inputs": ["trace"], "params": {"threshold": 0.5}}
        ],
        "results": ["energy_hist", "trace", "trace_peaks"]
    });
    let path = dir.join("graph.json");
    std::fs::write(&path, graph.to_string()).unwrap();
    path
}
