//! `ami2`: online analysis of live detector telemetry on the Legion task runtime.
//!
//! Subcommands start the service or talk to it; `ami2 doctor` checks that the Legion runtime
//! works on this machine.

mod doctor;
mod launch;
mod record;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ami2", version, about = "Online analysis of live detector telemetry on Legion")]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `ami2=debug`.
    #[arg(long, global = true, default_value = "warn", env = "AMI2_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Legion, run a few tasks and a region round trip, and report what was found.
    Doctor(doctor::DoctorArgs),
    /// Run the analysis service: data sources, workers, reducers, results.
    Run(run::RunArgs),
    /// The embedded default: synthetic events, the built-in graph, a live table of results.
    Demo(run::RunArgs),
    /// Write a recording of synthetic events (replay it with `run --source file:PATH`).
    Record(record::RecordArgs),
    /// Produce synthetic events into a shared-memory ring (read it with `run --source shm:NAME`).
    DaqSim(record::DaqSimArgs),
    /// Run an ami2 command as N processes of one Legion run on this machine (p2p or mpirun).
    Launch(launch::LaunchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .init();
    if !matches!(cli.command, Command::Launch(_)) {
        // Under `ami2 launch`, a process that starts Legion tells the launcher it joined the run.
        launch::signal_readiness()?;
    }
    match cli.command {
        Command::Doctor(args) => doctor::run(args),
        Command::Run(args) => run::run(args, false),
        Command::Demo(args) => run::run(args, true),
        Command::Record(args) => record::record(args),
        Command::DaqSim(args) => record::daq_sim(args),
        Command::Launch(args) => launch::launch(args, &cli.log),
    }
}
