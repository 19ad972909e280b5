//! Persistence across real process restarts: a child process runs the real runtime with stores in
//! a data directory, the parent restarts it (cleanly, after `kill -9`, after an abort in the
//! middle of a snapshot write, with damaged files) and checks that every change that was reported
//! done is there when the stores are rebuilt.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kv_region::persist::SegmentFiles;
use kv_region::{register_tasks, KeyValueStore, StoreConfig};
use legion_bridge::harness::{case, check, run};
use legion_bridge::{runtime, TaskContext, TaskError};
use serde_json::{json, Value};

const MODE: &str = "KV_PERSIST_CHILD_MODE";
const DIR: &str = "KV_PERSIST_CHILD_DIR";

fn control_config() -> StoreConfig {
    StoreConfig::new("control")
        .segment("/control/", 4096, 1 << 20)
        .segment("/component/", 256, 64 * 1024)
        .logged()
}

fn results_config() -> StoreConfig {
    StoreConfig::new("results").segment("/results/", 4096, 1 << 20)
}

fn open(ctx: &TaskContext, dir: &Path) -> Result<(KeyValueStore, KeyValueStore, Vec<String>), TaskError> {
    let (control, control_stats) = KeyValueStore::create(ctx, &control_config(), Some(dir))?;
    let (results, result_stats) = KeyValueStore::create(ctx, &results_config(), Some(dir))?;
    let warnings = control_stats.iter().chain(&result_stats).flat_map(|s| s.warnings.clone()).collect();
    Ok((control, results, warnings))
}

fn dump(ctx: &TaskContext, store: &KeyValueStore) -> Result<BTreeMap<String, Value>, TaskError> {
    let keys = store.list(ctx, "/")?;
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values = store.get_many(ctx, &refs)?;
    Ok(keys.into_iter().zip(values).map(|(k, v)| (k, v.unwrap_or(Value::Null))).collect())
}

