//! What a task is, and how its kind travels in a Legion mapping tag.

use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// The three key-value stores of ami2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StoreKind {
    /// Per-partition telemetry buffers.
    Telemetry,
    /// Configuration, component state, incidents.
    Control,
    /// Published time bins.
    Results,
}

/// Who owns a store segment, hence where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SegmentOwner {
    /// A telemetry partition's segment (e.g. `/telemetry/partition/<p>/` or `/component/source/<p>/`):
    /// it lives on the node owning the partition.
    Partition(u32),
    /// A service segment (e.g. `/control/`, `/results/`, the `/` catch-all): it lives on service node 0.
    Service,
}

/// What a task does; it decides where the task runs. Tasks carry it in their mapping tag ([`TaskKind::to_tag`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// The top-level task: node 0 (Legion starts it there).
    TopLevel,
    /// The data source of a telemetry partition: the partition's owner node.
    DataSource {
        /// Telemetry partition, `0..partitions`.
        partition: u32,
    },
    /// The worker of a telemetry partition: same node and processor as its data source.
    Worker {
        /// Telemetry partition, `0..partitions`.
        partition: u32,
    },
    /// The local reducer merging the partials of one node's workers: that node.
    LocalReducer {
        /// Address space of the node whose partials it merges.
        node: u32,
    },
    /// The global reducer: service node 0.
    GlobalReducer,
    /// The graph manager: service node 0.
    GraphManager,
    /// The results publisher: service node 0.
    ResultsPublisher,
    /// A robustness monitor: monitor `i` runs on service node `i` (see [`crate::Placement::monitors`]).
    RobustnessMonitor {
        /// Monitor index, `0..monitors`.
        index: u32,
    },
    /// A task persisting (snapshot, log, load) one store segment: where the segment lives.
    StorePersistence {
        /// Which store the segment belongs to.
        store: StoreKind,
        /// Who owns the segment.
        segment_owner: SegmentOwner,
    },
}

/// Marker in the top byte of every ami2 mapping tag; a tag without it (e.g. Legion's default tag 0) is not ours.
pub const TAG_MARKER: u64 = 0xA2;

const MARKER_SHIFT: u32 = 56;
const KIND_SHIFT: u32 = 48;
const STORE_SHIFT: u32 = 40;
const OWNER_SHIFT: u32 = 32;

impl TaskKind {
    /// Encodes the kind as a Legion mapping tag (`u64`). Layout, from the most significant bit:
    ///
    /// ```text
    /// bits 63..56  marker 0xA2 (TAG_MARKER)
    /// bits 55..48  kind: 1 TopLevel, 2 DataSource, 3 Worker, 4 LocalReducer, 5 GlobalReducer,
    ///              6 GraphManager, 7 ResultsPublisher, 8 RobustnessMonitor, 9 StorePersistence
    /// bits 47..40  store (StorePersistence only): 0 Telemetry, 1 Control, 2 Results
    /// bits 39..32  segment owner (StorePersistence only): 0 Service, 1 Partition
    /// bits 31..0   index: the partition (DataSource, Worker, StorePersistence of a partition),
    ///              the node (LocalReducer), the monitor (RobustnessMonitor)
    /// ```
    ///
    /// Unused fields are zero, so every kind has exactly one tag and [`TaskKind::from_tag`] is its exact inverse.
    pub fn to_tag(&self) -> u64 {
        let (kind, store, owner, index): (u64, u64, u64, u32) = match *self {
            TaskKind::TopLevel => (1, 0, 0, 0),
            TaskKind::DataSource { partition } => (2, 0, 0, partition),
            TaskKind::Worker { partition } => (3, 0, 0, partition),
            TaskKind::LocalReducer { node } => (4, 0, 0, node),
            TaskKind::GlobalReducer => (5, 0, 0, 0),
            TaskKind::GraphManager => (6, 0, 0, 0),
            TaskKind::ResultsPublisher => (7, 0, 0, 0),
            TaskKind::RobustnessMonitor { index } => (8, 0, 0, index),
            TaskKind::StorePersistence { store, segment_owner } => {
                let store = match store {
                    StoreKind::Telemetry => 0,
                    StoreKind::Control => 1,
                    StoreKind::Results => 2,
                };
                let (owner, index) = match segment_owner {
                    SegmentOwner::Service => (0, 0),
                    SegmentOwner::Partition(p) => (1, p),
                };
                (9, store, owner, index)
            }
        };
        (TAG_MARKER << MARKER_SHIFT) | (kind << KIND_SHIFT) | (store << STORE_SHIFT) | (owner << OWNER_SHIFT) | u64::from(index)
    }

