//! The placement decisions: which node, processor and memory each task kind gets.

use std::collections::HashSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::{Machine, MemKind, PolicyError, ProcKind, SegmentOwner, Sharing, TaskKind};

/// How many nodes serve (graph manager, global reducer, results publisher, monitors) rather than hold data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Roles {
    /// Number of service nodes: the last `service_nodes` address spaces. 0 puts the service tasks on node 0.
    pub service_nodes: usize,
}

impl Roles {
    /// How many of `nodes` nodes hold data: those the service nodes leave, or every one when the
    /// service nodes would take them all (the fallback of [`Placement::new`]).
    pub fn data_nodes(&self, nodes: usize) -> usize {
        if self.service_nodes < nodes {
            nodes - self.service_nodes
        } else {
            nodes
        }
    }
}

impl Default for Roles {
    /// One service node (on a single node this falls back to everything on node 0, see [`Placement::new`]).
    fn default() -> Roles {
        Roles { service_nodes: 1 }
    }
}

/// Where one task goes: its node, a CPU processor of that node and the memory of that node for its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// Address space.
    pub node: u32,
    /// Processor id (a CPU of `node`; for a data source, an IO processor of `node` if it has some).
    pub processor: u64,
    /// Memory id (system or registered memory of `node`).
    pub memory: u64,
}

/// Processor slot of each service task on its node: the task gets CPU `slot % cpus` (CPUs sorted by id),
/// so that on a node with enough CPUs they do not share one.
const SLOT_GLOBAL_REDUCER: usize = 0;
const SLOT_GRAPH_MANAGER: usize = 1;
const SLOT_RESULTS_PUBLISHER: usize = 2;
const SLOT_MONITOR: usize = 3;
const SLOT_SERVICE_PERSISTENCE: usize = 4;
const SLOT_TOP_LEVEL: usize = 0;

/// Whether a task of kind `kind` placed on the node of `info` runs on one of its IO processors.
fn runs_on_io(kind: &TaskKind, info: &NodeInfo) -> bool {
    matches!(kind, TaskKind::DataSource { .. }) && !info.io.is_empty()
}

#[derive(Clone, Debug)]
struct NodeInfo {
    /// CPU processor ids, sorted.
    cpus: Vec<u64>,
    /// IO processor ids, sorted (Realm's processors for tasks that wait on I/O).
    io: Vec<u64>,
    system: u64,
    registered: Option<u64>,
    /// Telemetry partitions owned (empty for service nodes).
    partitions: Range<u32>,
}

/// The placement policy for one machine, one role split and one partition count. Immutable, deterministic
/// (the same inputs, in any order, give the same answers), `Send + Sync`.
///
/// Rules:
/// - **Roles.** Nodes are identified by address space `0..n`. The last `roles.service_nodes` address
///   spaces are the service nodes, the others the data nodes. With 0 service nodes every node is a data
///   node and service tasks go to node 0. If the service nodes would take *every* node (e.g. one node,
///   one service node asked for), there is no data node left: the policy falls back to 0 service nodes
///   ([`Placement::is_fallback`]), so a single process runs everything. More service nodes than nodes is
///   an error.
/// - **Partitions** are spread over the data nodes in contiguous, balanced blocks: with `P` partitions and
///   `D` data nodes, the first `P % D` data nodes own `P / D + 1` partitions, the others `P / D`; data node
///   `k` owns the `k`-th block. Within a node, the `j`-th partition owned gets CPU `j % cpus` (CPUs sorted by
///   id), and its worker and segment persistence go there (ami2's mapper lets the node's other CPUs run them
///   too: the CPU is a preference, the node is the placement). Its **data source** goes there too on a node
///   without IO processors; on a node with some it gets IO processor `j % ios` (sorted by id): a source
///   waits for its stream, and on an IO processor its waits hold no CPU the workers and reducers need.
/// - **Service tasks** (global reducer, graph manager, results publisher, persistence of service segments)
///   run on *service node 0*, the first service node (node 0 without service nodes), next to the Control and
///   Results segments they write; monitor `i` runs on service node `i` (one monitor, on node 0, without
///   service nodes). Each has a fixed CPU slot on its node: global reducer 0, graph manager 1, results
///   publisher 2, monitor 3, service persistence 4 (modulo the node's CPU count).
/// - **Local reducer** of node `a` runs on `a`, on CPU `partitions owned by a % cpus` (the first CPU without
///   a partition when there are enough). The **top-level task** runs on node 0, CPU 0.
/// - **Memory**: a task's instances go to its node's system memory, except for kinds whose regions are used
///   by several nodes ([`TaskKind::sharing`] is [`Sharing::Shared`]): registered memory when the node has
///   some and the machine has more than one node. Among several memories of one kind, the largest is used
///   (ties: the lowest id); memories of capacity 0 are ignored.
#[derive(Clone, Debug)]
pub struct Placement {
    machine: Machine,
    roles: Roles,
    partitions: u32,
    nodes: Vec<NodeInfo>,
    data_nodes: Vec<u32>,
    service_nodes: Vec<u32>,
    fallback: bool,
}

