//! A test runner for code that needs the real runtime, which starts once per process: a test
//! binary (`harness = false`) lists its cases, and [`run`] starts Legion once and runs them one
//! after the other inside the top-level task, reporting in libtest's format (so `cargo test`
//! output and CI summaries read the same). It understands the libtest flags cargo and nextest
//! pass: name filters, `--exact`, `--list`, `--ignored`.

use std::process::ExitCode;
use std::time::Instant;

use crate::task::{TaskContext, TaskError};
use crate::{panic, runtime};

type Body = Box<dyn FnOnce(&TaskContext) -> Result<(), TaskError> + Send>;

/// One named test that runs inside the top-level task.
pub struct Case {
    name: &'static str,
    body: Body,
}

/// A test case: `body` fails by returning an error or panicking.
pub fn case(name: &'static str, body: impl FnOnce(&TaskContext) -> Result<(), TaskError> + Send + 'static) -> Case {
    Case {
        name,
        body: Box::new(body),
    }
}

/// Fails a case with `what` unless `condition` holds.
pub fn check(condition: bool, what: impl std::fmt::Display) -> Result<(), TaskError> {
    if condition {
        Ok(())
    } else {
        Err(TaskError::msg(what))
    }
}

/// The value after `--name` on the command line (benchmarks' knobs), or `default`.
pub fn option(name: &str, default: usize) -> usize {
    option_text(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The text after `--name` on the command line, if it is there.
pub fn option_text(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// Which cases the command line selects.
struct Selection {
    filters: Vec<String>,
    exact: bool,
    list: bool,
    ignored_only: bool,
}

impl Selection {
    fn from_args() -> Self {
        let mut selection = Self {
            filters: Vec::new(),
            exact: false,
            list: false,
            ignored_only: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => selection.exact = true,
                "--list" => selection.list = true,
                "--ignored" => selection.ignored_only = true,
                // Flags with a value that this runner has no use for.
                "--format" | "--test-threads" | "--color" | "--logfile" | "--skip" => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                filter => selection.filters.push(filter.to_string()),
            }
        }
        selection
    }
    fn wants(&self, name: &str) -> bool {
        !self.ignored_only
            && (self.filters.is_empty()
                || self
                    .filters
                    .iter()
                    .any(|f| if self.exact { f == name } else { name.contains(f.as_str()) }))
    }
}

/// Runs the selected cases in one Legion runtime started with `legion_args` (completed by the
/// machine's defaults). Returns failure if any case failed or the runtime could not start.
pub fn run(legion_args: &[String], cases: Vec<Case>) -> ExitCode {
    let selection = Selection::from_args();
    if selection.list {
        for case in &cases {
            println!("{}: test", case.name);
        }
        return ExitCode::SUCCESS;
    }
    let total = cases.len();
    let selected: Vec<Case> = cases.into_iter().filter(|c| selection.wants(c.name)).collect();
    let filtered_out = total - selected.len();
    let ran = selected.len();
    println!("\nrunning {} tests", selected.len());
    if selected.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in 0.00s\n");
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let outcome = runtime::start(legion_args, move |ctx| {
        let mut failures = Vec::new();
        for case in selected.into_iter() {
            let result = match panic::catch(|| (case.body)(ctx)) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(message) => Err(format!("panicked: {message}")),
            };
            match result {
                Ok(()) => println!("test {} ... ok", case.name),
                Err(message) => {
                    println!("test {} ... FAILED", case.name);
                    failures.push((case.name, message));
                }
            }
        }
        Ok(failures)
    });
    let secs = started.elapsed().as_secs_f64();
    let failures = match outcome {
        Ok(failures) => failures,
        Err(error) => {
            println!("\nthe runtime did not run the tests: {error}");
            return ExitCode::FAILURE;
        }
    };
    let failed = failures.len();
    if !failures.is_empty() {
        println!("\nfailures:");
        for (name, message) in &failures {
            println!("\n---- {name} ----\n{message}");
        }
        println!("\nfailures:");
        for (name, _) in &failures {
            println!("    {name}");
        }
    }
    let passed = ran - failed;
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in {secs:.2}s\n");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
