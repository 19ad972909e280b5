//! Shared by the end-to-end tests: running the `ami2` binary, scratch folders, the Legion flags
//! of a small run, and (`service`) `ami2 run` as a long-running service.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod service;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Legion flags for a small run on any machine, after the `--` that ends ami2's own options.
pub const LEGION: [&str; 5] = ["--", "-ll:cpu", "1", "-ll:util", "1"];

/// `args` followed by [`LEGION`].
pub fn with_legion<'a>(args: &[&'a str]) -> Vec<&'a str> {
    args.iter().copied().chain(LEGION).collect()
}

/// A fresh scratch folder `name` for one test, under cargo's temporary folder and the test
/// binary's name.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(env!("CARGO_CRATE_NAME")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `ami2 ARGS` to completion. cargo test puts the link-search folders on LD_LIBRARY_PATH;
/// the binary must not need it, so it is removed.
pub fn ami2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("ami2 runs")
}

/// Writes a recording of the synthetic stream to `file` with `ami2 record` (`args` after the
/// file, e.g. `--frames`); returns the `--source` argument that replays it.
pub fn record(file: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["record", file.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    let out = ami2(&all);
    assert!(out.status.success(), "ami2 {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    format!("file:{}", file.display())
}

/// Starts `ami2 ARGS` in the background, its stdout to `stdout` and its stderr piped (for
/// `wait_with_output`).
pub fn spawn_ami2(args: &[&str], stdout: std::process::Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ami2 starts")
}

/// Runs `ami2 ARGS` to completion, or kills it after `limit` (then `None`): for commands that
/// must end by themselves, where a failure would otherwise hang the test.
pub fn ami2_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ami2 runs");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("waiting for ami2").is_none() {
        if Instant::now() > deadline {
            // SIGINT, so that a supervisor stops its child too; then SIGKILL.
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().expect("ami2's output"))
}

/// A child process killed (SIGKILL) when the test ends, also when it fails.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
