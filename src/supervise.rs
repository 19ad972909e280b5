//! `ami2 run --supervise`: keeps the service running. The supervisor starts `ami2 run` (the same
//! arguments, without `--supervise`) as a child process and starts it again whenever it ends
//! abnormally: killed, crashed, or ended by a robustness monitor that found a stalled component
//! (exit code 75). The child resumes from the data directory. Restarts back off from 250 ms to
//! 10 s while the child keeps dying young; a child that ran for a minute resets the backoff. A
//! child that refused its arguments (exit code 2) or cannot load its data directory (65) is not
//! restarted: it would fail the same way again.

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Environment variable telling a restarted child why it was restarted (recorded as an incident).
pub const RESTART_REASON_VAR: &str = "AMI2_RESTART_REASON";

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Runs the supervisor with the child's arguments (`run ...` without `--supervise`).
pub fn supervise(child_args: Vec<String>) -> Result<()> {
    let exe = std::env::current_exe().context("finding the ami2 executable")?;
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = stopping.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the signal handler")?;
    let mut backoff = FIRST_BACKOFF;
    let mut restarts = 0u64;
    let mut reason: Option<String> = None;
    loop {
        let mut command = Command::new(&exe);
        command.args(&child_args);
        if let Some(reason) = &reason {
            command.env(RESTART_REASON_VAR, reason);
            // Injected faults (tests) strike the first child only: a restart clears them.
            command.env_remove(ami_tasks::fault::FAULT_VAR);
        }
        let started = Instant::now();
        let mut child = command.spawn().with_context(|| format!("starting {}", exe.display()))?;
        tracing::info!(pid = child.id(), restarts, "service started");
        let status = wait_forwarding_stop(&mut child, &stopping)?;
        if stopping.load(Ordering::SeqCst) {
            tracing::info!("service stopped ({status})");
            return Ok(());
        }
        match status.code() {
            Some(0) => return Ok(()),
            Some(crate::USAGE_EXIT_CODE) => anyhow::bail!("the service refused its arguments; not restarting"),
            Some(crate::STORE_EXIT_CODE) => {
                anyhow::bail!("the service cannot load its data directory (see its error for how to recover); not restarting")
            }
            _ => {}
        }
        let why = describe(&status);
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = FIRST_BACKOFF;
        }
        restarts += 1;
        eprintln!("ami2 supervisor: service {why}; restart {restarts} in {} ms", backoff.as_millis());
        tracing::warn!(restarts, "service {why}; restarting in {} ms", backoff.as_millis());
        reason = Some(format!("restarted by the supervisor after the service {why} (restart {restarts})"));
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

/// Waits for the child; on Ctrl-C or SIGTERM to the supervisor, passes SIGINT on to the child
/// (which stops cleanly, saving its stores) and waits for it.
fn wait_forwarding_stop(child: &mut Child, stopping: &AtomicBool) -> Result<ExitStatus> {
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the service")? {
            return Ok(status);
        }
        if stopping.load(Ordering::SeqCst) && !forwarded {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(ami_tasks::monitor::RESTART_EXIT_CODE), _) => "was ended by a robustness monitor (a component stalled)".into(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}