/// The child: one of several scripted runs against the stores in `dir`.
fn child(mode: &str, dir: PathBuf) -> ExitCode {
    register_tasks().unwrap();
    let mode = mode.to_string();
    let outcome = runtime::start(&[], move |ctx| {
        let (control, results, warnings) = open(ctx, &dir)?;
        match mode.as_str() {
            "write" => {
                for i in 0..20 {
                    control.put(ctx, &format!("/control/graph/{i}"), &json!({"version": i}))?;
                    results.put(ctx, &format!("/results/roi/{i:06}"), &json!(i as f64 * 0.5))?;
                }
                control.snapshot(ctx)?;
                results.snapshot(ctx)?;
                // After the snapshot: logged for Control, not kept for Results (unlogged).
                control.put(ctx, "/control/graph/current", &json!(19))?;
                control.delete(ctx, "/control/graph/0")?;
                control.put(ctx, "/component/worker-0/state", &json!({"next_frame": 1234}))?;
                results.put(ctx, "/results/roi/999999", &json!("not snapshotted"))?;
                println!("done");
            }
            "append" => {
                // New changes after a load, no snapshot: only the log keeps them.
                for i in 0..10 {
                    control.put(ctx, &format!("/control/after/{i}"), &json!({"after": i}))?;
                }
                println!("warnings: {}", json!(warnings));
                println!("done");
            }
            "dump" => {
                let out = json!({"control": dump(ctx, &control)?, "results": dump(ctx, &results)?, "warnings": warnings});
                println!("{out}");
            }
            "churn" => {
                // Acknowledge each change once it is done; snapshot every few changes.
                for i in 0..100_000u64 {
                    control.put(ctx, &format!("/control/edit/{i:06}"), &json!({"edit": i, "pad": "p".repeat(200)}))?;
                    println!("ack {i}");
                    if i % 5 == 4 {
                        control.snapshot(ctx)?;
                    }
                }
            }
            other => return Err(TaskError::msg(format!("unknown mode {other}"))),
        }
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("child failed: {e}");
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_child(mode: &str, dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(MODE, mode).env(DIR, dir);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn dump_child(dir: &Path) -> Result<Value, TaskError> {
    let out = run_child("dump", dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(TaskError::msg(format!(
            "dump failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_str(stdout.lines().last().unwrap_or("")).map_err(|e| TaskError::msg(format!("dump output {stdout:?}: {e}")))
}

/// Starts a churn child and kills it with SIGKILL once it has acknowledged `acks` changes (or
/// lets it die by itself); returns the acknowledged edit numbers.
fn churn_until(dir: &Path, acks: usize, env: &[(&str, &str)]) -> Vec<u64> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(MODE, "churn")
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut acked = Vec::new();
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ack ") {
            acked.push(n.parse().unwrap());
        }
        if acked.len() >= acks || started.elapsed() > Duration::from_secs(60) {
            // SIGKILL: no chance to clean up.
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    acked
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kv-persistence").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check_acked(dump: &Value, acked: &[u64]) -> Result<(), TaskError> {
    let control = dump["control"].as_object().ok_or_else(|| TaskError::msg("no control in dump"))?;
    for i in acked {
        let value = &control
            .get(&format!("/control/edit/{i:06}"))
            .ok_or_else(|| TaskError::msg(format!("acknowledged edit {i} lost")))?["edit"];
        check(value == &json!(i), format!("edit {i} holds {value}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(mode) = std::env::var(MODE) {
        return child(&mode, PathBuf::from(std::env::var(DIR).expect("child dir")));
    }
    let cases = vec![
        case("stores_survive_a_restart", |_| {
            let dir = scratch("restart");
            let out = run_child("write", &dir, &[]);
            check(
                out.status.success(),
                format!("write failed: {}", String::from_utf8_lossy(&out.stdout)),
            )?;
            let dump = dump_child(&dir)?;
            let control = &dump["control"];
            check(control.as_object().map(|o| o.len()) == Some(21), format!("control keys: {control}"))?;
            check(control["/control/graph/5"] == json!({"version": 5}), "snapshotted value")?;
            check(control["/control/graph/current"] == json!(19), "logged put after the snapshot")?;
            check(control.get("/control/graph/0").is_none(), "logged delete after the snapshot")?;
            check(
                control["/component/worker-0/state"] == json!({"next_frame": 1234}),
                "second segment",
            )?;
            let results = dump["results"].as_object().unwrap();
            check(
                results.len() == 20 && results["/results/roi/000004"] == json!(2.0),
                "results snapshot",
            )?;
            check(
                !results.contains_key("/results/roi/999999"),
                "unlogged change after the snapshot came back",
            )?;
            check(
                dump["warnings"].as_array().is_some_and(|w| w.is_empty()),
                format!("warnings: {}", dump["warnings"]),
            )
        }),
        case("abort_in_the_middle_of_a_snapshot_loses_nothing_acknowledged", |_| {
            let dir = scratch("abort-mid-snapshot");
            // Each snapshot of the store writes its two segments: the 7th file written belongs to
            // the 4th snapshot, which starts after edit 19 was acknowledged.
            let acked = churn_until(&dir, usize::MAX, &[("KV_REGION_ABORT_IN_SNAPSHOT", "7")]);
            check(acked.len() == 20, format!("{} edits acknowledged before the abort", acked.len()))?;
            let half_written = std::fs::read_dir(dir.join("control"))?
                .filter_map(Result::ok)
                .any(|e| e.path().to_string_lossy().ends_with(".snap.tmp"));
            check(half_written, "no half-written snapshot left behind")?;
            check_acked(&dump_child(&dir)?, &acked)?;
            // The load removed it: nothing reads it, and a full disk needs the space.
            let left = std::fs::read_dir(dir.join("control"))?
                .filter_map(Result::ok)
                .any(|e| e.path().to_string_lossy().ends_with(".snap.tmp"));
            check(!left, "the half-written snapshot is still there after a load")
        }),
        case("kill_9_at_random_points_loses_nothing_acknowledged", |_| {
            let dir = scratch("kill-9");
            let mut total = Vec::new();
            for (round, acks) in [7usize, 23, 41, 3].into_iter().enumerate() {
                let acked = churn_until(&dir, acks, &[]);
                check(acked.len() >= acks.min(1), format!("round {round}: {} acks", acked.len()))?;
                total.extend(acked);
                // Each churn run starts again from edit 0, so later runs overwrite earlier keys
                // with the same values: everything acknowledged so far must be there.
                check_acked(&dump_child(&dir)?, &total).map_err(|e| TaskError::msg(format!("round {round}: {e}")))?;
            }
            Ok(())
        }),
        case("damaged_snapshot_falls_back_to_the_previous_one_plus_the_log", |_| {
            let dir = scratch("damaged");
            let acked = churn_until(&dir, 33, &[]);
            let files = SegmentFiles::new(&dir.join("control"), "/control/");
            let mut bytes = std::fs::read(&files.snapshot)?;
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(&files.snapshot, &bytes)?;
            let dump = dump_child(&dir)?;
            check_acked(&dump, &acked)?;
            let warnings = dump["warnings"].to_string();
            check(
                warnings.contains("checksum mismatch") && warnings.contains("previous snapshot"),
                warnings,
            )
        }),
        case("torn_log_tail_is_reported_and_the_intact_records_replayed", |_| {
            let dir = scratch("torn-log");
            let acked = churn_until(&dir, 12, &[]);
            let files = SegmentFiles::new(&dir.join("control"), "/control/");
            let mut log = std::fs::OpenOptions::new().append(true).open(&files.log)?;
            std::io::Write::write_all(&mut log, &[200, 0, 0, 0, 1, 2, 3])?;
            drop(log);
            let dump = dump_child(&dir)?;
            check_acked(&dump, &acked)?;
            let warnings = dump["warnings"].to_string();
            check(
                warnings.contains("is damaged (torn: the file ends 7 bytes into its 8-byte header)")
                    && warnings.contains("the log was cut there and the 7 bytes cut off are kept in"),
                warnings,
            )
        }),
        case("changes_after_a_torn_log_tail_survive_the_next_restart", |_| {
            let dir = scratch("torn-log-then-append");
            churn_until(&dir, 12, &[]);
            // A crash in the middle of an append (or a full disk): the log's last record is torn.
            let files = SegmentFiles::new(&dir.join("control"), "/control/");
            let len = std::fs::metadata(&files.log)?.len();
            check(len > 300, format!("log of {len} bytes"))?;
            std::fs::OpenOptions::new().write(true).open(&files.log)?.set_len(len - 100)?;
            let out = run_child("append", &dir, &[]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            check(out.status.success() && stdout.contains("done"), format!("append failed: {stdout}"))?;
            // The next start finds every change accepted after the damage, and no damage.
            let dump = dump_child(&dir)?;
            for i in 0..10 {
                check(
                    dump["control"][format!("/control/after/{i}")] == json!({"after": i}),
                    format!("change {i} made after the damage was lost: {}", dump["warnings"]),
                )?;
            }
            check(
                dump["warnings"].as_array().is_some_and(|w| w.is_empty()),
                format!("warnings: {}", dump["warnings"]),
            )?;
            check(
                stdout.contains("is damaged (torn") && stdout.contains(".damaged-"),
                format!("no warning about the cut: {stdout}"),
            )?;
            // The cut-off bytes are kept next to the log.
            let kept: Vec<PathBuf> = std::fs::read_dir(dir.join("control"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".log.damaged-"))
                .collect();
            check(kept.len() == 1, format!("kept: {kept:?}"))?;
            let kept_len = std::fs::metadata(&kept[0])?.len();
            check(kept_len > 0 && kept_len < 300, format!("{kept_len} bytes kept"))
        }),
        case("snapshot_files_of_another_segment_are_refused_not_skipped", |_| {
            let dir = scratch("foreign-snapshots");
            churn_until(&dir, 16, &[]);
            // A mis-restored backup: the /component/ segment's snapshots in place of /control/'s.
            let control = SegmentFiles::new(&dir.join("control"), "/control/");
            let component = SegmentFiles::new(&dir.join("control"), "/component/");
            std::fs::copy(&component.snapshot, &control.snapshot)?;
            std::fs::copy(&component.previous, &control.previous)?;
            let out = run_child("dump", &dir, &[]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            check(!out.status.success(), format!("loaded without its snapshots: {stdout}"))?;
            check(
                stdout.contains("cannot be loaded")
                    && stdout.contains("holds segment \"/component/\", not \"/control/\"")
                    && stdout.contains("To recover"),
                format!("error said: {stdout}"),
            )
        }),
        case("a_log_continuing_a_missing_snapshot_is_refused", |_| {
            let dir = scratch("missing-snapshots");
            let acked = churn_until(&dir, 16, &[]);
            check(acked.len() >= 16, format!("{} acks", acked.len()))?;
            // Both snapshots gone, while the log was compacted by them: the log alone lacks the
            // first edits.
            let files = SegmentFiles::new(&dir.join("control"), "/control/");
            std::fs::remove_file(&files.snapshot)?;
            std::fs::remove_file(&files.previous)?;
            let out = run_child("dump", &dir, &[]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            check(!out.status.success(), format!("loaded the log alone: {stdout}"))?;
            check(
                stdout.contains("continues a snapshot holding the changes up to")
                    && stdout.contains("there is no snapshot")
                    && stdout.contains("To recover"),
                format!("error said: {stdout}"),
            )
        }),
        case("garbage_in_both_snapshots_is_refused_not_loaded", |_| {
            let dir = scratch("garbage");
            churn_until(&dir, 16, &[]);
            let files = SegmentFiles::new(&dir.join("control"), "/control/");
            std::fs::write(&files.snapshot, b"AMI2SNAP garbage")?;
            std::fs::write(&files.previous, b"more garbage")?;
            let out = run_child("dump", &dir, &[]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            check(!out.status.success(), "garbage loaded")?;
            check(stdout.contains("corrupt or truncated snapshot"), format!("error said: {stdout}"))
        }),
    ];
    run(&[], cases)
}
