//! The three stores as the pipeline lays them out: telemetry buffers per partition, the control
//! segments (with one segment per data source for its volatile state), and the results.

use std::collections::BTreeSet;
use std::path::Path;

use kv_region::{KeyValueStore, LoadStats, StoreConfig};
use legion_bridge::TaskContext;
use serde::{Deserialize, Serialize};

use crate::graph::MAX_GRAPH_BYTES;
use crate::graph_manager::RETAINED_GRAPH_VERSIONS;
use crate::placement;
use crate::PipelineError;
use ami_mapper::StoreKind;

/// Key of the current graph version in the control store.
pub const GRAPH_VERSION_KEY: &str = kv_region::typed::GRAPH_VERSION_KEY;

/// Prefix of telemetry buffer `buffer` of partition `partition`.
pub fn buffer_prefix(partition: usize, buffer: usize) -> String {
    format!("/telemetry/partition/{partition}/buffer/{buffer}/")
}

/// Key of a chunk of frames starting at `first_seq` in a telemetry buffer.
pub fn chunk_key(partition: usize, buffer: usize, first_seq: u64) -> String {
    format!("{}chunk/{first_seq:012}", buffer_prefix(partition, buffer))
}

/// Prefix of the control segment holding data source `partition`'s state.
pub fn source_prefix(partition: usize) -> String {
    format!("/component/source/{partition}/")
}

/// Key of data source `partition`'s saved position.
pub fn source_state_key(partition: usize) -> String {
    format!("{}state", source_prefix(partition))
}

/// The partition of a key made by [`source_state_key`]; `None` for any other key.
pub fn parse_source_state_key(key: &str) -> Option<usize> {
    let partition = key.strip_prefix("/component/source/")?.strip_suffix("/state")?;
    partition.parse().ok().filter(|&p| source_state_key(p) == key)
}

/// Name of the Control store, and of its folder in a data directory.
pub const CONTROL_DIR: &str = CONTROL;

const CONTROL: &str = "control";

/// The partitions whose data source segment of Control has files in `data_dir` (a run with more
/// partitions left some behind), so that Control gets their segments too and the driver finds
/// their positions.
pub fn saved_source_partitions(data_dir: &Path) -> Result<BTreeSet<usize>, PipelineError> {
    let folder = data_dir.join(CONTROL);
    let io = |source| kv_region::KvError::Io {
        path: folder.clone(),
        source,
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(error) => return Err(io(error).into()),
    };
    let mut partitions = BTreeSet::new();
    for entry in entries {
        let name = entry.map_err(io)?.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|name| [".snap.prev", ".snap", ".log"].iter().find_map(|ext| name.strip_suffix(ext)))
        else {
            continue;
        };
        // Stems are `component_source_<p>-<hash>` (kv_region::persist::file_stem).
        let partition = stem
            .strip_prefix("component_source_")
            .and_then(|rest| rest.split('-').next()?.parse().ok())
            .filter(|&p| kv_region::persist::file_stem(&source_prefix(p)) == stem);
        partitions.extend(partition);
    }
    Ok(partitions)
}

/// Key of graph document `version`.
pub fn graph_key(version: u64) -> String {
    kv_region::ControlStore::graph_key(version)
}

/// Prefix of the marks of graph versions that failed at run time.
pub const BAD_GRAPH_PREFIX: &str = "/control/graph/bad/";

/// Key marking graph `version` as failed.
pub fn bad_graph_key(version: u64) -> String {
    format!("{BAD_GRAPH_PREFIX}{version:012}")
}

/// Key of the version of the graph the service installed itself (the built-in graph, fitted to the
/// source's frames). A start without a graph fits it again to the frames of the day; a graph a
/// client sent (a later version) is kept.
pub const BUILTIN_GRAPH_KEY: &str = "/control/graph/builtin";

/// Key of a result value for one time bin.
pub fn result_key(name: &str, bin: u64) -> String {
    format!("/results/{name}/{bin:012}")
}

/// The result name and bin of a key made by [`result_key`]; `None` for any other key.
pub fn parse_result_key(key: &str) -> Option<(&str, u64)> {
    let (name, bin) = key.strip_prefix("/results/")?.rsplit_once('/')?;
    let bin = bin.parse().ok().filter(|_| !name.is_empty() && bin.len() >= 12)?;
    Some((name, bin))
}

/// Most keys of Control's `/control/` segment (the kept versions take 4 each).
pub const CONTROL_SEGMENT_KEYS: usize = 4096;

/// Most bytes of the `by` of a version's when-and-by-whom document (a client names itself freely
/// in its `hello`): longer ones are cut, so that the documents of the kept versions fit
/// [`control_segment_bytes`].
pub const MAX_MADE_BY_BYTES: usize = 256;

