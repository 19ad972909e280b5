//! Errors of the placement policy.

use crate::TaskKind;

/// Why a placement could not be built or a question could not be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The machine description has no node.
    #[error("the machine has no nodes")]
    NoNodes,
    /// The nodes' address spaces are not `0..n`, each exactly once.
    #[error("the nodes' address spaces must be 0..{nodes}, each once; got {found:?}")]
    BadAddressSpaces {
        /// Number of nodes.
        nodes: usize,
        /// The address spaces given, sorted.
        found: Vec<u32>,
    },
    /// A node has no CPU processor.
    #[error("node {node} has no CPU processor")]
    NoCpu {
        /// Address space of the node.
        node: u32,
    },
    /// A node has no system memory (of non-zero capacity).
    #[error("node {node} has no system memory")]
    NoSystemMemory {
        /// Address space of the node.
        node: u32,
    },
    /// Two processors share an id.
    #[error("processor id {id:#x} appears twice")]
    DuplicateProcessor {
        /// The repeated id.
        id: u64,
    },
    /// Two memories share an id.
    #[error("memory id {id:#x} appears twice")]
    DuplicateMemory {
        /// The repeated id.
        id: u64,
    },
    /// Zero telemetry partitions were asked for.
    #[error("the number of telemetry partitions must be at least 1")]
    NoPartitions,
    /// More service nodes than nodes were asked for.
    #[error("{requested} service nodes requested but the machine has only {nodes} nodes")]
    TooManyServiceNodes {
        /// Service nodes asked for.
        requested: usize,
        /// Nodes of the machine.
        nodes: usize,
    },
    /// A partition outside `0..partitions`.
    #[error("partition {partition} does not exist (there are {partitions})")]
    UnknownPartition {
        /// The partition asked about.
        partition: u32,
        /// Number of partitions.
        partitions: u32,
    },
    /// An address space that is not a node of the machine.
    #[error("node {node} does not exist (the machine has {nodes} nodes)")]
    UnknownNode {
        /// The address space asked about.
        node: u32,
        /// Number of nodes.
        nodes: usize,
    },
    /// A robustness monitor index outside `0..monitors`.
    #[error("robustness monitor {index} does not exist (there are {monitors})")]
    UnknownMonitor {
        /// The monitor asked about.
        index: u32,
        /// Number of monitors.
        monitors: usize,
    },
    /// A mapping tag that does not encode a task kind.
    #[error("mapping tag {tag:#018x} is not an ami2 task kind")]
    UnknownTag {
        /// The tag.
        tag: u64,
    },
    /// An index launch of a kind that carries no index (see [`TaskKind::with_point`]).
    #[error("{kind:?} cannot be index-launched")]
    NotIndexable {
        /// The template kind.
        kind: TaskKind,
    },
    /// An index-launch point that is not a valid index (negative or above `u32::MAX`).
    #[error("index-launch point {point} is not a valid index")]
    BadPoint {
        /// The point.
        point: i64,
    },
}
