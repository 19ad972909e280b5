//! `ami2`: online analysis of live detector telemetry on the Legion task runtime.
//!
//! Subcommands start the service or talk to it; `ami2 doctor` checks that the Legion runtime
//! works on this machine.

/// `println!` that returns the error instead of panicking when stdout is closed, so that a
/// client command piped into `head` ends quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod client;
mod cron;
mod doctor;
mod graph_versions;
mod launch;
mod metrics;
mod profiling;
mod record;
mod run;
mod service;
mod supervise;
mod table;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ami2", version, about = "Online analysis of live detector telemetry on Legion")]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `ami2=debug`.
    #[arg(long, global = true, default_value = "warn", env = "AMI2_LOG")]
    log: String,
    /// Log format on stderr: `text` (for people) or `json` (one object per line, for log tools).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AMI2_LOG_FORMAT")]
    log_format: LogFormat,
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
    /// Install or remove the cron watchdog that keeps the service running.
    #[command(subcommand)]
    Cron(cron::CronCommand),
    /// Run an ami2 command as N processes of one Legion run on this machine (p2p or mpirun).
    Launch(launch::LaunchArgs),
    /// Show or change the running service's computation graph.
    #[command(subcommand)]
    Graph(client::GraphCommand),
    /// Print the finished bins of results as JSON lines, live.
    Watch(client::WatchArgs),
    /// Print a key of the service's Control or Results store.
    Get(client::GetArgs),
    /// Print the service's status.
    Status(client::StatusArgs),
    /// Turn the Legion Prof logs of a `--profile DIR` run into statistics and a trace to open.
    Prof(profiling::ProfArgs),
    /// Draw the dataflow and event graphs of a `--spy DIR` run with Legion Spy.
    Spy(profiling::SpyArgs),
    /// Print the metrics of a running service (scraped from its Prometheus endpoint).
    Metrics(metrics::MetricsArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|err| {
        if err.exit_code() == USAGE_EXIT_CODE {
            // Under `ami2 launch`, the launcher ends with this process's code.
            launch::note_exit_code(USAGE_EXIT_CODE);
        }
        err.exit()
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Fields (component, partition, bin, ...) at the top level of each object.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    let is_launcher = matches!(cli.command, Command::Launch(_));
    if !is_launcher {
        // Under `ami2 launch`, a process that starts Legion tells the launcher it joined the run.
        launch::signal_readiness()?;
    }
    let done = match cli.command {
        Command::Doctor(args) => doctor::run(args),
        Command::Run(args) if args.supervise => supervise::supervise(std::env::args().skip(1).filter(|a| a != "--supervise").collect()),
        Command::Run(args) => run::run(args, false),
        Command::Demo(args) => run::run(args, true),
        Command::Record(args) => record::record(args),
        Command::DaqSim(args) => record::daq_sim(args),
        Command::Prof(args) => profiling::prof(args),
        Command::Spy(args) => profiling::spy(args),
        Command::Metrics(args) => metrics::print(args),
        Command::Graph(command) => client::graph(command),
        Command::Watch(args) => client::watch(args),
        Command::Get(args) => client::get(args),
        Command::Status(args) => client::status(args),
        Command::Cron(command) => cron::cron(command),
        Command::Launch(args) => launch::launch(args, &cli.log),
    };
    match done {
        // A reader that stopped reading (`ami2 watch | head`) ends the command, quietly.
        Err(err) if is_broken_pipe(&err) => Ok(()),
        Err(err) => {
            eprintln!("{}", error_text(&err));
            let code = err.downcast_ref::<ExitWith>().map_or(1, |e| e.code);
            // Not the launcher's own: its processes' codes are what it ends with.
            if code != 1 && !is_launcher {
                launch::note_exit_code(code);
            }
            std::process::exit(code)
        }
        Ok(()) => Ok(()),
    }
}

/// What a failed command prints: the error and its causes, without the backtrace anyhow would
/// add whenever `RUST_BACKTRACE` is set (a user's error is not a program's crash; `--log debug`
/// says more).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = format!("Error: {err}");
    let causes: Vec<String> = err.chain().skip(1).map(|cause| cause.to_string()).collect();
    if !causes.is_empty() {
        text.push_str("\n\nCaused by:");
        for cause in causes {
            text.push_str(&format!("\n    {cause}"));
        }
    }
    text
}

/// Exit code of a command that refused its arguments: clap's usage code, which `--supervise`
/// does not restart (the same arguments would be refused again).
const USAGE_EXIT_CODE: i32 = 2;

/// An error that ends `ami2` with an exit code of its own ([`USAGE_EXIT_CODE`],
/// [`STORE_EXIT_CODE`]), so that `--supervise` tells it from a crash. It keeps the whole message
/// of the error it marks.
#[derive(Debug)]
pub struct ExitWith {
    code: i32,
    message: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// `err` as an error that ends ami2 with exit code `code` (its message printed as usual).
pub fn exit_with(code: i32, err: impl Into<anyhow::Error>) -> anyhow::Error {
    ExitWith {
        code,
        message: format!("{:#}", err.into()),
    }
    .into()
}

/// Marks `err` as a refused argument (a value out of range, a graph file that is not a valid
/// graph), found before the command starts: `ami2` exits with [`USAGE_EXIT_CODE`], as for a
/// usage error.
pub fn refused(err: impl Into<anyhow::Error>) -> anyhow::Error {
    exit_with(USAGE_EXIT_CODE, err)
}

/// Exit code of a service whose data directory cannot be loaded (sysexits' EX_DATAERR): a
/// damaged snapshot with no good previous one, a log that continues a missing snapshot, a store
/// too small for what it holds. `--supervise` does not restart it: the same files would fail the
/// same way.
const STORE_EXIT_CODE: i32 = 65;

/// Marks `err` as a data directory that cannot be loaded ([`STORE_EXIT_CODE`]); its message says
/// how to recover.
pub fn unloadable(err: impl Into<anyhow::Error>) -> anyhow::Error {
    exit_with(STORE_EXIT_CODE, err)
}

/// Parses an option given in seconds: a number of 0 or more that a `Duration` holds (not NaN,
/// infinite or negative, which would be ignored or end the command with a panic).
pub fn seconds_arg(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value >= 0.0 && std::time::Duration::try_from_secs_f64(value).is_ok() {
        Ok(value)
    } else {
        Err("a number of seconds, 0 or more, is needed".into())
    }
}

/// Parses a rate in frames per second: a number from 0 (as fast as possible) to 1e9, past which
/// frames 1 ns apart would share their time stamps.
pub fn rate_arg(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1e9).contains(&value) {
        Ok(value)
    } else {
        Err("a number of frames per second from 0 (as fast as possible) to 1e9 is needed".into())
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
