//! The incidents the driver records in Control (`/incident/`), bounded: a component that fails
//! again and again for days must not fill the segment (4096 keys), which would make every later
//! incident, and the restart after it, fail in turn. The newest [`KEPT_INCIDENTS`] are kept;
//! every incident is also logged when it happens and counted in the metrics.

use std::collections::VecDeque;

use kv_region::Op;
use legion_bridge::TaskContext;

use crate::pipeline::RunSummary;
use crate::robust::{Incident, IncidentKind};
use crate::stores::Stores;
use crate::PipelineError;

/// Incidents kept in Control and in a run's summary; older ones are deleted as new ones come.
pub const KEPT_INCIDENTS: usize = 1024;

const INCIDENT_PREFIX: &str = "/incident/";

/// The incident keys in Control, oldest first (keys start with the time).
pub struct IncidentLog {
    keys: VecDeque<String>,
    sequence: u64,
}

impl IncidentLog {
    /// Takes over the incidents Control already holds (a restarted service's).
    pub fn open(ctx: &TaskContext, stores: &Stores) -> Result<Self, PipelineError> {
        let mut keys = stores.control.list(ctx, INCIDENT_PREFIX)?;
        keys.sort();
        // `ami2 status` shows the newest incidents of Control, also those of earlier processes
        // (the crashes a restarted service came back from).
        let mut newest = Vec::new();
        for key in keys.iter().rev().take(crate::health::RECENT_INCIDENTS).rev() {
            if let Some(incident) = stores.control.get(ctx, key)?.and_then(|doc| serde_json::from_value(doc).ok()) {
                newest.push(crate::health::KeyedIncident {
                    key: key.clone(),
                    incident,
                });
            }
        }
        crate::health::show_incidents(&newest);
        Ok(IncidentLog {
            keys: keys.into(),
            sequence: 0,
        })
    }

    /// Records `incidents`: under `/incident/` in Control (logged: they survive a crash), deleting
    /// the oldest beyond [`KEPT_INCIDENTS`]; in the metrics; on the health board (for `ami2
    /// status`); and in `summary`, which keeps as many.
    pub fn record(
        &mut self,
        ctx: &TaskContext,
        stores: &Stores,
        incidents: Vec<Incident>,
        summary: &mut RunSummary,
    ) -> Result<(), PipelineError> {
        if incidents.is_empty() {
            return Ok(());
        }
        for incident in &incidents {
            crate::metrics::incident(incident.kind.as_str());
            if incident.kind == IncidentKind::Restart {
                crate::metrics::restart(if incident.component.starts_with("monitor") {
                    "monitor"
                } else {
                    "service"
                });
            }
        }
        let keyed: Vec<crate::health::KeyedIncident> = incidents
            .iter()
            .map(|incident| {
                self.sequence += 1;
                crate::health::KeyedIncident {
                    key: incident.key(self.sequence),
                    incident: incident.clone(),
                }
            })
            .collect();
        // The oldest beyond the bound go first (deletes before puts, so that a full segment
        // makes room); incidents of this batch already beyond it are not written.
        let excess = (self.keys.len() + keyed.len()).saturating_sub(KEPT_INCIDENTS);
        let deleted = excess.min(self.keys.len());
        let mut ops: Vec<Op> = self.keys.drain(..deleted).map(|key| Op::Delete { key }).collect();
        for new in keyed.iter().skip(excess - deleted) {
            self.keys.push_back(new.key.clone());
            ops.push(Op::put_json(new.key.clone(), &new.incident));
        }
        stores.control.apply_all(ctx, ops)?;
        // Shown by `ami2 status` once they are in Control: what an operator saw there is
        // still there after a crash.
        crate::health::note_incidents(&keyed);
        summary.incidents_total += incidents.len() as u64;
        keep_newest(&mut summary.incidents, incidents);
        Ok(())
    }
}

/// Appends `more` to `list` and drops its oldest entries beyond [`KEPT_INCIDENTS`]: the run
/// summary's record of what went wrong stays bounded however long a service runs.
pub(crate) fn keep_newest<T>(list: &mut Vec<T>, more: impl IntoIterator<Item = T>) {
    list.extend(more);
    let over = list.len().saturating_sub(KEPT_INCIDENTS);
    list.drain(..over);
}
