//! `ami2 cron install | uninstall | line`: sets up the watchdog a system cron job runs every
//! minute (`scripts/cron/ami2-watchdog`, embedded in the binary). `install` writes, into the data
//! directory, the watchdog script and its configuration (this executable, the data directory, the
//! address and the `ami2 run` arguments), then the cron entry: a file in `--cron-dir`, or in
//! `/etc/cron.d` when it exists, else a line in the user's crontab.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

/// The watchdog script.
const WATCHDOG: &str = include_str!("../scripts/cron/ami2-watchdog");

#[derive(Subcommand)]
pub enum CronCommand {
    /// Install the watchdog for a service: script, configuration and cron entry.
    Install(InstallArgs),
    /// Remove the cron entry of a service's watchdog.
    Uninstall(TargetArgs),
    /// Print the crontab line of a service's watchdog.
    Line(TargetArgs),
}

#[derive(Args)]
pub struct TargetArgs {
    /// The service's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Folder of system cron entries (cron.d format); default: /etc/cron.d when it exists, else
    /// the user's crontab.
    #[arg(long)]
    cron_dir: Option<PathBuf>,
}

/// The system cron folder used when `--cron-dir` is not given and it exists.
const SYSTEM_CRON_DIR: &str = "/etc/cron.d";

impl TargetArgs {
    /// The cron.d folder to use, `None` for the user's crontab. A `--cron-dir` that is not a
    /// folder is refused: falling back to the crontab would put the entry where nobody looks.
    fn cron_d(&self) -> Result<Option<PathBuf>> {
        match &self.cron_dir {
            Some(dir) if dir.is_dir() => Ok(Some(dir.clone())),
            Some(dir) => Err(crate::refused(anyhow::anyhow!("--cron-dir {} is not a folder", dir.display()))),
            None => Ok(Some(PathBuf::from(SYSTEM_CRON_DIR)).filter(|d| d.is_dir())),
        }
    }
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Address the service listens on (and the watchdog checks).
    #[arg(long, default_value = protocol1::DEFAULT_ADDR)]
    listen: String,
    /// Seconds without a pipeline report before the watchdog restarts the service.
    #[arg(long, default_value_t = 60)]
    max_quiet: u64,
    /// Command prefix of a multi-process job, e.g. `mpirun -np 3` (restarted as a whole).
    #[arg(long)]
    launch: Option<String>,
    /// `ami2 run` arguments (after `--`).
    #[arg(last = true)]
    run_args: Vec<String>,
}

pub fn cron(command: CronCommand) -> Result<()> {
    match command {
        CronCommand::Install(args) => install(args),
        CronCommand::Uninstall(target) => uninstall(&target),
        CronCommand::Line(target) => {
            println!("{}", crontab_line(&absolute(&target.data_dir)?));
            Ok(())
        }
    }
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))
}

/// Single-quotes `text` for bash.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn quoted_array(items: &[String]) -> String {
    format!("({})", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" "))
}

/// The line that marks this service's entry (to find it again for `uninstall`).
fn crontab_line(data_dir: &Path) -> String {
    let script = data_dir.join("ami2-watchdog");
    let config = data_dir.join("watchdog.conf");
    format!(
        "* * * * * {} {} # ami2 watchdog",
        quote(&script.to_string_lossy()),
        quote(&config.to_string_lossy())
    )
}

/// Name of the cron.d file for a data directory (cron.d names allow letters, digits, - and _).
fn cron_file(cron_d: &Path, data_dir: &Path) -> PathBuf {
    let name: String = data_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    cron_d.join(format!("ami2{name}"))
}

fn install(args: InstallArgs) -> Result<()> {
    let cron_d = args.target.cron_d()?;
    let data_dir = absolute(&args.target.data_dir)?;
    let exe = std::env::current_exe().context("finding the ami2 executable")?;
    let script = data_dir.join("ami2-watchdog");
    std::fs::write(&script, WATCHDOG).with_context(|| format!("writing {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let launch: Vec<String> = args
        .launch
        .as_deref()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let config = data_dir.join("watchdog.conf");
    let text = format!(
        "# ami2 watchdog configuration (written by `ami2 cron install`)\nAMI2_BIN={}\nAMI2_DATA_DIR={}\nAMI2_ADDR={}\nAMI2_MAX_QUIET={}\nAMI2_RUN_ARGS={}\nAMI2_LAUNCH={}\n",
        quote(&exe.to_string_lossy()),
        quote(&data_dir.to_string_lossy()),
        quote(&args.listen),
        args.max_quiet,
        quoted_array(&args.run_args),
        quoted_array(&launch),
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    println!("wrote {} and {}", script.display(), config.display());

    let line = crontab_line(&data_dir);
    if let Some(cron_d) = cron_d {
        let file = cron_file(&cron_d, &data_dir);
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let (schedule, command) = line.split_at(10);
        let entry = format!("# ami2 watchdog for {}\n{schedule}{user} {command}\n", data_dir.display());
        std::fs::write(&file, entry).with_context(|| format!("writing {}", file.display()))?;
        println!("installed {}", file.display());
        return Ok(());
    }
    let current = read_crontab()?;
    if current.lines().any(|l| l == line) {
        println!("the crontab already runs it");
        return Ok(());
    }
    write_crontab(&format!("{current}{line}\n"))?;
    println!("added to the crontab: {line}");
    Ok(())
}

fn uninstall(target: &TargetArgs) -> Result<()> {
    let data_dir = absolute(&target.data_dir)?;
    let cron_d = target.cron_d()?;
    if let Some(file) = cron_d.as_deref().map(|dir| cron_file(dir, &data_dir)).filter(|f| f.exists()) {
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        println!("removed {}", file.display());
        return Ok(());
    }
    let line = crontab_line(&data_dir);
    let current = read_crontab()?;
    if !current.lines().any(|l| l == line) {
        let places = match &cron_d {
            Some(dir) => format!("{} or the crontab", dir.display()),
            None => "the crontab".to_string(),
        };
        bail!("no watchdog entry for {} in {places}", data_dir.display());
    }
    let kept: String = current.lines().filter(|l| *l != line).map(|l| format!("{l}\n")).collect();
    write_crontab(&kept)?;
    println!("removed from the crontab: {line}");
    Ok(())
}

fn read_crontab() -> Result<String> {
    let out = Command::new("crontab")
        .arg("-l")
        .output()
        .context("running `crontab -l` (no cron.d folder and no crontab command: install cron)")?;
    // `crontab -l` fails when the user has no crontab yet.
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    })
}

fn write_crontab(text: &str) -> Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .context("running `crontab -`")?;
    child.stdin.take().context("crontab's input")?.write_all(text.as_bytes())?;
    if !child.wait()?.success() {
        bail!("`crontab -` refused the new table");
    }
    Ok(())
}
