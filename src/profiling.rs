//! Legion Prof and Legion Spy: the Legion flags that make a run write their logs
//! (`run --profile DIR`, `run --spy DIR`), and `ami2 prof DIR` / `ami2 spy DIR`, which turn the
//! logs into something a person can open. See docs/debugging.md.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

/// The `legion_prof` release that reads this Legion's profiles (format version 1008).
pub const LEGION_PROF_VERSION: &str = "0.2506.0";

/// `run`/`demo` options that turn on Legion's debugging logs.
#[derive(Args, Clone, Debug, Default)]
pub struct ToolArgs {
    /// Write Legion Prof logs (`prof_<rank>.gz`) to DIR; read them with `ami2 prof DIR`.
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Write Legion Spy logs (`spy_<rank>.log`) to DIR; draw them with `ami2 spy DIR`.
    #[arg(long, value_name = "DIR")]
    pub spy: Option<PathBuf>,
}

/// The Legion flags that write profiling logs to `profile` and Legion Spy logs to `spy` for a job
/// of `ranks` processes, one file per rank (Legion replaces `%` in a log file name by the rank).
/// Creates the folders; the paths are absolute so that every rank writes to the same place
/// whatever its working folder. `ami2 launch` passes the same flags to every rank. Logs an
/// earlier run left for ranks this run does not have are removed (Legion overwrites the others),
/// so that `ami2 prof DIR` and `ami2 spy DIR` read this run's logs only.
///
/// Legion Spy's log goes through Realm's `-logfile`, so Realm's own messages land in the spy log
/// too; `user_args` (the Legion arguments the user gave) must not set `-logfile` then.
pub fn legion_flags(profile: Option<&Path>, spy: Option<&Path>, ranks: usize, user_args: &[String]) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    if let Some(dir) = profile {
        let dir = prepare(dir, "prof_", ".gz", ranks)?;
        flags.extend([
            "-lg:prof".to_string(),
            ranks.max(1).to_string(),
            "-lg:prof_logfile".to_string(),
            dir.join("prof_%.gz").display().to_string(),
        ]);
    }
    if let Some(dir) = spy {
        if user_args.iter().any(|a| a == "-logfile") {
            return Err(crate::refused(anyhow::anyhow!(
                "--spy writes Legion Spy's log through -logfile; remove -logfile from the Legion arguments"
            )));
        }
        let dir = prepare(dir, "spy_", ".log", ranks)?;
        flags.extend([
            "-lg:spy".to_string(),
            "-logfile".to_string(),
            dir.join("spy_%.log").display().to_string(),
        ]);
    }
    Ok(flags)
}

/// Creates `dir`, removes the logs `prefix<rank>suffix` in it of ranks `ranks` and above (an
/// earlier run's, with more processes), and returns it as an absolute path.
fn prepare(dir: &Path, prefix: &str, suffix: &str, ranks: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for stale in files(dir, prefix, suffix)? {
        let rank = stale
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(prefix)?.strip_suffix(suffix)?.parse::<usize>().ok());
        if rank.is_some_and(|rank| rank >= ranks.max(1)) {
            match std::fs::remove_file(&stale) {
                Ok(()) => tracing::info!("removed {}, an earlier run's log", stale.display()),
                // Every rank of a launch does this: another may have removed it first.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).with_context(|| format!("removing the earlier run's {}", stale.display())),
            }
        }
    }
    std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// The files `prefix*suffix` in `dir`, sorted.
fn files(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    Ok(found)
}

#[derive(Args)]
pub struct ProfArgs {
    /// The folder a `--profile DIR` run wrote its logs to; the outputs are written there too.
    dir: PathBuf,
    /// Also write legion_prof's archive (`DIR/archive`, for Legion Prof's web viewer); needs a
    /// legion_prof built with its `archiver` feature.
    #[arg(long)]
    archive: bool,
}

