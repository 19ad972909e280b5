//! `ami2 run --supervise`: keeps the service running. The supervisor starts `ami2 run` (the same
//! arguments, without `--supervise`) as a child process and starts it again whenever it ends
//! abnormally: killed, crashed, or ended by a robustness monitor that found a stalled component
//! (exit code 75). The child resumes from the data directory. Restarts back off from 250 ms to
//! 10 s while the child keeps dying young; a child that ran for a minute resets the backoff. A
//! child that refused its arguments (exit code 2) or cannot load its data directory (65) is not
//! restarted: it would fail the same way again; the supervisor ends with the child's code.

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
    let child_args = with_fixed_port(child_args)?;
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
            // The supervisor ends with the child's code, so that what started it (the cron
            // watchdog) can tell these from a crash too.
            Some(crate::USAGE_EXIT_CODE) => {
                return Err(crate::refused(anyhow::anyhow!("the service refused its arguments; not restarting")))
            }
            Some(crate::STORE_EXIT_CODE) => {
                return Err(crate::unloadable(anyhow::anyhow!(
                    "the service cannot load its data directory (see its error for how to recover); not restarting"
                )))
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

/// `args` with a `--listen` address on port 0 (any free port) replaced by one free port, chosen
/// once: every child then listens where the first one did, so clients reconnect after a restart.
fn with_fixed_port(mut args: Vec<String>) -> Result<Vec<String>> {
    let options = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let value_at = (0..options).find_map(|i| match args[i].as_str() {
        "--listen" => Some(i + 1).filter(|&v| v < options),
        a if a.starts_with("--listen=") => Some(i),
        _ => None,
    });
    let Some(at) = value_at else { return Ok(args) };
    let given = args[at].trim_start_matches("--listen=");
    // An address that does not parse is the child's to refuse.
    let Ok(addr) = given.parse::<std::net::SocketAddr>() else {
        return Ok(args);
    };
    if addr.port() != 0 {
        return Ok(args);
    }
    let chosen = std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .with_context(|| format!("finding a free port on {}", addr.ip()))?;
    tracing::info!("--listen {addr}: the service listens on {chosen} across restarts");
    args[at] = if args[at].starts_with("--listen=") {
        format!("--listen={chosen}")
    } else {
        chosen.to_string()
    };
    Ok(args)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn port_of(addr: &str) -> u16 {
        addr.trim_start_matches("--listen=").parse::<std::net::SocketAddr>().unwrap().port()
    }

    #[test]
    fn port_0_becomes_one_free_port_for_every_restart() {
        let fixed = with_fixed_port(args(&["run", "--listen", "127.0.0.1:0", "--", "-ll:cpu", "1"])).unwrap();
        assert_eq!(fixed.len(), 6);
        assert_ne!(port_of(&fixed[2]), 0);
        assert_eq!(fixed[3..], args(&["--", "-ll:cpu", "1"]));
        let fixed = with_fixed_port(args(&["run", "--listen=127.0.0.1:0"])).unwrap();
        assert!(fixed[1].starts_with("--listen=127.0.0.1:") && port_of(&fixed[1]) != 0, "{fixed:?}");
        // A given port, no --listen, garbage (the child refuses it) and Legion's arguments stay.
        for kept in [
            args(&["run", "--listen", "127.0.0.1:7999"]),
            args(&["run", "--frames", "10"]),
            args(&["run", "--listen", "garbage"]),
            args(&["run", "--", "--listen", "127.0.0.1:0"]),
            args(&["run", "--listen"]),
        ] {
            assert_eq!(with_fixed_port(kept.clone()).unwrap(), kept);
        }
    }
}
