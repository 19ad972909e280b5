//! ami-mapper's placement policy plugged into the bridge's mapper: every process builds the same
//! [`Placement`] from the Legion machine once it is known, and the mapper shim asks it where each
//! tagged task runs. The pipeline tags its launches with [`TaskKind`] tags and asks
//! [`partition_groups`] which partitions each node's local reducer merges.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use ami_mapper::{Machine, Mem, MemKind, Node, Placement, Proc, ProcKind, Roles, SegmentOwner, StoreKind, TaskKind};
use kv_region::StoreConfig;
use legion_bridge::mapper::{self, PlacementPolicy, TaskQuery};
use legion_bridge::{MemoryKind, ProcessorKind};

use crate::PipelineError;

/// The placement of this process (set once, when the runtime has described the machine).
static PLACEMENT: OnceLock<Arc<Placement>> = OnceLock::new();

/// Installs the ami2 placement policy for `partitions` telemetry partitions and `roles` on every
/// process of the run; call before the runtime starts. Every process must be given the same
/// arguments (they all compute the same placement). A machine the policy cannot serve (a node
/// without CPU, say) is logged and keeps Legion's default mapper.
pub fn install(partitions: usize, roles: Roles) -> Result<(), PipelineError> {
    let partitions = u32::try_from(partitions).map_err(|_| PipelineError::Config("too many partitions".into()))?;
    mapper::install(move |registration| {
        let machine = describe(&registration.machine());
        match Placement::new(machine, roles, partitions) {
            Ok(placement) => {
                let placement = Arc::new(placement);
                let _ = PLACEMENT.set(placement.clone());
                Some(Arc::new(Policy(placement)) as Arc<dyn PlacementPolicy>)
            }
            Err(error) => {
                tracing::error!("placement policy not installed, Legion's default mapper places every task: {error}");
                None
            }
        }
    })?;
    Ok(())
}

/// The placement in effect in this process, once the runtime has started with the policy.
pub fn current() -> Option<&'static Placement> {
    PLACEMENT.get().map(Arc::as_ref)
}

/// The partitions `0..partitions` grouped by the node owning them (ascending nodes): one local
/// reducer per group. Without a placement (or one made for another partition count), one group
/// on node 0.
pub fn partition_groups(partitions: usize) -> Vec<(u32, Vec<usize>)> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let placement = current().filter(|p| p.partitions() as usize == partitions);
    for partition in 0..partitions {
        let node = placement.and_then(|p| p.owner_of_partition(partition as u32).ok()).unwrap_or(0);
        groups.entry(node).or_default().push(partition);
    }
    groups.into_iter().collect()
}

/// IO processors (`-ll:io`) for a process holding `partitions_per_node` partitions on
/// `cpu_processors` CPU processors, on a machine of `cores` cores: one per partition when its CPU
/// processors cannot give each partition's data source and worker one of their own and a core is
/// left beside them, else none. The placement runs data sources on IO processors when there are
/// some. A source waits for its stream; on a CPU processor it would hold it meanwhile, and on one
/// CPU processor the previous round's worker waits behind it. Measured on 2 cores with 1
/// partition: 61,000-72,000 events/s (11 runs of 13) against 33,000-42,000 as fast as possible, and 0.35 ms
/// against 2.25 ms from a bin's end to its publication; with 2 partitions on 2 CPU processors,
/// where no core is left, IO processors only added threads (8% fewer events/s).
pub fn io_processors_for(partitions_per_node: usize, cpu_processors: usize, cores: usize) -> usize {
    let short_of_cpus = cpu_processors < 2 * partitions_per_node;
    let core_left = cpu_processors < cores;
    if short_of_cpus && core_left {
        partitions_per_node
    } else {
        0
    }
}

/// Whether the placement in effect (made for `partitions` partitions) runs partition
/// `partition`'s data source on an IO processor.
pub fn source_on_io_processor(partitions: usize, partition: usize) -> bool {
    current()
        .filter(|p| p.partitions() as usize == partitions)
        .and_then(|p| {
            p.on_io_processor(&TaskKind::DataSource {
                partition: partition as u32,
            })
            .ok()
        })
        .unwrap_or(false)
}

