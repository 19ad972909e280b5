//! Client subcommands (`graph`, `watch`, `get`, `status`), built on `client-lib`'s blocking API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use client_lib::{Answer, BlockingClient, ClientOptions, Event};
use protocol1::{Edit, ErrorCode, NodeDoc, Role};
use serde_json::{Map, Value};

use crate::graph_versions;
use crate::table::LiveTable;

/// Refuses an address that is not `HOST:PORT` (a port of 1 to 65535), so that a typo is named
/// as such instead of reported as a service that does not answer.
fn check_address(addr: &str) -> Result<()> {
    let port = addr.rsplit_once(':').and_then(|(host, port)| {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        (!host.is_empty()).then(|| port.parse::<u16>().ok().filter(|&p| p > 0)).flatten()
    });
    if port.is_none() {
        anyhow::bail!(
            "--connect (or AMI2_ADDR) {addr:?} is not an address: give HOST:PORT, e.g. {}",
            protocol1::DEFAULT_ADDR
        );
    }
    Ok(())
}

/// Where the service is.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The service's address.
    #[arg(long, env = "AMI2_ADDR", default_value = protocol1::DEFAULT_ADDR)]
    connect: String,
    /// File holding the service's access token.
    #[arg(long, env = "AMI2_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl ConnectArgs {
    fn client(&self, role: Role) -> Result<BlockingClient> {
        check_address(&self.connect).map_err(crate::refused)?;
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let options = ClientOptions {
            name: format!("ami2-cli/{}", env!("CARGO_PKG_VERSION")),
            role,
            token,
            reconnect: role == Role::Subscriber,
            ..ClientOptions::default()
        };
        BlockingClient::connect(&self.connect, options).map_err(|err| match err {
            // The service answered, and refused: its reason is the whole story.
            client_lib::ClientError::Connect {
                source: protocol1::ProtocolError::Handshake { .. },
                ..
            } => anyhow::Error::new(err),
            err => anyhow::Error::new(err).context("is the service running (`ami2 run`)?"),
        })
    }
}