impl Placement {
    /// Checks the machine and builds the placement of `partitions` telemetry partitions over it.
    ///
    /// Errors: no node ([`PolicyError::NoNodes`]), address spaces not `0..n` ([`PolicyError::BadAddressSpaces`]),
    /// a node without CPU ([`PolicyError::NoCpu`]) or system memory ([`PolicyError::NoSystemMemory`]), a
    /// repeated processor or memory id, zero partitions, more service nodes than nodes.
    pub fn new(mut machine: Machine, roles: Roles, partitions: u32) -> Result<Placement, PolicyError> {
        let n = machine.nodes.len();
        if n == 0 {
            return Err(PolicyError::NoNodes);
        }
        machine.nodes.sort_by_key(|node| node.address_space);
        if machine.nodes.iter().enumerate().any(|(i, node)| node.address_space as usize != i) {
            let found = machine.nodes.iter().map(|node| node.address_space).collect();
            return Err(PolicyError::BadAddressSpaces { nodes: n, found });
        }
        let (mut proc_ids, mut mem_ids) = (HashSet::new(), HashSet::new());
        for node in &machine.nodes {
            if let Some(p) = node.processors.iter().find(|p| !proc_ids.insert(p.id)) {
                return Err(PolicyError::DuplicateProcessor { id: p.id });
            }
            if let Some(m) = node.memories.iter().find(|m| !mem_ids.insert(m.id)) {
                return Err(PolicyError::DuplicateMemory { id: m.id });
            }
        }
        if partitions == 0 {
            return Err(PolicyError::NoPartitions);
        }
        if roles.service_nodes > n {
            return Err(PolicyError::TooManyServiceNodes {
                requested: roles.service_nodes,
                nodes: n,
            });
        }
        let fallback = roles.service_nodes == n;
        let data_count = roles.data_nodes(n);
        let data_nodes: Vec<u32> = (0..data_count as u32).collect();
        let service_nodes: Vec<u32> = (data_count as u32..n as u32).collect();

        let (per_node, extra) = (partitions / data_count as u32, partitions % data_count as u32);
        let mut nodes = Vec::with_capacity(n);
        for (i, node) in machine.nodes.iter().enumerate() {
            let address_space = node.address_space;
            let mut cpus: Vec<u64> = node.processors.iter().filter(|p| p.kind == ProcKind::Cpu).map(|p| p.id).collect();
            if cpus.is_empty() {
                return Err(PolicyError::NoCpu { node: address_space });
            }
            cpus.sort_unstable();
            let mut io: Vec<u64> = node.processors.iter().filter(|p| p.kind == ProcKind::Io).map(|p| p.id).collect();
            io.sort_unstable();
            let best = |kind: MemKind| {
                node.memories
                    .iter()
                    .filter(|m| m.kind == kind && m.capacity_bytes > 0)
                    .max_by(|a, b| a.capacity_bytes.cmp(&b.capacity_bytes).then(b.id.cmp(&a.id)))
                    .map(|m| m.id)
            };
            let system = best(MemKind::System).ok_or(PolicyError::NoSystemMemory { node: address_space })?;
            let partitions = if i < data_count {
                let k = i as u32;
                let start = k * per_node + k.min(extra);
                start..start + per_node + u32::from(k < extra)
            } else {
                0..0
            };
            nodes.push(NodeInfo {
                cpus,
                io,
                system,
                registered: best(MemKind::Registered),
                partitions,
            });
        }
        Ok(Placement {
            machine,
            roles,
            partitions,
            nodes,
            data_nodes,
            service_nodes,
            fallback,
        })
    }