/// The mapping tag of a task of kind `kind`.
pub fn tag(kind: TaskKind) -> u64 {
    kind.to_tag()
}

/// Who owns a store segment: the partition in its prefix (`/telemetry/partition/<p>/...`,
/// `/component/source/<p>/`), else the service.
pub fn segment_owner(prefix: &str) -> SegmentOwner {
    let partition = |rest: &str| rest.split('/').next().and_then(|p| p.parse().ok());
    prefix
        .strip_prefix("/telemetry/partition/")
        .or_else(|| prefix.strip_prefix("/component/source/"))
        .and_then(partition)
        .map_or(SegmentOwner::Service, SegmentOwner::Partition)
}

/// Segment owners of each store, in segment order (point `i` of a store's index launches is
/// segment `i`). Known in the process that created the stores (the driver's, where index launches
/// are sliced); elsewhere such points keep the default mapper's processor on the node they were
/// sent to.
static SEGMENT_OWNERS: Mutex<BTreeMap<u8, Vec<SegmentOwner>>> = Mutex::new(BTreeMap::new());

fn store_index(store: StoreKind) -> u8 {
    match store {
        StoreKind::Telemetry => 0,
        StoreKind::Control => 1,
        StoreKind::Results => 2,
    }
}

/// `config` with mapping tags on its launches (store persistence tasks of `store`): each
/// segment's operations go where the segment's owner is; the index launches over all segments
/// (format, load, snapshot) put point `i` where segment `i`'s owner is.
pub fn tag_store(config: StoreConfig, store: StoreKind) -> StoreConfig {
    let owners: Vec<SegmentOwner> = config.segment_order().iter().map(|p| segment_owner(p)).collect();
    SEGMENT_OWNERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(store_index(store), owners);
    let all = TaskKind::StorePersistence {
        store,
        segment_owner: SegmentOwner::Service,
    };
    config.tags(all.to_tag(), |prefix| {
        TaskKind::StorePersistence {
            store,
            segment_owner: segment_owner(prefix),
        }
        .to_tag()
    })
}

/// The bridge's view of the machine in ami-mapper's terms.
pub fn describe(machine: &legion_bridge::Machine) -> Machine {
    let mut nodes: BTreeMap<u32, Node> = BTreeMap::new();
    for p in &machine.processors {
        let kind = match p.kind {
            ProcessorKind::Cpu => ProcKind::Cpu,
            ProcessorKind::Utility => ProcKind::Utility,
            ProcessorKind::Gpu => ProcKind::Gpu,
            ProcessorKind::Io => ProcKind::Io,
            _ => ProcKind::Other,
        };
        entry(&mut nodes, p.address_space).processors.push(Proc { id: p.id, kind });
    }
    for m in &machine.memories {
        let kind = match m.kind {
            MemoryKind::System => MemKind::System,
            MemoryKind::Registered => MemKind::Registered,
            MemoryKind::Socket => MemKind::Socket,
            MemoryKind::ZeroCopy => MemKind::ZeroCopy,
            MemoryKind::Framebuffer => MemKind::Framebuffer,
            MemoryKind::Global => MemKind::Global,
            MemoryKind::Disk => MemKind::Disk,
            MemoryKind::Other(_) => MemKind::Other,
        };
        entry(&mut nodes, m.address_space).memories.push(Mem {
            id: m.id,
            kind,
            capacity_bytes: m.capacity_bytes,
        });
    }
    Machine {
        nodes: nodes.into_values().collect(),
    }
}

fn entry(nodes: &mut BTreeMap<u32, Node>, address_space: u32) -> &mut Node {
    nodes.entry(address_space).or_insert_with(|| Node {
        address_space,
        processors: Vec::new(),
        memories: Vec::new(),
    })
}