#[derive(Subcommand)]
pub enum GraphCommand {
    /// Replace the graph by the one in FILE (JSON, docs/graph.md).
    Submit {
        /// The graph document (JSON).
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print the current graph (JSON) and its version (on stderr).
    Show {
        /// An earlier version instead, as it was sent (`ami2 graph history` lists those kept).
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Edit the graph. Edits apply in this order: --remove, --add-node, --set-param,
    /// --connect-inputs, then --results. Retried on a conflict (up to 3 times).
    Edit(EditArgs),
    /// List the graph versions the service keeps, newest first: results, size, when and by whom
    /// each was made, and whether it failed at run time or is the same graph as an older one.
    History {
        /// How many versions to list (the service keeps the last 64).
        #[arg(long, default_value_t = 10)]
        count: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Make the graph of an earlier VERSION current again (as a new version). Retried on a
    /// conflict (up to 3 times).
    Revert {
        /// The version to make current again (`ami2 graph history` lists those kept).
        version: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Args)]
pub struct EditArgs {
    /// Remove a node: `--remove NODE`.
    #[arg(long, value_name = "NODE")]
    remove: Vec<String>,
    /// Add a node given as JSON: `--add-node '{"id": "m", "op": "mean", "inputs": ["roi"]}'`.
    #[arg(long, value_name = "JSON")]
    add_node: Vec<String>,
    /// Set one parameter: `--set-param NODE.KEY=VALUE` (VALUE is JSON, or else a string).
    #[arg(long, value_name = "NODE.KEY=VALUE")]
    set_param: Vec<String>,
    /// Replace a node's inputs: `--connect-inputs NODE=IN1,IN2`.
    #[arg(long, value_name = "NODE=INPUTS")]
    connect_inputs: Vec<String>,
    /// Replace the list of results: `--results A,B`.
    #[arg(long, value_delimiter = ',')]
    results: Option<Vec<String>>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Result names to follow (default: every result of the graph, as it changes).
    results: Vec<String>,
    /// Stop after this many bins (of all results; with --table, rows).
    #[arg(long)]
    count: Option<u64>,
    /// A live table for people (a row per time bin, a column per result, arrays as sparklines)
    /// instead of JSON lines.
    #[arg(long)]
    table: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Args)]
pub struct GetArgs {
    /// A key of the Control or Results store, e.g. /control/graph/version.
    key: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Health check (for watchdogs): print one line and exit with status 1 unless the service
    /// answers and its pipeline reported within this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = crate::seconds_arg)]
    check: Option<f64>,
}

pub fn graph(command: GraphCommand) -> Result<()> {
    match command {
        GraphCommand::Submit { file, connect } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let graph: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let client = connect.client(Role::Editor)?;
            report(client.submit_graph(&graph)?)
        }
        GraphCommand::Show { version, connect } => {
            let client = connect.client(Role::Subscriber)?;
            let (version, graph) = match version {
                None => client.graph()?,
                Some(version) => (version, graph_versions::kept_graph_or_why(&client, version)?),
            };
            eprintln!("graph version {version}");
            outln!("{}", serde_json::to_string_pretty(&graph)?);
            Ok(())
        }
        GraphCommand::Edit(args) => edit(args),
        GraphCommand::History { count, connect } => graph_versions::print_history(count, &connect.client(Role::Subscriber)?),
        GraphCommand::Revert { version, connect } => {
            let client = connect.client(Role::Editor)?;
            if version == client.graph()?.0 {
                bail!("graph version {version} is the current one (`ami2 graph history`)");
            }
            let graph = graph_versions::kept_graph_or_why(&client, version)?;
            retried_on_conflict(|| Ok(client.submit_graph(&graph)?))
        }
    }
}

/// Sends what `attempt` sends again when every reason of its rejection is a conflict (another
/// editor changed the graph in between), up to 3 times; prints the answer.
fn retried_on_conflict(mut attempt: impl FnMut() -> Result<Answer>) -> Result<()> {
    for tries in 1.. {
        let answer = attempt()?;
        let conflict = matches!(&answer, Answer::Rejected(r) if r.reasons.iter().all(|x| x.code == ErrorCode::Conflict));
        if conflict && tries < 3 {
            // Said, so that an editor knows another one's change came first (and may be undone).
            if let Answer::Rejected(r) = &answer {
                eprintln!(
                    "ami2 graph: another client changed the graph first (now version {}); sending again on it",
                    r.version
                );
            }
            continue;
        }
        return report(answer);
    }
    unreachable!("the loop returns")
}

/// Prints the answer; a rejection is an error (exit status 1) listing every reason the answer
/// lists, and how many more there were.
fn report(answer: Answer) -> Result<()> {
    match answer {
        Answer::Accepted(a) => {
            outln!("accepted, version {}", a.version);
            Ok(())
        }
        Answer::Rejected(r) => {
            let mut reasons: Vec<String> = r
                .reasons
                .iter()
                .map(|reason| match &reason.node {
                    Some(node) => format!("  {} (node {node}): {}", reason.code, reason.message),
                    None => format!("  {}: {}", reason.code, reason.message),
                })
                .collect();
            // The service lists at most protocol1::MAX_LISTED_REASONS.
            if r.unlisted() > 0 {
                reasons.push(format!("  and {} more", r.unlisted()));
            }
            bail!("rejected (graph at version {}):\n{}", r.version, reasons.join("\n"))
        }
    }
}

fn edit(args: EditArgs) -> Result<()> {
    if args.remove.is_empty()
        && args.add_node.is_empty()
        && args.set_param.is_empty()
        && args.connect_inputs.is_empty()
        && args.results.is_none()
    {
        bail!("nothing to do: give --remove, --add-node, --set-param, --connect-inputs or --results");
    }
    let client = args.connect.client(Role::Editor)?;
    retried_on_conflict(|| {
        let (version, graph) = client.graph()?;
        let edits = edits(&args, &graph)?;
        Ok(client.request(version, edits, args.results.clone())?)
    })
}

/// The edits of `args` against `graph` (needed for --set-param, which changes one key of the
/// node's current params).
fn edits(args: &EditArgs, graph: &Value) -> Result<Vec<Edit>> {
    let mut edits: Vec<Edit> = args.remove.iter().map(|id| Edit::RemoveNode { id: id.clone() }).collect();
    for text in &args.add_node {
        let node: NodeDoc = serde_json::from_str(text).with_context(|| format!("--add-node {text}: not a node"))?;
        edits.push(Edit::AddNode { node });
    }
    let mut params: Vec<(String, Map<String, Value>)> = Vec::new();
    for setting in &args.set_param {
        let (path, value) = setting
            .split_once('=')
            .with_context(|| format!("--set-param {setting}: expected NODE.KEY=VALUE"))?;
        let (node, key) = path
            .rsplit_once('.')
            .with_context(|| format!("--set-param {setting}: expected NODE.KEY=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        let index = match params.iter().position(|(n, _)| n == node) {
            Some(i) => i,
            None => {
                let current = graph["nodes"]
                    .as_array()
                    .and_then(|nodes| nodes.iter().find(|n| n["id"] == node))
                    .and_then(|n| n["params"].as_object().cloned())
                    .unwrap_or_default();
                params.push((node.to_string(), current));
                params.len() - 1
            }
        };
        params[index].1.insert(key.to_string(), value);
    }
    edits.extend(params.into_iter().map(|(id, p)| Edit::SetParams {
        id,
        params: Value::Object(p),
    }));
    for setting in &args.connect_inputs {
        let (id, inputs) = setting
            .split_once('=')
            .with_context(|| format!("--connect-inputs {setting}: expected NODE=IN1,IN2"))?;
        edits.push(Edit::ConnectInputs {
            id: id.to_string(),
            inputs: inputs.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        });
    }
    Ok(edits)
}

/// Prints each bin as a JSON line, or with `--table` a row per time bin; notices (dropped bins,
/// reconnects) go to stderr.
pub fn watch(args: WatchArgs) -> Result<()> {
    if args.results.iter().any(|name| name.is_empty()) {
        return Err(crate::refused(anyhow::anyhow!(
            "a result name is empty: name results as the graph's result nodes (`ami2 graph show`)"
        )));
    }
    let mut client = args.connect.client(Role::Subscriber)?;
    // With no names, follow the graph the workers run: its results now, and those of each new
    // version (or of the version they revert to when one fails at run time).
    let mut followed = None;
    let names = if args.results.is_empty() {
        let graph = GraphInEffect::ask(&client)?;
        if graph.running == Some(graph.current) && graph.names.is_empty() {
            bail!("graph version {} publishes no results: name the results to follow", graph.current);
        }
        eprintln!("ami2 watch: {}", graph.describe());
        let names = graph.names.clone();
        followed = Some(FollowedGraph {
            graph,
            checked: Instant::now(),
        });
        names
    } else {
        // Names the graph does not publish are followed all the same (a graph that will), but
        // said, so that a typo does not look like a service that publishes nothing.
        if let Ok(graph) = GraphInEffect::ask(&client) {
            let unknown: Vec<&str> = args
                .results
                .iter()
                .filter(|n| !graph.names.contains(n))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                eprintln!(
                    "ami2 watch: not results of the graph in effect (version {}: {}): {}; waiting for them",
                    graph.running.unwrap_or(graph.current),
                    graph.names.join(", "),
                    unknown.join(", ")
                );
            }
        }
        args.results.clone()
    };
    subscribe(&client, &names)?;
    let mut rows = args.table.then(|| TableRows::new(&names));
    let mut seen = 0;
    // Bins said to be too large, not yet matched with the `dropped` count that includes them.
    let mut too_large = 0;
    while args.count.is_none_or(|n| seen < n) {
        if let Some(graph) = followed.as_mut().and_then(|graph| graph.changed(&client)) {
            eprintln!("ami2 watch: {}", graph.describe());
            let names = graph.names;
            client.unsubscribe(None)?;
            subscribe(&client, &names)?;
            if let Some(rows) = &mut rows {
                for line in rows.follow(&names) {
                    outln!("{line}");
                }
            }
        }
        match client.next_event(GRAPH_CHECK_INTERVAL) {
            Ok(Some(Event::Bin(bin))) => match &mut rows {
                Some(rows) => {
                    for line in rows.add(bin) {
                        if args.count.is_some_and(|n| seen >= n) {
                            break;
                        }
                        outln!("{line}");
                        seen += u64::from(!line.starts_with('\n'));
                    }
                }
                None => {
                    outln!("{}", serde_json::to_string(&bin)?);
                    seen += 1;
                }
            },
            Ok(Some(Event::TooLarge(t))) => {
                too_large += t.count;
                eprintln!(
                    "ami2 watch: {} bins of `{}` not sent: a bin takes {} bytes, more than a message may ({}); \
                     make the result smaller (fewer histogram bins, a smaller region)",
                    t.count, t.result, t.bytes, t.max
                );
            }
            Ok(Some(Event::Dropped(n))) => {
                // Those too large were said above; the others were dropped for a slow reader.
                let slow = n.saturating_sub(std::mem::take(&mut too_large));
                if slow > 0 {
                    eprintln!("ami2 watch: {slow} bins dropped (too slow)");
                }
            }
            Ok(Some(Event::Reconnected)) => eprintln!("ami2 watch: reconnected"),
            Ok(None) => bail!("the connection to the service was lost"),
            Err(client_lib::ClientError::Timeout(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

fn subscribe(client: &BlockingClient, names: &[String]) -> Result<()> {
    if !names.is_empty() {
        client.subscribe(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

/// How often `ami2 watch` without names asks whether the graph changed.
const GRAPH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The graph `ami2 watch` without names follows: the graph it knows, and when it last asked.
struct FollowedGraph {
    graph: GraphInEffect,
    checked: Instant,
}

impl FollowedGraph {
    /// The graph in effect now, when it changed since it was last asked (at most once per
    /// [`GRAPH_CHECK_INTERVAL`]).
    fn changed(&mut self, client: &BlockingClient) -> Option<GraphInEffect> {
        if self.checked.elapsed() < GRAPH_CHECK_INTERVAL {
            return None;
        }
        self.checked = Instant::now();
        // While the service restarts the question may fail: the next check asks again.
        let graph = GraphInEffect::ask(client)
            .map_err(|err| tracing::debug!("asking for the graph: {err:#}"))
            .ok()?;
        let changed = (graph.current, graph.running) != (self.graph.current, self.graph.running);
        changed.then(|| {
            self.graph = graph.clone();
            graph
        })
    }
}

/// The graph whose results are published: the current version, unless it failed at run time,
/// then the version the workers reverted to (its own failure followed in turn), or none.
#[derive(Clone, Debug)]
struct GraphInEffect {
    current: u64,
    /// `None` when no graph works on the events (none is published).
    running: Option<u64>,
    /// The results of `running`.
    names: Vec<String>,
}

impl GraphInEffect {
    fn ask(client: &BlockingClient) -> Result<GraphInEffect> {
        let (current, graph) = client.graph()?;
        // The service follows the failure marks (`graph_running` of its status). A version
        // newer than the status it came with has not failed yet.
        let status = client.status()?;
        let running = if status["graph_version"] == current {
            status["graph_running"].as_u64()
        } else {
            Some(current)
        };
        let names = match running {
            Some(version) if version == current => graph_versions::result_names(&graph),
            Some(version) => graph_versions::result_names(&graph_versions::kept_graph_or_why(client, version)?),
            None => Vec::new(),
        };
        Ok(GraphInEffect { current, running, names })
    }

    /// What `ami2 watch` says when it starts following this graph.
    fn describe(&self) -> String {
        match self.running {
            Some(version) if version == self.current => {
                format!("the results of graph version {version}: {}", self.names.join(", "))
            }
            Some(version) => format!(
                "graph version {} failed at run time (`ami2 graph history`); the workers run version {version}: {}",
                self.current,
                self.names.join(", ")
            ),
            None => format!(
                "graph version {} failed at run time and no earlier graph works: nothing is published until a graph that works is sent",
                self.current
            ),
        }
    }
}

/// Bins a live table has not printed yet, by bin: the results of one bin arrive one by one.
struct TableRows {
    table: LiveTable,
    /// The results a row has when all have come.
    names: BTreeSet<String>,
    pending: BTreeMap<u64, PendingRow>,
}

/// A bin's results so far.
struct PendingRow {
    t: f64,
    events: u64,
    graph_version: u64,
    values: BTreeMap<String, Value>,
}

/// Bins a row waits for a result that may never come (a graph without it): then it is printed
/// with what it has.
const ROW_WAIT_BINS: u64 = 20;

impl TableRows {
    fn new(names: &[String]) -> Self {
        TableRows {
            table: LiveTable::for_stdout(),
            names: names.iter().cloned().collect(),
            pending: BTreeMap::new(),
        }
    }

    /// Adds a bin of one result; returns the lines of the rows now complete, oldest first. Bins
    /// of results no longer followed (still on their way when the graph changed) are left out.
    fn add(&mut self, bin: protocol1::results::Bin) -> Vec<String> {
        if !self.names.contains(&bin.result) {
            return Vec::new();
        }
        let row = self.pending.entry(bin.bin).or_insert_with(|| PendingRow {
            t: bin.t_ns as f64 / 1e9,
            events: bin.events,
            graph_version: bin.graph_version,
            values: BTreeMap::new(),
        });
        row.values.insert(bin.result, bin.value);
        let newest = *self.pending.keys().next_back().expect("just added");
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(&b, row)| row.values.len() >= self.names.len() || b + ROW_WAIT_BINS <= newest)
            .map(|(&b, _)| b)
            .collect();
        self.print(ready)
    }

    /// Follows `names` from now on; returns the lines of the rows still pending, printed with
    /// what they have, so that they do not come after the new results' header.
    fn follow(&mut self, names: &[String]) -> Vec<String> {
        self.names = names.iter().cloned().collect();
        let pending: Vec<u64> = self.pending.keys().copied().collect();
        self.print(pending)
    }

    fn print(&mut self, bins: Vec<u64>) -> Vec<String> {
        let mut lines = Vec::new();
        for b in bins {
            let row = self.pending.remove(&b).expect("pending");
            lines.extend(self.table.lines(b, row.t, row.events, row.graph_version, &row.values));
        }
        lines
    }
}

pub fn get(args: GetArgs) -> Result<()> {
    let key = padded_result_key(&args.key);
    match args.connect.client(Role::Subscriber)?.get_key(&key)? {
        Some(value) => {
            outln!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        None => bail!("no key {key}"),
    }
}

/// `/results/NAME/BIN` with the bin number as the store writes it (12 digits), so that
/// `/results/energy_hist/186` finds bin 186; any other key as it is.
fn padded_result_key(key: &str) -> String {
    let bin = key.strip_prefix("/results/").and_then(|rest| rest.rsplit_once('/'));
    match bin {
        Some((name, bin)) if !name.is_empty() && !bin.is_empty() && bin.len() < 12 && bin.bytes().all(|b| b.is_ascii_digit()) => bin
            .parse()
            .map_or_else(|_| key.to_string(), |bin| ami_tasks::stores::result_key(name, bin)),
        _ => key.to_string(),
    }
}

pub fn status(args: StatusArgs) -> Result<()> {
    let status = args.connect.client(Role::Subscriber)?.status()?;
    let Some(max_quiet) = args.check else {
        outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    };
    let health: ami_tasks::health::HealthSnapshot =
        serde_json::from_value(status["health"].clone()).context("the status answer has no heartbeats")?;
    match health.quiet_ms() {
        Some(quiet) if quiet as f64 <= max_quiet * 1000.0 => {
            // A failed graph is not a reason to restart (a restart would fail the same way),
            // but it is said.
            let current = &status["graph_version"];
            let graph = match &status["graph_running"] {
                running if running == current => format!("graph version {current}"),
                Value::Null => format!("graph version {current} failed at run time and no graph works: events are not analysed"),
                running => format!("graph version {current} failed at run time; the workers run version {running}"),
            };
            outln!("healthy: last pipeline report {quiet} ms ago, {graph}");
            Ok(())
        }
        Some(quiet) => bail!("unhealthy: the pipeline has been quiet for {quiet} ms"),
        None => bail!("unhealthy: the pipeline has not started"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_key_gets_its_bin_number_padded() {
        assert_eq!(padded_result_key("/results/energy_hist/186"), "/results/energy_hist/000000000186");
        assert_eq!(padded_result_key("/results/a/b/7"), "/results/a/b/000000000007");
        for kept in [
            "/results/energy_hist/000000000186",
            "/results/energy_hist/x1",
            "/results/7",
            "/control/graph/7",
            "/results//7",
        ] {
            assert_eq!(padded_result_key(kept), kept);
        }
    }

    fn bin(result: &str, bin: u64) -> protocol1::Bin {
        protocol1::Bin {
            result: result.into(),
            bin,
            t_ns: bin * 50_000_000,
            graph_version: 1,
            events: 10,
            value: serde_json::json!({"count": 10, "mean": bin as f64}),
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// The bin numbers of the rows among `lines` (headers start with a newline).
    fn rows(lines: &[String]) -> Vec<u64> {
        lines
            .iter()
            .filter(|l| !l.starts_with('\n'))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_table_row_waits_for_every_result_of_its_bin() {
        let mut table = TableRows::new(&names(&["a", "b"]));
        assert!(table.add(bin("a", 5)).is_empty());
        assert!(table.add(bin("a", 6)).is_empty());
        // Bin 5 is complete: a header, then its row.
        let lines = table.add(bin("b", 5));
        assert_eq!((lines.len(), rows(&lines)), (2, vec![5]));
        assert!(lines[0].contains("events") && lines[1].contains("5.0000"), "{lines:?}");
        assert_eq!(rows(&table.add(bin("b", 6))), vec![6]);
    }

    #[test]
    fn a_row_missing_a_result_is_printed_once_it_is_far_behind() {
        let mut table = TableRows::new(&names(&["a", "b"]));
        table.add(bin("a", 1));
        // `b` never comes for bin 1 (a graph without it): the row goes out 20 bins later.
        for b in 2..21 {
            assert!(rows(&table.add(bin("a", b))).is_empty(), "bin {b}");
        }
        assert_eq!(rows(&table.add(bin("a", 21))), vec![1]);
    }

    #[test]
    fn a_new_graph_prints_the_pending_rows_and_leaves_out_the_old_results() {
        let mut table = TableRows::new(&names(&["a", "b"]));
        table.add(bin("a", 3));
        // The graph now publishes `c`: bin 3's row goes out with what it has.
        assert_eq!(rows(&table.follow(&names(&["c"]))), vec![3]);
        // A bin of `a` still on its way is left out; `c` makes rows of its own.
        assert!(table.add(bin("a", 4)).is_empty());
        let lines = table.add(bin("c", 4));
        assert_eq!(rows(&lines), vec![4]);
        assert!(lines[0].contains("events") && lines[0].trim_end().ends_with('c'), "{lines:?}");
    }
}
