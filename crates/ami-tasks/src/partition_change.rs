//! A start on a data directory whose data sources saved their positions with another partition
//! count: the driver converts the positions before the first round
//! ([`convert_saved_positions`]), so that no frame is lost or analysed twice (how:
//! [`crate::source::resume`]).
//!
//! Each data source saves [`source_state_doc`] under [`source_state_key`]; its `partitions` is the
//! count the position belongs to. States saved before it existed have none: their count is taken
//! to be the highest partition with a saved state plus one (right unless the count had already
//! been changed on that data directory by a version that did not convert positions).
//!
//! Control has a segment for every data source whose state the data directory holds, also beyond
//! the new count ([`crate::stores::saved_source_partitions`]), so those positions are read; once
//! converted, those states are removed, so that a later change is computed from this count's
//! positions only; their segments' files go at the run's normal end
//! ([`remove_retired_source_files`]).
//!
//! The conversion writes several Control segments (one per data source). Against a crash in the
//! middle, the new positions are first written under [`CONVERSION_KEY`] in one logged operation,
//! and that key is removed once every segment has its position and the old states are gone: a
//! start that finds it finishes that conversion (converting its positions once more when the
//! count changed again). Without it, new partitions whose state was not written yet would start
//! from their stream's beginning.

use std::collections::BTreeMap;
use std::path::Path;

use kv_region::persist::SegmentFiles;
use kv_region::Op;
use legion_bridge::TaskContext;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::robust::{Incident, IncidentKind};
use crate::source::resume::convert_positions;
use crate::source::{SourcePosition, SourceStats};
use crate::stores::{parse_source_state_key, saved_source_partitions, source_prefix, source_state_key, Stores, CONTROL_DIR};
use crate::PipelineError;

/// Where a conversion's positions wait until every data source's segment has its own.
pub const CONVERSION_KEY: &str = "/control/source/conversion";

/// A conversion of the sources' positions to `partitions` partitions, as it waits under
/// [`CONVERSION_KEY`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Conversion {
    /// The count the sources last ran with.
    pub from: usize,
    pub partitions: usize,
    /// One per partition of `partitions`.
    pub positions: Vec<SourcePosition>,
}

/// What a data source saves in its Control segment each round: its position, counters, whether
/// it has ended, and the partition count the position belongs to.
pub fn source_state_doc(position: &SourcePosition, stats: &SourceStats, ended: bool, partitions: usize) -> Value {
    json!({"position": position, "stats": stats, "ended": ended, "partitions": partitions})
}

/// A data source's saved state, as far as the driver needs it.
#[derive(Debug, Default)]
struct SavedState {
    partitions: Option<usize>,
    position: Option<SourcePosition>,
}

impl SavedState {
    fn parse(doc: &Value) -> Self {
        SavedState {
            partitions: doc["partitions"].as_u64().map(|n| n as usize),
            position: serde_json::from_value(doc["position"].clone()).ok(),
        }
    }
}

/// The partition count saved states (by partition) belong to: the count they record, else the
/// highest partition with a state plus one. `None` without states.
fn saved_count(states: &BTreeMap<usize, SavedState>) -> Option<usize> {
    states
        .values()
        .filter_map(|state| state.partitions)
        .max()
        .or_else(|| states.keys().next_back().map(|p| p + 1))
}

