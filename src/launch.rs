//! `ami2 launch --np N COMMAND...`: runs `ami2 COMMAND...` as N processes of one Legion run on
//! this machine, through Realm's UCX p2p bootstrap (no MPI needed) or the bundled `mpirun`.
//!
//! Waits are bounded: every process must report that it joined the run (its registration
//! callback ran, so the network is up) within `--start-timeout`; a process that fails, or does not
//! start in time, stops the launch with an error naming it, and the others are ended. Once started,
//! the run lasts as long as its command does; the launch succeeds when every process exits 0.
//! A process that ends with one of ami2's own exit codes makes the launch end with it: 65 when a
//! process cannot load its data directory, 2 when one refused its arguments (each process leaves
//! its code in the launch folder, so that this works under `mpirun` too); other failures end it
//! with 1.
//!
//! Stopping: the processes run in a process group of their own, so a terminal's Ctrl-C (or a
//! SIGTERM) reaches the launcher alone, which asks the process of address space 0, the driver's,
//! to stop; the run then ends cleanly, as a one-process run does on Ctrl-C. A second signal
//! kills every process. Each process watches the launcher, and stops the same way when the
//! launcher is gone (`kill -9`).

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// Environment variable naming the folder where each process of a launch marks that it started.
const READY_DIR_VAR: &str = "AMI2_LAUNCH_READY_DIR";
/// Environment variable holding the launcher's process id, which every process watches.
const LAUNCHER_PID_VAR: &str = "AMI2_LAUNCHER_PID";
/// How often a launched process checks that its launcher is still there.
const LAUNCHER_WATCH_PERIOD: Duration = Duration::from_millis(250);
/// How long, after a process failed, the launcher waits for the others to end by themselves
/// before it stops them: the whole run ends with the failed process, and the one that says why
/// (exit code 65 or 2) is not always the first to exit.
const FAILURE_GRACE: Duration = Duration::from_secs(5);
/// The address space of this process, once its registration callback ran.
static ADDRESS_SPACE: OnceLock<u32> = OnceLock::new();

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bootstrap {
    /// Realm's UCX p2p bootstrap over TCP ports on 127.0.0.1 (no MPI).
    P2p,
    /// The `mpirun` of the bundled Open MPI (or of `--mpirun`), with Realm's MPI bootstrap.
    Mpi,
}

