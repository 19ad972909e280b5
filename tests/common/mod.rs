//! Shared by the end-to-end tests: running the `ami2` binary.

use std::process::{Command, Output};

/// Runs `ami2 ARGS` to completion. cargo test puts the link-search folders on LD_LIBRARY_PATH;
/// the binary must not need it, so it is removed.
pub fn ami2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ami2"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("ami2 runs")
}
