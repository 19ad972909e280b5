//! Property tests of the placement policy over many machine shapes.

use std::collections::{BTreeMap, HashMap};

use ami_mapper::{Machine, Mem, MemKind, Node, Placement, PolicyError, Proc, ProcKind, Roles, SegmentOwner, StoreKind, TaskKind};
use proptest::prelude::*;

/// A machine shape: CPUs per node (1..=64 nodes, 1..=64 CPUs each, plus a utility processor), extras on
/// some nodes (a GPU, an I/O processor, registered memory, a frame buffer, a second system memory), and
/// a seed shuffling the order of nodes, processors and memories.
#[derive(Clone, Debug)]
struct Shape {
    cpus: Vec<usize>,
    extras: Vec<u8>,
    service_nodes: usize,
    partitions: u32,
    seed: u64,
}

fn shapes() -> impl Strategy<Value = Shape> {
    (1usize..=64)
        .prop_flat_map(|nodes| {
            (
                proptest::collection::vec(1usize..=64, nodes),
                proptest::collection::vec(any::<u8>(), nodes),
                0usize..=3,
                1u32..=256,
                any::<u64>(),
            )
        })
        .prop_map(|(cpus, extras, service_nodes, partitions, seed)| Shape {
            cpus,
            extras,
            service_nodes,
            partitions,
            seed,
        })
}

/// A tiny deterministic generator for shuffling (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

fn build(shape: &Shape) -> Machine {
    let mut rng = Rng(shape.seed | 1);
    let mut nodes: Vec<Node> = shape
        .cpus
        .iter()
        .zip(&shape.extras)
        .enumerate()
        .map(|(a, (&cpus, &extras))| {
            let mut node = Node::uniform(a as u32, cpus);
            let id = |i: u64| (3u64 << 56) | ((a as u64) << 16) | i;
            if extras & 1 != 0 {
                node.processors.push(Proc {
                    id: id(0),
                    kind: ProcKind::Gpu,
                });
                node.memories.push(Mem {
                    id: id(0),
                    kind: MemKind::Framebuffer,
                    capacity_bytes: 16 << 30,
                });
            }
            if extras & 2 != 0 {
                node.processors.push(Proc {
                    id: id(1),
                    kind: ProcKind::Io,
                });
            }
            if extras & 4 != 0 {
                node.memories.push(Mem {
                    id: id(1),
                    kind: MemKind::Registered,
                    capacity_bytes: 64 << 20,
                });
            }
            if extras & 8 != 0 {
                node.memories.push(Mem {
                    id: id(2),
                    kind: MemKind::System,
                    capacity_bytes: u64::from(extras) << 20,
                });
            }
            if extras & 16 != 0 {
                node.memories.push(Mem {
                    id: id(3),
                    kind: MemKind::Socket,
                    capacity_bytes: 1 << 30,
                });
            }
            rng.shuffle(&mut node.processors);
            rng.shuffle(&mut node.memories);
            node
        })
        .collect();
    rng.shuffle(&mut nodes);
    Machine { nodes }
}

/// Every task kind the placement can answer for.
fn all_kinds(p: &Placement) -> Vec<TaskKind> {
    let mut kinds = vec![
        TaskKind::TopLevel,
        TaskKind::GlobalReducer,
        TaskKind::GraphManager,
        TaskKind::ResultsPublisher,
    ];
    kinds.extend(p.monitors().iter().map(|&(index, _)| TaskKind::RobustnessMonitor { index }));
    kinds.extend((0..p.machine().nodes.len() as u32).map(|node| TaskKind::LocalReducer { node }));
    for store in [StoreKind::Telemetry, StoreKind::Control, StoreKind::Results] {
        kinds.push(TaskKind::StorePersistence {
            store,
            segment_owner: SegmentOwner::Service,
        });
    }
    for partition in 0..p.partitions() {
        kinds.push(TaskKind::DataSource { partition });
        kinds.push(TaskKind::Worker { partition });
        kinds.push(TaskKind::StorePersistence {
            store: StoreKind::Telemetry,
            segment_owner: SegmentOwner::Partition(partition),
        });
        kinds.push(TaskKind::StorePersistence {
            store: StoreKind::Control,
            segment_owner: SegmentOwner::Partition(partition),
        });
    }
    kinds
}

