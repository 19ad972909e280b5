//! Shared by the end-to-end tests: running the `ami2` binary, scratch folders, the Legion flags
//! of a small run, and (`service`) `ami2 run` as a long-running service.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod service;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