    /// The machine, nodes sorted by address space.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The roles as asked for (see [`Placement::service_nodes`] for the ones in effect).
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// Number of telemetry partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Address spaces of the data nodes, ascending (never empty).
    pub fn data_nodes(&self) -> &[u32] {
        &self.data_nodes
    }

    /// Address spaces of the service nodes in effect, ascending (empty with 0 service nodes or in the fallback).
    pub fn service_nodes(&self) -> &[u32] {
        &self.service_nodes
    }

    /// Whether the service nodes asked for would have taken every node, so the policy fell back to none.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Service node 0: the first service node, or node 0 when there is none.
    pub fn service_node(&self) -> u32 {
        self.service_nodes.first().copied().unwrap_or(0)
    }

    /// The partitions owned by `node` (empty for a service node or an unknown node).
    pub fn partitions_on(&self, node: u32) -> Range<u32> {
        self.nodes.get(node as usize).map_or(0..0, |info| info.partitions.clone())
    }

    /// The node (address space) owning partition `partition`: always a data node.
    pub fn owner_of_partition(&self, partition: u32) -> Result<u32, PolicyError> {
        if partition >= self.partitions {
            return Err(PolicyError::UnknownPartition {
                partition,
                partitions: self.partitions,
            });
        }
        let d = self.data_nodes.len() as u32;
        let (per_node, extra) = (self.partitions / d, self.partitions % d);
        let big = extra * (per_node + 1);
        // The first `extra` data nodes own `per_node + 1` partitions, the others `per_node` (here `per_node > 0`).
        let k = if partition < big {
            partition / (per_node + 1)
        } else {
            extra + (partition - big) / per_node
        };
        Ok(self.data_nodes[k as usize])
    }

    /// The robustness monitors as `(index, node)`: one per service node, or one on node 0 without service nodes.
    pub fn monitors(&self) -> Vec<(u32, u32)> {
        if self.service_nodes.is_empty() {
            vec![(0, 0)]
        } else {
            self.service_nodes.iter().enumerate().map(|(i, &node)| (i as u32, node)).collect()
        }
    }

    /// The node (address space) where a task of kind `kind` runs.
    pub fn node_for(&self, kind: &TaskKind) -> Result<u32, PolicyError> {
        Ok(self.node_and_slot(kind)?.0)
    }

    /// The processor (of [`Placement::node_for`]) where a task of kind `kind` runs: a CPU, except for a
    /// data source on a node with IO processors ([`Placement::on_io_processor`]). The data source and the
    /// worker of one partition always get the same node, and the same CPU on a node without IO processors.
    pub fn processor_for(&self, kind: &TaskKind) -> Result<u64, PolicyError> {
        let (node, slot) = self.node_and_slot(kind)?;
        let info = &self.nodes[node as usize];
        let processors = if runs_on_io(kind, info) { &info.io } else { &info.cpus };
        Ok(processors[slot % processors.len()])
    }

    /// Whether a task of kind `kind` runs on an IO processor: a data source on a node that has some.
    pub fn on_io_processor(&self, kind: &TaskKind) -> Result<bool, PolicyError> {
        Ok(runs_on_io(kind, self.node_info(self.node_for(kind)?)?))
    }