#[derive(Args, Clone)]
pub struct LaunchArgs {
    /// Number of processes (Legion address spaces).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    np: u32,
    /// How the processes find each other.
    #[arg(long, value_enum, default_value = "p2p")]
    bootstrap: Bootstrap,
    /// Seconds every process has to join the run before the launch is abandoned.
    #[arg(long, default_value_t = 60.0, value_parser = crate::seconds_arg)]
    start_timeout: f64,
    /// p2p: first TCP port on 127.0.0.1 (process i uses port + i); default: free ports.
    #[arg(long)]
    base_port: Option<u16>,
    /// mpi: the `mpirun` to use (default: the one of the bundled Open MPI).
    #[arg(long)]
    mpirun: Option<PathBuf>,
    /// The ami2 command every process runs, e.g. `run --partitions 2 --frames 1000 -- -ll:cpu 1`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// Marks this process of a launch as started (called from a registration callback, when the
/// machine is known). Does nothing outside `ami2 launch`.
pub fn mark_ready(address_space: u32) {
    let _ = ADDRESS_SPACE.set(address_space);
    if let Some(dir) = std::env::var_os(READY_DIR_VAR) {
        let path = Path::new(&dir).join(format!("ready-{address_space}"));
        if let Err(error) = std::fs::write(&path, std::process::id().to_string()) {
            tracing::warn!("cannot mark the process started in {}: {error}", path.display());
        }
    }
}

/// Leaves this process's exit code (one of ami2's own, 2 or 65) in the launch folder, with its
/// rank when known, for the launcher to end with it ([`launch_outcome`]). Does nothing outside
/// `ami2 launch`.
pub fn note_exit_code(code: i32) {
    let Some(dir) = std::env::var_os(READY_DIR_VAR) else { return };
    // Before the runtime started (refused arguments) the address space is not known yet;
    // mpirun's rank is the same number.
    let rank = ADDRESS_SPACE
        .get()
        .map(u32::to_string)
        .or_else(|| std::env::var("OMPI_COMM_WORLD_RANK").ok())
        .unwrap_or_default();
    let path = Path::new(&dir).join(format!("exit-{}", std::process::id()));
    if let Err(error) = std::fs::write(&path, format!("{code} {rank}")) {
        tracing::warn!("cannot leave the exit code for the launcher in {}: {error}", path.display());
    }
}

/// Installs [`mark_ready`] as a registration callback; call before the runtime starts. Under
/// `ami2 launch`, also starts [`watch_launcher`].
pub fn signal_readiness() -> Result<()> {
    legion_bridge::runtime::add_registration_callback(|registration| {
        if let Some(p) = registration.local_processors().first() {
            mark_ready(p.address_space);
        }
    })?;
    if let Some(pid) = std::env::var(LAUNCHER_PID_VAR).ok().and_then(|v| v.parse().ok()) {
        watch_launcher(nix::unistd::Pid::from_raw(pid));
    }
    Ok(())
}

/// Stops this process (a SIGTERM to itself: `run` then ends cleanly) when the launcher `pid` is
/// gone. The processes of a launch run in a process group of their own, so nothing else would
/// stop them after a `kill -9` of the launcher.
fn watch_launcher(launcher: nix::unistd::Pid) {
    let watch = move || loop {
        std::thread::sleep(LAUNCHER_WATCH_PERIOD);
        if nix::sys::signal::kill(launcher, None) == Err(nix::errno::Errno::ESRCH) {
            tracing::warn!("the launcher (process {launcher}) is gone: stopping");
            // Its folder of ready marks is not removed by anyone else now.
            if let Some(dir) = std::env::var_os(READY_DIR_VAR) {
                let _ = std::fs::remove_dir_all(dir);
            }
            if let Err(errno) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM) {
                tracing::error!("cannot stop after the launcher ended: {errno}");
            }
            return;
        }
    };
    if let Err(error) = std::thread::Builder::new().name("ami2-launcher-watch".into()).spawn(watch) {
        tracing::warn!("cannot watch the launcher: {error}");
    }
}