/// Data bytes of Control's `/control/` segment. It holds the graph versions the graph manager keeps
/// ([`RETAINED_GRAPH_VERSIONS`], plus the one written before the oldest is deleted), each as two
/// graph documents of at most [`MAX_GRAPH_BYTES`] and a when-and-by-whom document; twice that,
/// since a value needs consecutive points and versions of different sizes leave gaps; and 1 MiB
/// for the other keys (the version, failure marks, a partition change). About 34 MiB.
pub fn control_segment_bytes() -> usize {
    let slots = |bytes: usize| bytes.div_ceil(kv_region::SLOT_BYTES) * kv_region::SLOT_BYTES;
    // Keys are about 35 bytes; a `by` of MAX_MADE_BY_BYTES is at most 6 times longer escaped.
    let graph = slots(64 + MAX_GRAPH_BYTES);
    let made = slots(64 + 64 + 6 * MAX_MADE_BY_BYTES);
    let versions = RETAINED_GRAPH_VERSIONS as usize + 1;
    2 * versions * (2 * graph + made) + (1 << 20)
}

/// How big the stores are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreSizes {
    pub partitions: usize,
    /// Telemetry buffers per partition (a source fills one while workers read the others).
    pub buffers: usize,
    /// Most frames in one buffer (the batch size).
    pub frames_per_buffer: usize,
    /// Largest encoded frame.
    pub max_frame_bytes: usize,
    /// Largest stored chunk of frames.
    pub chunk_bytes: usize,
    /// Result values kept (results × retained bins).
    pub result_keys: usize,
}

/// The pipeline's stores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stores {
    pub telemetry: KeyValueStore,
    pub control: KeyValueStore,
    pub results: KeyValueStore,
}

impl Stores {
    /// Creates the three stores; with a data directory, Control and Results are rebuilt from it
    /// (telemetry buffers are transient and start empty). Control has a data source segment for
    /// each partition, and for each partition beyond whose segment the data directory holds
    /// ([`saved_source_partitions`]).
    pub fn create(ctx: &TaskContext, sizes: &StoreSizes, data_dir: Option<&Path>) -> Result<(Self, Vec<LoadStats>), PipelineError> {
        let buffer_bytes = sizes.frames_per_buffer * (sizes.max_frame_bytes + 64) + sizes.chunk_bytes + 4096;
        let mut telemetry = StoreConfig::new("telemetry").max_value_bytes(sizes.chunk_bytes.max(sizes.max_frame_bytes + 1024));
        for p in 0..sizes.partitions {
            for b in 0..sizes.buffers {
                telemetry = telemetry.segment(&buffer_prefix(p, b), sizes.frames_per_buffer + 4, buffer_bytes);
            }
        }
        let mut control = StoreConfig::new(CONTROL)
            .segment("/control/", CONTROL_SEGMENT_KEYS, control_segment_bytes())
            .segment("/component/", 1024, 1 << 20)
            .segment("/incident/", 4096, 4 << 20)
            .logged();
        let saved = match data_dir {
            Some(dir) => saved_source_partitions(dir)?,
            None => BTreeSet::new(),
        };
        for p in (0..sizes.partitions).chain(saved.into_iter().filter(|&p| p >= sizes.partitions)) {
            control = control.segment(&source_prefix(p), 16, 64 * 1024);
        }
        let results = StoreConfig::new("results")
            .segment("/results/", sizes.result_keys + 64, (sizes.result_keys + 64) * 4096)
            .max_value_bytes(1 << 20);
        // Mapping tags: each segment's tasks run where its partition (or the service) lives.
        let telemetry = placement::tag_store(telemetry, StoreKind::Telemetry);
        let control = placement::tag_store(control, StoreKind::Control);
        let results = placement::tag_store(results, StoreKind::Results);
        let (telemetry, _) = KeyValueStore::create(ctx, &telemetry, None)?;
        let (control, mut stats) = KeyValueStore::create(ctx, &control, data_dir)?;
        let (results, result_stats) = KeyValueStore::create(ctx, &results, data_dir)?;
        stats.extend(result_stats);
        Ok((
            Self {
                telemetry,
                control,
                results,
            },
            stats,
        ))
    }

    /// Gives the three stores' memory back to the runtime (see [`KeyValueStore::destroy`]).
    pub fn destroy(self, ctx: &TaskContext) {
        for store in [self.telemetry, self.control, self.results] {
            store.destroy(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_state_keys_name_their_partition() {
        assert_eq!(parse_source_state_key(&source_state_key(12)), Some(12));
        for other in [
            "/component/source/12/",
            "/component/source/x/state",
            "/component/source/012/state",
            "/control/graph/version",
        ] {
            assert_eq!(parse_source_state_key(other), None, "{other}");
        }
    }

    #[test]
    fn the_source_segments_a_data_directory_holds_are_found_by_their_files() {
        let dir = std::env::temp_dir().join(format!("ami2-stores-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(saved_source_partitions(&dir).unwrap().is_empty(), "no data directory yet");
        let control = dir.join(CONTROL);
        std::fs::create_dir_all(&control).unwrap();
        let files = |prefix: &str| kv_region::persist::SegmentFiles::new(&control, prefix);
        std::fs::write(files(&source_prefix(0)).log, b"").unwrap();
        std::fs::write(files(&source_prefix(3)).snapshot, b"").unwrap();
        std::fs::write(files(&source_prefix(11)).previous, b"").unwrap();
        // Neither another segment's files nor a name that only looks like a source segment's.
        std::fs::write(files("/component/").log, b"").unwrap();
        std::fs::write(control.join("component_source_5-00000000.log"), b"").unwrap();
        assert_eq!(saved_source_partitions(&dir).unwrap(), BTreeSet::from([0, 3, 11]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