    /// The memory (of [`Placement::node_for`]) for the instances of a task of kind `kind`:
    /// [`Placement::memory_on`] its node with its [`TaskKind::sharing`].
    pub fn memory_for(&self, kind: &TaskKind) -> Result<u64, PolicyError> {
        self.memory_on(self.node_for(kind)?, kind.sharing())
    }

    /// The memory of `node` for an instance used as `sharing` says: system memory, or for a
    /// [`Sharing::Shared`] region on a machine of several nodes the node's registered memory if it has some.
    /// For a requirement that does not follow its task's kind (e.g. a worker's read-only Control
    /// requirement is shared), the mapper asks this directly.
    pub fn memory_on(&self, node: u32, sharing: Sharing) -> Result<u64, PolicyError> {
        let info = self.node_info(node)?;
        match (sharing, info.registered) {
            (Sharing::Shared, Some(registered)) if self.nodes.len() > 1 => Ok(registered),
            _ => Ok(info.system),
        }
    }

    /// Node, processor and memory of a task of kind `kind` in one answer.
    pub fn place(&self, kind: &TaskKind) -> Result<Target, PolicyError> {
        Ok(Target {
            node: self.node_for(kind)?,
            processor: self.processor_for(kind)?,
            memory: self.memory_for(kind)?,
        })
    }

    /// Slices an index launch of `template` over `points`: point `i` is the task `template.with_point(i)`
    /// (the partition, node or monitor `i`, see [`TaskKind::with_point`]) and goes to that task's processor, so
    /// every partition's point runs on the partition's owner. Returns `(point, processor)` in point order.
    pub fn slice_index_launch(&self, template: &TaskKind, points: Range<i64>) -> Result<Vec<(i64, u64)>, PolicyError> {
        if template.with_point(0).is_none() {
            return Err(PolicyError::NotIndexable { kind: *template });
        }
        points
            .map(|point| {
                let kind = template.with_point(point).ok_or(PolicyError::BadPoint { point })?;
                Ok((point, self.processor_for(&kind)?))
            })
            .collect()
    }

    fn node_info(&self, node: u32) -> Result<&NodeInfo, PolicyError> {
        self.nodes.get(node as usize).ok_or(PolicyError::UnknownNode {
            node,
            nodes: self.nodes.len(),
        })
    }

    /// The node of a partition and the partition's CPU slot on it (its rank among the node's partitions).
    fn partition_slot(&self, partition: u32) -> Result<(u32, usize), PolicyError> {
        let node = self.owner_of_partition(partition)?;
        Ok((node, (partition - self.nodes[node as usize].partitions.start) as usize))
    }

    /// The node of a task and its CPU slot there (the CPU is `slot % cpus`).
    fn node_and_slot(&self, kind: &TaskKind) -> Result<(u32, usize), PolicyError> {
        let service = self.service_node();
        match *kind {
            TaskKind::TopLevel => Ok((0, SLOT_TOP_LEVEL)),
            TaskKind::DataSource { partition } | TaskKind::Worker { partition } => self.partition_slot(partition),
            TaskKind::StorePersistence {
                segment_owner: SegmentOwner::Partition(partition),
                ..
            } => self.partition_slot(partition),
            TaskKind::StorePersistence {
                segment_owner: SegmentOwner::Service,
                ..
            } => Ok((service, SLOT_SERVICE_PERSISTENCE)),
            TaskKind::LocalReducer { node } => Ok((node, self.node_info(node)?.partitions.len())),
            TaskKind::GlobalReducer => Ok((service, SLOT_GLOBAL_REDUCER)),
            TaskKind::GraphManager => Ok((service, SLOT_GRAPH_MANAGER)),
            TaskKind::ResultsPublisher => Ok((service, SLOT_RESULTS_PUBLISHER)),
            TaskKind::RobustnessMonitor { index } => {
                let monitors = self.monitors();
                let &(_, node) = monitors.get(index as usize).ok_or(PolicyError::UnknownMonitor {
                    index,
                    monitors: monitors.len(),
                })?;
                Ok((node, SLOT_MONITOR))
            }
        }
    }
}