/// Runs the launch; every process gets the launcher's log filter (`log`).
pub fn launch(args: LaunchArgs, log: &str) -> Result<()> {
    // The others do not start Legion: N copies would only do the same thing N times.
    if !matches!(args.command.first().map(String::as_str), Some("run" | "demo" | "doctor")) {
        return Err(crate::refused(anyhow::anyhow!(
            "launch runs commands that start Legion: run, demo or doctor, not {:?}",
            args.command.join(" ")
        )));
    }
    let exe = std::env::current_exe().context("finding the ami2 executable")?;
    let ready_dir = tempfile::Builder::new()
        .prefix("ami2-launch-")
        .tempdir()
        .context("creating the launch folder")?;
    // Signals reach the launcher alone (its processes have a group of their own): it forwards them.
    let signals = Arc::new(AtomicUsize::new(0));
    let counted = signals.clone();
    ctrlc::set_handler(move || {
        counted.fetch_add(1, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;
    let mut children = match args.bootstrap {
        Bootstrap::P2p => spawn_p2p(&args, &exe, ready_dir.path(), log)?,
        Bootstrap::Mpi => vec![spawn_mpi(&args, &exe, ready_dir.path(), log)?],
    };
    let outcome = supervise(
        &mut children,
        args.np,
        ready_dir.path(),
        Duration::from_secs_f64(args.start_timeout),
        &signals,
    );
    if outcome.is_err() {
        kill_all(&mut children, args.np, ready_dir.path());
    }
    for (_, child) in &mut children {
        let _ = child.wait();
    }
    outcome
}

/// A name for each child process in messages.
type Named = (String, Child);

fn spawn_p2p(args: &LaunchArgs, exe: &Path, ready_dir: &Path, log: &str) -> Result<Vec<Named>> {
    let plugin = bootstrap_plugin("realm_ucp_bootstrap_p2p.so")?;
    let ports = match args.base_port {
        Some(base) => (0..args.np)
            .map(|i| base.checked_add(i as u16).context("--base-port + --np exceeds 65535"))
            .collect::<Result<Vec<_>>>()?,
        None => free_ports(args.np as usize)?,
    };
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(" ");
    let mut children = Vec::new();
    for (rank, port) in ports.iter().enumerate() {
        let child = Command::new(exe)
            .args(&args.command)
            .env("REALM_UCP_BOOTSTRAP_PLUGIN", &plugin)
            .env("REALM_UCP_BOOTSTRAP_MODE", "p2p")
            .env("WORKER_PEERS_INFO", &peers)
            .env("WORKER_SELF_INFO", format!("127.0.0.1:{port}"))
            .env(READY_DIR_VAR, ready_dir)
            .env(LAUNCHER_PID_VAR, std::process::id().to_string())
            .env("AMI2_LOG", log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting process {rank} ({})", exe.display()));
        match child {
            Ok(child) => children.push((format!("process {rank}"), child)),
            Err(error) => {
                for (_, child) in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(error);
            }
        }
    }
    Ok(children)
}

fn spawn_mpi(args: &LaunchArgs, exe: &Path, ready_dir: &Path, log: &str) -> Result<Named> {
    let plugin = bootstrap_plugin("legate/wrapper/librealm_ucp_bootstrap_mpi_ompi.so")?;
    let mpi_dir = Path::new(legion_sys::MPI_DIR);
    let mpirun = match &args.mpirun {
        Some(path) => path.clone(),
        None if !legion_sys::MPI_DIR.is_empty() => mpi_dir.join("bin/mpirun"),
        None => bail!("this ami2 was built against a site Legion without a bundled Open MPI: pass --mpirun PATH (or use --bootstrap p2p)"),
    };
    let mut command = Command::new(&mpirun);
    if args.mpirun.is_none() {
        // The bundled Open MPI was unpacked away from the prefix it was built for.
        command.env("OPAL_PREFIX", mpi_dir);
        let library_path = std::env::var("LD_LIBRARY_PATH").map(|p| format!(":{p}")).unwrap_or_default();
        command.env("LD_LIBRARY_PATH", format!("{}{library_path}", mpi_dir.join("lib").display()));
        command.args(["-x", "LD_LIBRARY_PATH", "-x", "OPAL_PREFIX"]);
    }
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &args.np.to_string()])
        .arg("-x")
        .arg(format!("REALM_UCP_BOOTSTRAP_PLUGIN={}", plugin.display()))
        .arg("-x")
        .arg(format!("{READY_DIR_VAR}={}", ready_dir.display()))
        .arg("-x")
        .arg(format!("{LAUNCHER_PID_VAR}={}", std::process::id()))
        .arg("-x")
        .arg(format!("AMI2_LOG={log}"))
        .arg(exe)
        .args(&args.command)
        // mpirun forwards its stdin to rank 0; in a group of its own it must not read the terminal.
        .stdin(Stdio::null())
        .process_group(0);
    let child = command.spawn().with_context(|| format!("starting {}", mpirun.display()))?;
    Ok(("mpirun".to_string(), child))
}

/// A Realm UCX bootstrap plugin of the Legion distribution this ami2 was built against.
fn bootstrap_plugin(relative: &str) -> Result<PathBuf> {
    let root = Path::new(legion_sys::DIST_ROOT);
    let candidates = [
        root.join("legate/lib64").join(relative),
        root.join("lib").join(relative),
        root.join("lib64").join(relative),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "Realm's bootstrap plugin {relative} is not in the Legion distribution {} (looked in legate/lib64, lib, lib64); a site Legion built with GASNet-EX is launched with its own launcher instead (docs/cluster.md)",
            root.display()
        )
    })
}

/// `count` TCP ports that were free a moment ago (another program may take one before Realm
/// binds it; then that process fails to start and the launch says so).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free TCP ports on 127.0.0.1")?;
    Ok(listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()).collect())
}