    /// Decodes a tag made by [`TaskKind::to_tag`]; `None` for any other value (wrong marker, unknown kind,
    /// or a field that must be zero but is not).
    pub fn from_tag(tag: u64) -> Option<TaskKind> {
        let byte = |shift: u32| (tag >> shift) & 0xFF;
        if byte(MARKER_SHIFT) != TAG_MARKER {
            return None;
        }
        let (store, owner) = (byte(STORE_SHIFT), byte(OWNER_SHIFT));
        let index = (tag & 0xFFFF_FFFF) as u32;
        let plain = |kind: TaskKind| (store == 0 && owner == 0).then_some(kind);
        let bare = |kind: TaskKind| (store == 0 && owner == 0 && index == 0).then_some(kind);
        match byte(KIND_SHIFT) {
            1 => bare(TaskKind::TopLevel),
            2 => plain(TaskKind::DataSource { partition: index }),
            3 => plain(TaskKind::Worker { partition: index }),
            4 => plain(TaskKind::LocalReducer { node: index }),
            5 => bare(TaskKind::GlobalReducer),
            6 => bare(TaskKind::GraphManager),
            7 => bare(TaskKind::ResultsPublisher),
            8 => plain(TaskKind::RobustnessMonitor { index }),
            9 => {
                let store = match store {
                    0 => StoreKind::Telemetry,
                    1 => StoreKind::Control,
                    2 => StoreKind::Results,
                    _ => return None,
                };
                let segment_owner = match (owner, index) {
                    (0, 0) => SegmentOwner::Service,
                    (1, p) => SegmentOwner::Partition(p),
                    _ => return None,
                };
                Some(TaskKind::StorePersistence { store, segment_owner })
            }
            _ => None,
        }
    }

    /// The same kind for point `point` of an index launch, for kinds that carry an index: the partition
    /// (DataSource, Worker, StorePersistence of a partition's segment), the node (LocalReducer) or the
    /// monitor (RobustnessMonitor) becomes `point`. `None` for other kinds or a point outside `0..=u32::MAX`.
    pub fn with_point(&self, point: i64) -> Option<TaskKind> {
        let i = u32::try_from(point).ok()?;
        match *self {
            TaskKind::DataSource { .. } => Some(TaskKind::DataSource { partition: i }),
            TaskKind::Worker { .. } => Some(TaskKind::Worker { partition: i }),
            TaskKind::LocalReducer { .. } => Some(TaskKind::LocalReducer { node: i }),
            TaskKind::RobustnessMonitor { .. } => Some(TaskKind::RobustnessMonitor { index: i }),
            TaskKind::StorePersistence {
                store,
                segment_owner: SegmentOwner::Partition(_),
            } => Some(TaskKind::StorePersistence {
                store,
                segment_owner: SegmentOwner::Partition(i),
            }),
            _ => None,
        }
    }

    /// Whether the kind's regions are used by several nodes (so their instances prefer registered memory,
    /// see [`crate::Placement::memory_for`]): [`Sharing::Shared`] for the graph manager (Control, read by every
    /// worker), the global reducer and results publisher (Results), the monitors (they watch every node) and
    /// persistence of service segments; [`Sharing::Local`] for partition-local kinds, local reducers and the
    /// top-level task.
    pub fn sharing(&self) -> Sharing {
        match self {
            TaskKind::GraphManager | TaskKind::GlobalReducer | TaskKind::ResultsPublisher | TaskKind::RobustnessMonitor { .. } => {
                Sharing::Shared
            }
            TaskKind::StorePersistence {
                segment_owner: SegmentOwner::Service,
                ..
            } => Sharing::Shared,
            TaskKind::StorePersistence {
                segment_owner: SegmentOwner::Partition(_),
                ..
            }
            | TaskKind::TopLevel
            | TaskKind::DataSource { .. }
            | TaskKind::Worker { .. }
            | TaskKind::LocalReducer { .. } => Sharing::Local,
        }
    }
}

/// Who uses a region instance: decides between system and registered memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sharing {
    /// Used only by tasks of the node holding it (a partition's telemetry buffer): system memory.
    Local,
    /// Used by tasks of several nodes (Control read by every worker, Results): registered memory when the
    /// node has some and the machine has more than one node, else system memory.
    Shared,
}

impl From<TaskKind> for u64 {
    fn from(kind: TaskKind) -> u64 {
        kind.to_tag()
    }
}

impl TryFrom<u64> for TaskKind {
    type Error = PolicyError;

    /// [`TaskKind::from_tag`], with [`PolicyError::UnknownTag`] for a tag that is not an ami2 task kind.
    fn try_from(tag: u64) -> Result<TaskKind, PolicyError> {
        TaskKind::from_tag(tag).ok_or(PolicyError::UnknownTag { tag })
    }
}