/// Where `legion_prof` is: `$AMI2_LEGION_PROF`, then `PATH`, then the folder `scripts/setup`
/// installs it to (`$AMI2_TOOLS_DIR/bin`, by default `~/.cache/ami2/tools/bin`).
pub fn find_legion_prof() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AMI2_LEGION_PROF") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("legion_prof"))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let tools = match std::env::var_os("AMI2_TOOLS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/ami2/tools"),
        };
        let cached = tools.join("bin/legion_prof");
        cached.is_file().then_some(cached)
    })
}

/// `ami2 prof DIR`: statistics (text) and a trace (JSON for Perfetto / chrome://tracing) of the
/// profile in DIR, and optionally legion_prof's archive.
pub fn prof(args: ProfArgs) -> Result<()> {
    let logs = files(&args.dir, "prof_", ".gz")?;
    if logs.is_empty() {
        bail!(
            "no profile logs (prof_*.gz) in {}; run with `--profile {}` first",
            args.dir.display(),
            args.dir.display()
        );
    }
    let Some(tool) = find_legion_prof() else {
        bail!(
            "legion_prof not found (looked at $AMI2_LEGION_PROF, PATH and ~/.cache/ami2/tools/bin or \
             $AMI2_TOOLS_DIR/bin). Install the \
             release that reads this Legion's profiles:\n  cargo install legion_prof --version {LEGION_PROF_VERSION} \
             --locked --no-default-features --root ~/.cache/ami2/tools\n(scripts/setup does this)"
        );
    };
    let version = output(Command::new(&tool).arg("--version"))?;
    if !version.contains(LEGION_PROF_VERSION) {
        tracing::warn!(
            component = "prof",
            "{} is {}; this Legion's profiles need legion_prof {LEGION_PROF_VERSION}",
            tool.display(),
            version.trim()
        );
    }
    let statistics = args.dir.join("statistics.txt");
    let text = output(Command::new(&tool).arg("statistics").args(&logs))?;
    std::fs::write(&statistics, text).with_context(|| format!("writing {}", statistics.display()))?;
    println!("statistics: {}", statistics.display());

    let trace = args.dir.join("trace.json");
    output(Command::new(&tool).args(["trace", "--force", "-o"]).arg(&trace).args(&logs))?;
    println!(
        "trace:      {} (open it in https://ui.perfetto.dev or chrome://tracing)",
        trace.display()
    );
    if args.archive {
        let archive = args.dir.join("archive");
        output(Command::new(&tool).args(["archive", "--force", "-o"]).arg(&archive).args(&logs))
            .context("legion_prof archive failed: it needs a legion_prof built with --features archiver (see docs/debugging.md)")?;
        println!(
            "archive:    {} (serve the folder over HTTP and open it with Legion Prof's web viewer)",
            archive.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct SpyArgs {
    /// The folder a `--spy DIR` run wrote its logs to; the graphs are written there too.
    dir: PathBuf,
    /// Options for legion_spy.py (after `--`); default `-dez`: dataflow and event graphs, with
    /// detail.
    #[arg(last = true)]
    options: Vec<String>,
}

/// `legion_spy.py` of the Legion distribution: `$AMI2_LEGION_SPY`, or the one the build found.
pub fn find_legion_spy() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AMI2_LEGION_SPY") {
        return Some(PathBuf::from(path));
    }
    let built = Path::new(legion_sys::SPY_SCRIPT);
    (!legion_sys::SPY_SCRIPT.is_empty() && built.is_file()).then(|| built.to_path_buf())
}

/// `ami2 spy DIR`: runs legion_spy.py over the spy logs in DIR, which draws the dataflow and
/// event graphs as PDFs in DIR (through graphviz's `dot`).
pub fn spy(args: SpyArgs) -> Result<()> {
    let logs = files(&args.dir, "spy_", ".log")?;
    if logs.is_empty() {
        bail!(
            "no Legion Spy logs (spy_*.log) in {}; run with `--spy {}` first",
            args.dir.display(),
            args.dir.display()
        );
    }
    let Some(script) = find_legion_spy() else {
        bail!(
            "legion_spy.py not found: the Legion distribution at {} has none; set AMI2_LEGION_SPY to the \
             legion_spy.py of your Legion checkout (tools/legion_spy.py)",
            legion_sys::DIST_ROOT
        );
    };
    if Command::new("dot").arg("-V").output().is_err() {
        bail!("graphviz's `dot` is not installed (Legion Spy draws its graphs with it): apt-get install graphviz");
    }
    // Whole seconds: some file systems keep coarse modification times.
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let options: Vec<OsString> = if args.options.is_empty() {
        vec!["-dez".into()]
    } else {
        args.options.iter().map(OsString::from).collect()
    };
    // legion_spy.py writes its graphs into its working folder.
    let file_names: Vec<&std::ffi::OsStr> = logs.iter().filter_map(|p| p.file_name()).collect();
    let log = output(
        Command::new("python3")
            .arg(&script)
            .args(&options)
            .args(&file_names)
            .current_dir(&args.dir),
    )?;
    let log_file = args.dir.join("legion_spy.txt");
    std::fs::write(&log_file, &log).with_context(|| format!("writing {}", log_file.display()))?;
    let drawn: Vec<PathBuf> = files(&args.dir, "", ".pdf")?
        .into_iter()
        .filter(|p| std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t >= started))
        .collect();
    if drawn.is_empty() && args.options.is_empty() {
        // Its own options may ask for checks only; the default ones must draw.
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARNING") || l.contains("No matches")).collect();
        bail!(
            "legion_spy.py drew no graphs from the logs in {} (are they Legion Spy logs of a finished run?): {}; its output is in {}",
            args.dir.display(),
            if warnings.is_empty() {
                "no warning".to_string()
            } else {
                warnings.join("; ")
            },
            log_file.display()
        );
    }
    println!("legion_spy.py output: {}", log_file.display());
    if drawn.is_empty() {
        println!("legion_spy.py drew no graphs (see its output)");
    }
    for graph in drawn {
        println!("graph: {}", graph.display());
    }
    Ok(())
}