/// Answers the mapper from the placement: tasks whose tag is an ami2 task kind go where the
/// policy says (point `i` of an index launch is the kind's partition, node or monitor `i`); other
/// tasks are left to the default mapper.
struct Policy(Arc<Placement>);

impl Policy {
    fn kind(task: &TaskQuery) -> Option<TaskKind> {
        let kind = TaskKind::from_tag(task.tag)?;
        match (kind, task.point) {
            // A store's index launch over its segments: point i is segment i.
            (TaskKind::StorePersistence { store, .. }, Some(point)) => {
                let owners = SEGMENT_OWNERS.lock().unwrap_or_else(|e| e.into_inner());
                let segment_owner = *owners.get(&store_index(store))?.get(usize::try_from(point).ok()?)?;
                Some(TaskKind::StorePersistence { store, segment_owner })
            }
            (_, Some(point)) if kind.with_point(0).is_some() => kind.with_point(point),
            _ => Some(kind),
        }
    }
}

impl PlacementPolicy for Policy {
    fn processor(&self, task: &TaskQuery) -> Option<u64> {
        self.0.processor_for(&Self::kind(task)?).ok()
    }

    fn memory(&self, task: &TaskQuery, _processor: u64) -> Option<u64> {
        self.0.memory_for(&Self::kind(task)?).ok()
    }

    /// The design places by node (a partition's tasks on the node that owns it); within a node
    /// the policy's CPU is a preference and the node's CPUs share the work.
    fn shares_node(&self, task: &TaskQuery) -> bool {
        Self::kind(task).is_some()
    }
}

#[cfg(test)]
mod tests {
    use legion_bridge::{Memory, Processor};

    use super::*;

    /// A bridge machine of `nodes` processes, each with `cpus` CPUs, a utility processor and a
    /// system memory (ids as Realm makes them: address space in bits 40..56).
    fn bridge_machine(nodes: u32, cpus: u64) -> legion_bridge::Machine {
        let mut machine = legion_bridge::Machine {
            processors: Vec::new(),
            memories: Vec::new(),
        };
        for a in 0..nodes {
            let base = (1u64 << 61) | (u64::from(a) << 40);
            for i in 0..=cpus {
                let kind = if i < cpus { ProcessorKind::Cpu } else { ProcessorKind::Utility };
                machine.processors.push(Processor {
                    id: base | i,
                    kind,
                    address_space: a,
                });
            }
            machine.memories.push(Memory {
                id: (1u64 << 60) | (u64::from(a) << 40),
                kind: MemoryKind::System,
                address_space: a,
                capacity_bytes: 256 << 20,
            });
        }
        machine
    }

    #[test]
    fn data_sources_get_io_processors_when_cpus_are_short_and_a_core_is_left() {
        // 2 cores: one partition on one CPU processor gets one; two on two CPUs none.
        assert_eq!(io_processors_for(1, 1, 2), 1);
        assert_eq!(io_processors_for(2, 2, 2), 0);
        assert_eq!(io_processors_for(2, 1, 2), 2);
        // 16 cores: 4 partitions on 14 CPU processors have two each already.
        assert_eq!(io_processors_for(4, 14, 16), 0);
        assert_eq!(io_processors_for(8, 14, 16), 8);
        // No core left beside the CPU processors.
        assert_eq!(io_processors_for(3, 4, 4), 0);
    }

    #[test]
    fn the_bridge_machine_becomes_the_policy_machine() {
        let machine = describe(&bridge_machine(3, 2));
        assert_eq!(machine.nodes.len(), 3);
        for (a, node) in machine.nodes.iter().enumerate() {
            assert_eq!(node.address_space, a as u32);
            assert_eq!(node.processors.iter().filter(|p| p.kind == ProcKind::Cpu).count(), 2);
            assert_eq!(node.processors.iter().filter(|p| p.kind == ProcKind::Utility).count(), 1);
            assert_eq!(node.memories.len(), 1);
            assert_eq!(node.memories[0].capacity_bytes, 256 << 20);
        }
    }