/// When the data sources' saved positions belong to another partition count than `partitions`,
/// converts them, and removes the states of partitions that no longer exist (a later change is
/// computed from the positions of this count only). Returns the incident that tells operators
/// that the count changed. Call before the first round.
pub fn convert_saved_positions(ctx: &TaskContext, stores: &Stores, partitions: usize) -> Result<Option<Incident>, PipelineError> {
    let keys: Vec<(usize, String)> = stores
        .control
        .list(ctx, "/component/source/")?
        .into_iter()
        .filter_map(|key| Some((parse_source_state_key(&key)?, key)))
        .collect();
    let docs = stores
        .control
        .get_many(ctx, &keys.iter().map(|(_, key)| key.as_str()).collect::<Vec<_>>())?;
    let states: BTreeMap<usize, SavedState> = keys
        .iter()
        .zip(docs)
        .filter_map(|((p, _), doc)| Some((*p, SavedState::parse(&doc?))))
        .collect();
    let interrupted: Option<Conversion> = stores
        .control
        .get(ctx, CONVERSION_KEY)?
        .and_then(|doc| serde_json::from_value(doc).ok());
    // The positions the sources continue from, and their count.
    let (from, old): (usize, Vec<Option<SourcePosition>>) = match &interrupted {
        Some(conversion) => {
            tracing::info!(
                component = "driver",
                "finishing the conversion of the data sources' positions from {} to {} partitions that the previous start did not finish",
                conversion.from,
                conversion.partitions
            );
            (conversion.partitions, conversion.positions.iter().cloned().map(Some).collect())
        }
        None => match saved_count(&states) {
            Some(count) => (count, (0..count).map(|p| states.get(&p).and_then(|s| s.position.clone())).collect()),
            None => return Ok(None),
        },
    };
    let gone: Vec<usize> = states.keys().copied().filter(|&p| p >= partitions).collect();
    if from == partitions && interrupted.is_none() && gone.is_empty() {
        return Ok(None);
    }
    let converted = (from != partitions).then(|| convert_positions(&old, partitions));
    if let Some(positions) = &converted {
        let conversion = Conversion {
            // The count the sources last ran with, through conversions a crash interrupted.
            from: interrupted.as_ref().map_or(from, |conversion| conversion.from),
            partitions,
            positions: positions.clone(),
        };
        stores.control.put(
            ctx,
            CONVERSION_KEY,
            &serde_json::to_value(&conversion).expect("positions serialize"),
        )?;
    }
    let finishing = interrupted
        .as_ref()
        .filter(|c| c.partitions == partitions)
        .map(|c| c.positions.clone());
    let positions = converted.clone().or(finishing).unwrap_or_default();
    let puts: Vec<Op> = positions
        .iter()
        .enumerate()
        .map(|(p, position)| {
            Op::put_json(
                source_state_key(p),
                &source_state_doc(position, &SourceStats::default(), false, partitions),
            )
        })
        .collect();
    stores.control.apply_all(ctx, puts)?;
    // A crash here (tests inject one) leaves states of two counts side by side: the next start
    // goes by the conversion's positions.
    crate::fault::inject("partition_change", 0).map_err(PipelineError::Config)?;
    stores
        .control
        .apply_all(ctx, gone.iter().map(|&p| Op::Delete { key: source_state_key(p) }).collect())?;
    if converted.is_some() || interrupted.is_some() {
        stores.control.delete(ctx, CONVERSION_KEY)?;
    }
    // The count the sources last ran with (an interrupted conversion was never announced).
    let was = interrupted.as_ref().map_or(from, |conversion| conversion.from);
    if was == partitions {
        if !gone.is_empty() {
            tracing::warn!(
                component = "driver",
                "removed the saved positions of data sources {gone:?}, which a run of {partitions} partitions does not have"
            );
        }
        return Ok(None);
    }
    for (p, position) in positions.iter().enumerate() {
        tracing::info!(
            component = "driver",
            partition = p,
            next_seq = position.next_seq,
            offset = position.offset,
            earlier_layouts = position.delivered_before.len(),
            "data source {p} continues from its converted position"
        );
    }
    let message = format!(
        "partitions changed from {was} to {partitions}: the data sources' saved positions were converted, so that no frame \
         is lost or analysed twice"
    );
    tracing::warn!(component = "driver", from = was, to = partitions, "{message}");
    Ok(Some(Incident::new("driver", IncidentKind::PartitionsChanged, 0, message)))
}

/// Removes the Control files of the data source segments beyond `partitions` that the data
/// directory still holds (a run with more partitions left them), once those segments hold
/// nothing: their states are removed when the positions are converted
/// ([`convert_saved_positions`]), so only after a conversion that committed, never before (its
/// positions are read from them). Call at the end of a run, after the last snapshot: the store
/// has their segments for the whole run, and a snapshot would write their (empty) files again.
/// A removal that fails is logged, not an error: the files are of empty segments, the next run
/// tries again. Returns the partitions whose files were removed.
pub fn remove_retired_source_files(
    ctx: &TaskContext,
    stores: &Stores,
    data_dir: &Path,
    partitions: usize,
) -> Result<Vec<usize>, PipelineError> {
    let mut removed = Vec::new();
    for p in saved_source_partitions(data_dir)?.into_iter().filter(|&p| p >= partitions) {
        let keys = stores.control.list(ctx, &source_prefix(p))?;
        if !keys.is_empty() {
            tracing::warn!(
                component = "driver",
                partition = p,
                "the Control segment of data source {p} still holds {keys:?}: its files stay"
            );
            continue;
        }
        let files = SegmentFiles::new(&data_dir.join(CONTROL_DIR), &source_prefix(p));
        match kv_region::persist::remove_segment_files(&files) {
            Ok(_) => removed.push(p),
            Err(error) => tracing::warn!(
                component = "driver",
                partition = p,
                "cannot remove the files of data source {p}, which a run of {partitions} partitions does not have: {error}"
            ),
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            component = "driver",
            "removed the Control files of data sources {removed:?}, which a run of {partitions} partitions does not have"
        );
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(docs: &[(usize, Value)]) -> BTreeMap<usize, SavedState> {
        docs.iter().map(|(p, doc)| (*p, SavedState::parse(doc))).collect()
    }

    #[test]
    fn the_saved_count_is_the_recorded_one_else_the_highest_partition_plus_one() {
        let position = |next_seq: u64| json!({"next_seq": next_seq, "offset": 0});
        let recorded = states(&[
            (0, source_state_doc(&SourcePosition::default(), &SourceStats::default(), false, 4)),
            (1, json!({"position": position(5), "partitions": 4})),
        ]);
        assert_eq!(saved_count(&recorded), Some(4));
        // Saved before the count was recorded.
        let old = states(&[(0, json!({"position": position(8)})), (2, json!({"position": position(3)}))]);
        assert_eq!(saved_count(&old), Some(3));
        assert_eq!(old[&2].position.as_ref().map(|p| p.next_seq), Some(3));
        assert_eq!(saved_count(&BTreeMap::new()), None);
    }
}