/// Runs `command` and returns its standard output; a failure carries its standard error.
fn output(command: &mut Command) -> Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_one_log_per_rank_in_absolute_folders() {
        let base = std::env::temp_dir().join(format!("ami2-flags-{}", std::process::id()));
        let profile = base.join("prof");
        let spy = base.join("spy");
        let flags = legion_flags(Some(&profile), Some(&spy), 3, &[]).unwrap();
        assert_eq!(flags[..2], ["-lg:prof", "3"]);
        assert_eq!(flags[2], "-lg:prof_logfile");
        assert_eq!(Path::new(&flags[3]), profile.join("prof_%.gz"));
        assert_eq!(flags[4..6], ["-lg:spy", "-logfile"]);
        assert_eq!(Path::new(&flags[6]), spy.join("spy_%.log"));
        assert!(profile.is_dir() && spy.is_dir());
        assert!(legion_flags(None, None, 1, &[]).unwrap().is_empty());
        let taken = legion_flags(None, Some(&spy), 1, &["-logfile".into(), "x".into()]);
        assert!(taken.unwrap_err().to_string().contains("-logfile"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn logs_of_ranks_an_earlier_run_had_and_this_one_has_not_are_removed() {
        let dir = std::env::temp_dir().join(format!("ami2-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["prof_0.gz", "prof_1.gz", "prof_12.gz", "prof_x.gz", "spy_1.log", "stats.txt"];
        for name in names {
            std::fs::write(dir.join(name), b"earlier").unwrap();
        }
        legion_flags(Some(&dir), None, 1, &[]).unwrap();
        let left = |name: &str| dir.join(name).exists();
        // Rank 0's log is overwritten by the run; what is not a profile log stays.
        assert!(left("prof_0.gz") && left("prof_x.gz") && left("spy_1.log") && left("stats.txt"));
        assert!(
            !left("prof_1.gz") && !left("prof_12.gz"),
            "an earlier run's logs of ranks 1 and 12 are left"
        );
        legion_flags(None, Some(&dir), 2, &[]).unwrap();
        assert!(left("spy_1.log"), "a 2-process run writes spy_1.log itself");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
