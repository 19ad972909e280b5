//! The graph versions a service keeps (the last `RETAINED_GRAPH_VERSIONS` in Control), read by
//! clients: `ami2 graph history`, `show --version` and `revert`. Nothing here is a server command:
//! the documents are Control keys any client may read, and a revert is an ordinary request.

use anyhow::{bail, Result};
use client_lib::BlockingClient;
use serde_json::{Map, Value};

/// Graph `version` as clients sent it, or as installed at start; `None` once no longer kept.
fn kept_graph(client: &BlockingClient, version: u64) -> Result<Option<Value>> {
    match client.get_key(&ami_tasks::graph_manager::edited_graph_key(version))? {
        Some(graph) => Ok(Some(graph)),
        None => Ok(client.get_key(&ami_tasks::stores::graph_key(version))?),
    }
}

/// [`kept_graph`], or an error saying why there is none.
pub fn kept_graph_or_why(client: &BlockingClient, version: u64) -> Result<Value> {
    // Documents above the current version are of a version that was not accepted (its writing
    // failed and a restart found part of it): never shown as a version.
    let current = client
        .get_key(ami_tasks::stores::GRAPH_VERSION_KEY)?
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if version > current {
        bail!("graph version {version} is not made yet: the current one is {current}");
    }
    if let Some(graph) = kept_graph(client, version)? {
        return Ok(graph);
    }
    bail!(
        "graph version {version} is not kept: the service keeps the last {} (`ami2 graph history`)",
        ami_tasks::graph_manager::RETAINED_GRAPH_VERSIONS
    )
}

/// One line per kept version, newest first, e.g. `version 4 (current): results e_chart,
/// trace_peaks; 9 nodes; made 2026-11-27T05:12:44Z by ami2-cli/0.1.0 at 127.0.0.1:40312; same
/// graph as version 2`.
pub fn print_history(count: u64, client: &BlockingClient) -> Result<()> {
    let (current, _) = client.graph()?;
    let builtin = client.get_key(ami_tasks::stores::BUILTIN_GRAPH_KEY)?.and_then(|v| v.as_u64());
    let mut listed = Vec::new();
    for version in (1..=current).rev().take(count as usize) {
        let Some(graph) = kept_graph(client, version)? else { break };
        let failure = client.get_key(&ami_tasks::stores::bad_graph_key(version))?;
        let made = client.get_key(&ami_tasks::graph_manager::made_graph_key(version))?;
        listed.push((version, graph, failure, made));
    }
    for (k, (version, graph, failure, made)) in listed.iter().enumerate() {
        let mut line = format!("version {version}");
        let marks: Vec<&str> = [(*version == current, "current"), (Some(*version) == builtin, "built-in")]
            .into_iter()
            .filter_map(|(yes, mark)| yes.then_some(mark))
            .collect();
        if !marks.is_empty() {
            line += &format!(" ({})", marks.join(", "));
        }
        let nodes = graph["nodes"].as_array().map_or(0, Vec::len);
        line += &format!(": results {}; {nodes} nodes", result_names(graph).join(", "));
        if let Some(made) = made {
            line += &format!("; {}", made_by(made));
        }
        if let Some((older, ..)) = listed[k + 1..].iter().find(|(_, other, ..)| same_graph(other, graph)) {
            line += &format!("; same graph as version {older}");
        }
        if let Some(failure) = failure {
            let message = failure["message"].as_str().unwrap_or("(no message)");
            line += &format!("; failed at run time, reverted by the workers: {message}");
        }
        outln!("{line}");
    }
    if listed.len() < count as usize && listed.len() < current as usize {
        eprintln!(
            "older versions are no longer kept (the service keeps the last {})",
            ami_tasks::graph_manager::RETAINED_GRAPH_VERSIONS
        );
    }
    Ok(())
}

/// The names of the results a graph document publishes.
pub fn result_names(graph: &Value) -> Vec<String> {
    graph["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// `made 2026-11-27T05:12:44Z by ami2-cli/0.1.0 at 127.0.0.1:40312` from a version's
/// `{"at_unix_ms", "by"}` document (versions made before it was kept have none).
fn made_by(made: &Value) -> String {
    let at = made["at_unix_ms"]
        .as_u64()
        .map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string());
    let by = made["by"].as_str().unwrap_or("someone");
    format!("made {} by {by}", at.as_deref().unwrap_or("at an unknown time"))
}

/// Whether two graph documents describe the same graph: the same results, and the same nodes in
/// any order (a node's params absent or empty alike).
fn same_graph(a: &Value, b: &Value) -> bool {
    let canonical = |doc: &Value| {
        let mut spec: ami_tasks::graph::GraphSpec = serde_json::from_value(doc.clone()).ok()?;
        spec.nodes.sort_by(|x, y| x.id.cmp(&y.id));
        for node in &mut spec.nodes {
            if node.params.as_object().is_some_and(Map::is_empty) {
                node.params = Value::Null;
            }
        }
        Some(spec)
    };
    canonical(a).is_some_and(|spec| Some(spec) == canonical(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_graph_whatever_the_node_order_and_empty_params() {
        let a = json!({"nodes": [{"id": "e", "op": "select", "params": {"field": "energy", "kind": "scalar"}},
                                 {"id": "c", "op": "strip_chart", "inputs": ["e"], "params": {}}],
                       "results": ["c"]});
        let b = json!({"nodes": [{"id": "c", "op": "strip_chart", "inputs": ["e"]},
                                 {"id": "e", "op": "select", "params": {"field": "energy", "kind": "scalar"}, "inputs": []}],
                       "results": ["c"]});
        assert!(same_graph(&a, &b));
        let mut other_param = b.clone();
        other_param["nodes"][1]["params"]["field"] = json!("scan");
        assert!(!same_graph(&a, &other_param));
        let mut other_results = b.clone();
        other_results["results"] = json!(["e", "c"]);
        assert!(!same_graph(&a, &other_results));
        // Not a graph: never the same as anything.
        assert!(!same_graph(&json!({"nodes": 3}), &json!({"nodes": 3})));
    }
}
