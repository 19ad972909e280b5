//! Fault injection for tests: make a chosen component panic, fail, hang or exit at a chosen
//! invocation, through the `AMI2_FAULT` environment variable (read once per process, so every
//! rank of a multi-process job sees the same rules).
//!
//! Syntax: comma-separated rules `COMPONENT:ACTION@N[xTIMES]`.
//! - `COMPONENT`: a component label (`source/1`, `worker/0`, `global_reducer`, `monitor`, ...) or
//!   its kind alone (`worker` matches every worker);
//! - `ACTION`: `panic`, `error`, `hang` (never returns) or `exit` (ends the process with code 86,
//!   like a crash);
//! - `N`: the invocation (1-based, counted per rule in this process) that fails, or `Ns`: the
//!   first invocation at least N seconds after the process read the rules (its start);
//! - `TIMES`: how many consecutive attempts of that invocation fail (default 1; more than the
//!   retry policy allows makes the failure escalate).
//!
//! Example: `AMI2_FAULT=worker/1:panic@5,source:hang@4s`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Name of the environment variable holding the rules.
pub const FAULT_VAR: &str = "AMI2_FAULT";

/// Exit code of an injected `exit`.
pub const INJECTED_EXIT_CODE: i32 = 86;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    Panic,
    Error,
    Hang,
    Exit,
}

/// When a rule strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultWhen {
    /// At this invocation (1-based).
    Invocation(u64),
    /// At the first invocation this long after the rules were read.
    After(Duration),
}

#[derive(Debug)]
pub struct FaultRule {
    pub component: String,
    pub action: FaultAction,
    pub when: FaultWhen,
    pub times: u32,
    seen: AtomicU64,
    /// The invocation that was struck (0: none yet).
    struck: AtomicU64,
}

impl FaultRule {
    fn matches(&self, label: &str) -> bool {
        label == self.component || label.split('/').next() == Some(self.component.as_str())
    }
}

/// Parses the rules of `text` (the `AMI2_FAULT` syntax).
pub fn parse_rules(text: &str) -> Result<Vec<FaultRule>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|rule| !rule.is_empty())
        .map(|rule| {
            let bad = || format!("fault rule {rule:?} is not COMPONENT:ACTION@N[xTIMES]");
            let (component, rest) = rule.split_once(':').ok_or_else(bad)?;
            let (action, when) = rest.split_once('@').ok_or_else(bad)?;
            let action = match action {
                "panic" => FaultAction::Panic,
                "error" => FaultAction::Error,
                "hang" => FaultAction::Hang,
                "exit" => FaultAction::Exit,
                _ => return Err(format!("fault rule {rule:?}: action must be panic, error, hang or exit")),
            };
            let (at, times) = match when.split_once('x') {
                Some((n, times)) => (n, times.parse().map_err(|_| bad())?),
                None => (when, 1),
            };
            let when = match at.strip_suffix('s') {
                Some(seconds) => FaultWhen::After(Duration::from_secs_f64(
                    seconds.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).ok_or_else(bad)?,
                )),
                None => FaultWhen::Invocation(at.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?),
            };
            if component.is_empty() {
                return Err(bad());
            }
            Ok(FaultRule {
                component: component.to_string(),
                action,
                when,
                times,
                seen: AtomicU64::new(0),
                struck: AtomicU64::new(0),
            })
        })
        .collect()
}

/// When the rules were read (what `Ns` counts from).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn rules() -> &'static [FaultRule] {
    static RULES: OnceLock<Vec<FaultRule>> = OnceLock::new();
    epoch();
    RULES.get_or_init(|| match std::env::var(FAULT_VAR) {
        Ok(text) => parse_rules(&text).unwrap_or_else(|error| {
            tracing::error!("{FAULT_VAR} ignored: {error}");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    })
}

/// Called by every robust task at the start of each attempt (`attempt` 0 is a new invocation).
/// Returns the injected error, panics, hangs or exits as the rules say; `Ok` otherwise.
pub fn inject(label: &str, attempt: u32) -> Result<(), String> {
    for rule in rules().iter().filter(|rule| rule.matches(label)) {
        let invocation = if attempt == 0 {
            rule.seen.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            rule.seen.load(Ordering::SeqCst)
        };
        let due = match rule.when {
            FaultWhen::Invocation(n) => invocation == n,
            FaultWhen::After(delay) => {
                let struck = rule.struck.load(Ordering::SeqCst);
                struck == invocation
                    || (struck == 0
                        && epoch().elapsed() >= delay
                        && rule
                            .struck
                            .compare_exchange(0, invocation, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok())
            }
        };
        if !due || attempt >= rule.times {
            continue;
        }
        let what = format!(
            "injected fault: {label} {:?} at invocation {invocation}, attempt {}",
            rule.action,
            attempt + 1
        );
        tracing::warn!(component = label, "{what}");
        match rule.action {
            FaultAction::Panic => panic!("{what}"),
            FaultAction::Error => return Err(what),
            FaultAction::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            FaultAction::Exit => std::process::exit(INJECTED_EXIT_CODE),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let rules = parse_rules("worker/1:panic@5, source:hang@40x2, monitor:exit@2.5s").unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            (rules[0].action, rules[0].when, rules[0].times),
            (FaultAction::Panic, FaultWhen::Invocation(5), 1)
        );
        assert!(rules[0].matches("worker/1") && !rules[0].matches("worker/0"));
        assert_eq!(
            (rules[1].action, rules[1].when, rules[1].times),
            (FaultAction::Hang, FaultWhen::Invocation(40), 2)
        );
        assert_eq!(rules[2].when, FaultWhen::After(Duration::from_millis(2500)));
        assert!(rules[1].matches("source/0") && rules[1].matches("source/7") && !rules[1].matches("sources"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule() {
        for bad in [
            "worker",
            "worker:explode@1",
            "worker:panic@0",
            "worker:panic@x",
            ":panic@1",
            "worker:panic@2xq",
            "worker:panic@-1s",
        ] {
            let error = parse_rules(bad).unwrap_err();
            assert!(error.contains(bad.split(',').next().unwrap()), "{error}");
        }
    }
}
