//! Command-line options of the benchmark binaries: `--name VALUE` pairs after `cargo bench ... --`.

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    legion_bridge::harness::option_text(name).unwrap_or_else(|| default.to_string())
}