    #[test]
    fn the_policy_answers_tagged_tasks_and_index_points_and_ignores_others() {
        let bridge = bridge_machine(3, 2);
        let placement = Arc::new(Placement::new(describe(&bridge), Roles { service_nodes: 1 }, 4).unwrap());
        let policy = Policy(placement.clone());
        let node_of = |proc_id: u64| bridge.processors.iter().find(|p| p.id == proc_id).unwrap().address_space;
        let query = |tag, point| TaskQuery { task_id: 7, tag, point };
        // Partitions 0, 1 on node 0 and 2, 3 on node 1; the global reducer on the service node 2.
        for p in 0..4u32 {
            let worker = policy.processor(&query(tag(TaskKind::Worker { partition: p }), None)).unwrap();
            let source = policy.processor(&query(tag(TaskKind::DataSource { partition: p }), None)).unwrap();
            assert_eq!(worker, source);
            assert_eq!(node_of(worker), p / 2);
            // The same kind as an index launch: point p is partition p.
            let point = policy
                .processor(&query(tag(TaskKind::Worker { partition: 0 }), Some(i64::from(p))))
                .unwrap();
            assert_eq!(point, worker);
        }
        let global = policy.processor(&query(tag(TaskKind::GlobalReducer), None)).unwrap();
        assert_eq!(node_of(global), 2);
        let memory = policy.memory(&query(tag(TaskKind::GlobalReducer), None), global).unwrap();
        assert_eq!(bridge.memories.iter().find(|m| m.id == memory).unwrap().address_space, 2);
        assert_eq!(policy.processor(&query(0, None)), None);
        assert_eq!(policy.processor(&query(0x1234, Some(3))), None);
        assert_eq!(policy.processor(&query(tag(TaskKind::Worker { partition: 9 }), None)), None);
    }

    #[test]
    fn store_segments_belong_to_their_partition_or_the_service() {
        assert_eq!(segment_owner("/telemetry/partition/3/buffer/1/"), SegmentOwner::Partition(3));
        assert_eq!(segment_owner("/component/source/12/"), SegmentOwner::Partition(12));
        for prefix in ["/control/", "/component/", "/incident/", "/results/", "/telemetry/partition/x/"] {
            assert_eq!(segment_owner(prefix), SegmentOwner::Service, "{prefix}");
        }
    }

    #[test]
    fn store_launches_are_placed_by_segment_owner() {
        let bridge = bridge_machine(3, 1);
        let placement = Arc::new(Placement::new(describe(&bridge), Roles { service_nodes: 1 }, 2).unwrap());
        let policy = Policy(placement);
        let node_of = |proc_id: u64| bridge.processors.iter().find(|p| p.id == proc_id).unwrap().address_space;
        // Segments in prefix order: /component/, /component/source/0/, /component/source/1/, /control/.
        let config = StoreConfig::new("control")
            .segment("/control/", 8, 4096)
            .segment("/component/", 8, 4096)
            .segment("/component/source/1/", 8, 4096)
            .segment("/component/source/0/", 8, 4096);
        let config = tag_store(config, StoreKind::Control);
        let index = |point| {
            let task = TaskQuery {
                task_id: 1,
                tag: config.tags.all_segments,
                point: Some(point),
            };
            node_of(policy.processor(&task).unwrap())
        };
        assert_eq!((index(0), index(1), index(2), index(3)), (2, 0, 1, 2));
        let single = |prefix: &str| {
            let task = TaskQuery {
                task_id: 1,
                tag: config.tags.per_segment[prefix],
                point: None,
            };
            node_of(policy.processor(&task).unwrap())
        };
        assert_eq!(single("/component/source/1/"), 1);
        assert_eq!(single("/control/"), 2);
    }

    #[test]
    fn without_a_placement_one_local_reducer_merges_every_partition_on_node_0() {
        // No runtime in unit tests: no placement was installed in this process.
        assert_eq!(partition_groups(3), vec![(0, vec![0, 1, 2])]);
    }
}