/// Waits for every process to start (within `timeout`) and then to end; the first failure is
/// the error. The first signal the launcher gets (counted in `signals`) asks the driver's process
/// to stop the run, or ends a launch still starting; the second kills every process.
fn supervise(children: &mut [Named], np: u32, ready_dir: &Path, timeout: Duration, signals: &AtomicUsize) -> Result<()> {
    let started = Instant::now();
    let mut all_ready = false;
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut signals_handled = 0;
    loop {
        let received = signals.load(Ordering::SeqCst);
        if received > signals_handled {
            signals_handled = received;
            match (received, rank_pid(ready_dir, 0)) {
                (1, Some(driver)) if all_ready => {
                    eprintln!("ami2 launch: stopping the run (again to kill every process)");
                    if let Err(errno) = nix::sys::signal::kill(driver, nix::sys::signal::Signal::SIGTERM) {
                        tracing::warn!("cannot ask the driver's process {driver} to stop: {errno}");
                    }
                }
                _ => bail!("stopped by a signal; every process was killed"),
            }
        }
        if !all_ready {
            let missing = not_ready(np, ready_dir);
            all_ready = missing.is_empty();
            if !all_ready && started.elapsed() > timeout {
                bail!(
                    "process(es) {missing:?} of {np} did not join the run within {:.0} s (see their messages above); all processes were stopped",
                    timeout.as_secs_f64()
                );
            }
        }
        for ((name, child), status) in children.iter_mut().zip(done.iter_mut()) {
            if status.is_some() {
                continue;
            }
            if let Some(exit) = child.try_wait().with_context(|| format!("waiting for {name}"))? {
                *status = Some(exit);
                if !exit.success() {
                    let when = if not_ready(np, ready_dir).is_empty() {
                        "while running"
                    } else {
                        "before every process had joined the run"
                    };
                    let failure = anyhow::anyhow!("{name} failed ({exit}) {when}; the other processes were stopped");
                    wait_for_the_others(children, &mut done, FAILURE_GRACE);
                    return Err(launch_outcome(failure, children, &done, ready_dir));
                }
            }
        }
        if done.iter().all(Option::is_some) {
            if !all_ready && !not_ready(np, ready_dir).is_empty() {
                bail!(
                    "the processes ended before all of them had joined the run (launch runs commands that start Legion: run, demo, doctor)"
                );
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `limit` for the children not `done` yet to end by themselves.
fn wait_for_the_others(children: &mut [Named], done: &mut [Option<ExitStatus>], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for ((_, child), status) in children.iter_mut().zip(done.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().ok().flatten();
            }
        }
        if done.iter().all(Option::is_some) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error a failed launch ends with: the processes' own exit code when one ended with one of
/// ami2's (65, an unloadable data directory, before 2, refused arguments), naming them; otherwise
/// `failure`, the first process that failed (exit code 1).
fn launch_outcome(failure: anyhow::Error, children: &[Named], done: &[Option<ExitStatus>], ready_dir: &Path) -> anyhow::Error {
    // (exit code, who): what the processes left in the launch folder, and the children's own codes
    // (a p2p process, or mpirun passing its rank's on).
    let mut ended: Vec<(i32, String)> = Vec::new();
    // Named by rank (address space; Realm numbers the p2p processes its own way) when the
    // process knew it, otherwise as the launcher started it.
    let mut noted_by: Vec<&str> = Vec::new();
    for (pid, code, rank) in noted_exit_codes(ready_dir) {
        let child = children.iter().find(|(_, child)| child.id() == pid).map(|(name, _)| name.as_str());
        noted_by.extend(child);
        let who = match (rank, child) {
            (Some(rank), _) => format!("rank {rank}"),
            (None, Some(name)) => name.to_string(),
            (None, None) => format!("the process with pid {pid}"),
        };
        ended.push((code, who));
    }
    for ((name, _), status) in children.iter().zip(done) {
        if let Some(code) = status.and_then(|s| s.code()) {
            // mpirun passes on the code of a rank that already said who it is.
            let known = noted_by.contains(&name.as_str()) || (name == "mpirun" && ended.iter().any(|(c, _)| *c == code));
            if !known {
                let who = if name == "mpirun" {
                    "a process of mpirun".to_string()
                } else {
                    name.clone()
                };
                ended.push((code, who));
            }
        }
    }
    // The processes that ended with `code`, and whether there are several.
    let named = |code: i32| {
        let mut who: Vec<&str> = ended.iter().filter(|(c, _)| *c == code).map(|(_, who)| who.as_str()).collect();
        who.sort_unstable();
        who.dedup();
        (!who.is_empty()).then(|| (who.join(", "), who.len() > 1))
    };
    // 65 before 2: a data directory to repair says more than the arguments a rank refused.
    let outcomes = [
        (
            crate::STORE_EXIT_CODE,
            "cannot load the data directory",
            "what is damaged and how to recover",
        ),
        (crate::USAGE_EXIT_CODE, "refused the arguments", "which"),
    ];
    for (code, what, says) in outcomes {
        if let Some((who, several)) = named(code) {
            let error = if several {
                "their errors above say"
            } else {
                "its error above says"
            };
            return crate::exit_with(
                code,
                anyhow::anyhow!("{who} {what} (exit code {code}; {error} {says}); the other processes were stopped"),
            );
        }
    }
    failure
}

/// The exit codes the processes of a launch left in its folder ([`note_exit_code`]): (process id,
/// code, rank when it was known).
fn noted_exit_codes(ready_dir: &Path) -> Vec<(u32, i32, Option<u32>)> {
    let Ok(entries) = std::fs::read_dir(ready_dir) else {
        return Vec::new();
    };
    let mut noted: Vec<_> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid = entry.file_name().to_str()?.strip_prefix("exit-")?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let mut fields = text.split_whitespace();
            let code = fields.next()?.parse().ok()?;
            Some((pid, code, fields.next().and_then(|r| r.parse().ok())))
        })
        .collect();
    noted.sort_unstable();
    noted
}

/// The processes (address spaces) that have not marked themselves started yet.
fn not_ready(np: u32, ready_dir: &Path) -> Vec<u32> {
    (0..np).filter(|i| !ready_dir.join(format!("ready-{i}")).exists()).collect()
}

/// The process id that address space `rank` wrote when it started ([`mark_ready`]).
fn rank_pid(ready_dir: &Path, rank: u32) -> Option<nix::unistd::Pid> {
    let text = std::fs::read_to_string(ready_dir.join(format!("ready-{rank}"))).ok()?;
    text.trim().parse().ok().map(nix::unistd::Pid::from_raw)
}

/// Kills the launched processes: the children, and the ranks `mpirun` started (their process
/// ids are in the ready files), which would outlive a killed `mpirun`.
fn kill_all(children: &mut [Named], np: u32, ready_dir: &Path) {
    for rank in 0..np {
        if let Some(pid) = rank_pid(ready_dir, rank) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    for (_, child) in children {
        let _ = child.kill();
    }
}

/// Writes `ami2 run --summary`: the run's totals, where its tasks ran (processes, and kinds of
/// processor) and what the mapper of the driver's process measured.
pub fn write_summary(path: &Path, summary: &ami_tasks::RunSummary, seconds: f64) -> Result<()> {
    let mapper = legion_bridge::mapper::stats();
    let doc = serde_json::json!({
        "events": summary.events,
        "rounds": summary.rounds,
        "batch_size": summary.batch_size,
        "batch_sizes": summary.rounds_by_batch_size.keys().collect::<Vec<_>>(),
        "rounds_by_batch_size": summary.rounds_by_batch_size,
        "bins_emitted": summary.bins_emitted,
        "late_partials": summary.late_partials,
        "bins_dropped_early": summary.bins_dropped_early,
        "graph_version": summary.graph_version,
        "graph_failures": summary.graph_failures,
        "incidents_total": summary.incidents_total,
        "seconds": seconds,
        "ran_on": summary.ran_on,
        "processors": summary.processors,
        "task_cpu_ns": { "source": summary.task_cpu.source_ns, "worker": summary.task_cpu.worker_ns },
        "process_cpu_ns": summary.process_cpu_ns,
        "placement_installed": legion_bridge::mapper::is_installed(),
        "mapper": {
            "placed_tasks": mapper.placed_tasks,
            "placed_calls": mapper.placed_calls,
            "placed_nanos": mapper.placed_nanos,
            "policy_calls": mapper.policy_calls,
            "policy_nanos": mapper.policy_nanos,
            "rejected": mapper.rejected,
        },
    });
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))
}