fn task_kinds() -> impl Strategy<Value = TaskKind> {
    let store = prop_oneof![Just(StoreKind::Telemetry), Just(StoreKind::Control), Just(StoreKind::Results)];
    let owner = prop_oneof![Just(SegmentOwner::Service), any::<u32>().prop_map(SegmentOwner::Partition)];
    prop_oneof![
        Just(TaskKind::TopLevel),
        any::<u32>().prop_map(|partition| TaskKind::DataSource { partition }),
        any::<u32>().prop_map(|partition| TaskKind::Worker { partition }),
        any::<u32>().prop_map(|node| TaskKind::LocalReducer { node }),
        Just(TaskKind::GlobalReducer),
        Just(TaskKind::GraphManager),
        Just(TaskKind::ResultsPublisher),
        any::<u32>().prop_map(|index| TaskKind::RobustnessMonitor { index }),
        (store, owner).prop_map(|(store, segment_owner)| TaskKind::StorePersistence { store, segment_owner }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn placement_invariants(shape in shapes()) {
        let machine = build(&shape);
        let n = shape.cpus.len();
        let roles = Roles { service_nodes: shape.service_nodes };
        let p = match Placement::new(machine.clone(), roles, shape.partitions) {
            Err(e) => {
                prop_assert!(shape.service_nodes > n);
                prop_assert_eq!(e, PolicyError::TooManyServiceNodes { requested: shape.service_nodes, nodes: n });
                return Ok(());
            }
            Ok(p) => p,
        };
        prop_assert!(shape.service_nodes <= n);

        // Roles: the last service nodes; all of them means the fallback to none.
        let services = if shape.service_nodes == n { 0 } else { shape.service_nodes };
        prop_assert_eq!(p.is_fallback(), shape.service_nodes == n);
        prop_assert_eq!(p.service_nodes().to_vec(), ((n - services) as u32..n as u32).collect::<Vec<_>>());
        prop_assert_eq!(p.data_nodes().to_vec(), (0..(n - services) as u32).collect::<Vec<_>>());
        let is_data = |node: u32| p.data_nodes().contains(&node);
        let is_service = |node: u32| p.service_nodes().contains(&node);

        // Where each id lives, and what it is.
        let procs: HashMap<u64, (u32, ProcKind)> =
            machine.nodes.iter().flat_map(|node| node.processors.iter().map(move |q| (q.id, (node.address_space, q.kind)))).collect();
        let mems: HashMap<u64, (u32, MemKind)> =
            machine.nodes.iter().flat_map(|node| node.memories.iter().map(move |m| (m.id, (node.address_space, m.kind)))).collect();

        // Every partition has exactly one owner, a data node, which lists it; owners are balanced.
        let mut counts: BTreeMap<u32, u32> = p.data_nodes().iter().map(|&d| (d, 0)).collect();
        for partition in 0..shape.partitions {
            let owner = p.owner_of_partition(partition).unwrap();
            prop_assert!(is_data(owner) && !is_service(owner));
            let listing: Vec<u32> = (0..n as u32).filter(|&node| p.partitions_on(node).contains(&partition)).collect();
            prop_assert_eq!(listing, vec![owner]);
            *counts.get_mut(&owner).unwrap() += 1;
        }
        prop_assert_eq!(counts.values().sum::<u32>(), shape.partitions);
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        prop_assert!(max - min <= 1, "unbalanced: {:?}", counts);
        prop_assert!(p.owner_of_partition(shape.partitions).is_err());

        // Data source, worker and partition persistence of a partition: same node (the owner); worker and
        // persistence on the same CPU; the source there too, or on an IO processor of the owner if it has some.
        for partition in 0..shape.partitions {
            let owner = p.owner_of_partition(partition).unwrap();
            let source_kind = TaskKind::DataSource { partition };
            let source = p.place(&source_kind).unwrap();
            let worker = p.place(&TaskKind::Worker { partition }).unwrap();
            let persist = p.place(&TaskKind::StorePersistence { store: StoreKind::Telemetry, segment_owner: SegmentOwner::Partition(partition) }).unwrap();
            prop_assert_eq!(source.node, owner);
            prop_assert_eq!(source.node, worker.node);
            prop_assert_eq!((worker.node, worker.processor), (persist.node, persist.processor));
            let owner_has_io = procs.values().any(|&(node, kind)| node == owner && kind == ProcKind::Io);
            prop_assert_eq!(p.on_io_processor(&source_kind).unwrap(), owner_has_io);
            let expected = if owner_has_io { ProcKind::Io } else { ProcKind::Cpu };
            prop_assert_eq!(procs[&source.processor], (owner, expected));
            if !owner_has_io {
                prop_assert_eq!(source.processor, worker.processor);
            }
        }

        // Service tasks never on a data node when service nodes exist; on node 0 otherwise.
        let service_kinds = [TaskKind::GlobalReducer, TaskKind::GraphManager, TaskKind::ResultsPublisher];
        for kind in service_kinds.iter().chain(&[TaskKind::StorePersistence { store: StoreKind::Control, segment_owner: SegmentOwner::Service }]) {
            let node = p.node_for(kind).unwrap();
            if services > 0 { prop_assert!(is_service(node) && !is_data(node)); } else { prop_assert_eq!(node, 0); }
        }

        // Exactly one monitor per service node (one on node 0 without any), each where monitors() says.
        let monitors = p.monitors();
        if services > 0 {
            prop_assert_eq!(monitors.iter().map(|&(_, node)| node).collect::<Vec<_>>(), p.service_nodes().to_vec());
        } else {
            prop_assert_eq!(monitors.clone(), vec![(0, 0)]);
        }
        for (i, &(index, node)) in monitors.iter().enumerate() {
            prop_assert_eq!(index, i as u32);
            let placed = p.node_for(&TaskKind::RobustnessMonitor { index }).unwrap();
            prop_assert_eq!(placed, node);
            if services > 0 { prop_assert!(!is_data(placed)); }
        }
        let beyond = TaskKind::RobustnessMonitor { index: monitors.len() as u32 };
        prop_assert!(p.node_for(&beyond).is_err());

        // Index launches: every point on its partition's owner, on the point task's processor.
        for template in [TaskKind::DataSource { partition: 0 }, TaskKind::Worker { partition: 0 }] {
            let slices = p.slice_index_launch(&template, 0..i64::from(shape.partitions)).unwrap();
            prop_assert_eq!(slices.len(), shape.partitions as usize);
            for (i, &(point, processor)) in slices.iter().enumerate() {
                prop_assert_eq!(point, i as i64);
                let partition = point as u32;
                prop_assert_eq!(procs[&processor].0, p.owner_of_partition(partition).unwrap());
                let point_task = template.with_point(point).unwrap();
                prop_assert_eq!(processor, p.processor_for(&point_task).unwrap());
            }
        }

        // Every kind: tag round trip; a CPU (an IO processor for a source, where it says so) and a system or
        // registered memory of the chosen node.
        for kind in all_kinds(&p) {
            prop_assert_eq!(TaskKind::from_tag(kind.to_tag()), Some(kind));
            let target = p.place(&kind).unwrap();
            let expected = if p.on_io_processor(&kind).unwrap() { ProcKind::Io } else { ProcKind::Cpu };
            prop_assert!(expected == ProcKind::Cpu || matches!(kind, TaskKind::DataSource { .. }), "{:?} on IO", kind);
            prop_assert_eq!(procs[&target.processor], (target.node, expected), "{:?}", kind);
            let (mem_node, mem_kind) = mems[&target.memory];
            prop_assert_eq!(mem_node, target.node, "{:?}", kind);
            prop_assert!(matches!(mem_kind, MemKind::System | MemKind::Registered), "{:?} in {:?}", kind, mem_kind);
        }
        prop_assert_eq!(p.node_for(&TaskKind::TopLevel).unwrap(), 0);

        // Deterministic: the same machine in another order gives the same answers.
        let mut reordered = machine;
        reordered.nodes.reverse();
        let q = Placement::new(reordered, roles, shape.partitions).unwrap();
        for kind in all_kinds(&p) {
            prop_assert_eq!(p.place(&kind).unwrap(), q.place(&kind).unwrap());
        }
    }

    #[test]
    fn tags_round_trip(kind in task_kinds()) {
        let tag = kind.to_tag();
        prop_assert_eq!(TaskKind::from_tag(tag), Some(kind));
        prop_assert_eq!(TaskKind::try_from(tag), Ok(kind));
    }

    #[test]
    fn any_tag_decodes_to_nothing_or_its_exact_kind(tag in any::<u64>(), low in any::<u64>()) {
        // Random tags, and tags with the ami2 marker and a valid kind byte but random other bits.
        let marked = (0xA2u64 << 56) | ((1 + low % 9) << 48) | (tag & 0x0000_FFFF_FFFF_FFFF);
        for t in [tag, marked] {
            match TaskKind::from_tag(t) {
                Some(kind) => prop_assert_eq!(kind.to_tag(), t),
                None => prop_assert_eq!(TaskKind::try_from(t), Err(PolicyError::UnknownTag { tag: t })),
            }
        }
    }
}
