//! Unit tests of the placement policy on small, hand-checked machines.

use ami_mapper::{
    Machine, Mem, MemKind, Node, Placement, PolicyError, Proc, ProcKind, Roles, SegmentOwner, Sharing, StoreKind, TaskKind, TAG_MARKER,
};

const SERVICE_KINDS: [TaskKind; 3] = [TaskKind::GlobalReducer, TaskKind::GraphManager, TaskKind::ResultsPublisher];

fn place(nodes: u32, cpus: usize, service_nodes: usize, partitions: u32) -> Placement {
    Placement::new(Machine::uniform(nodes, cpus), Roles { service_nodes }, partitions).expect("valid placement")
}

/// The processors of `kind` of `node`, sorted by id.
fn procs_of(placement: &Placement, node: u32, kind: ProcKind) -> Vec<u64> {
    let node = &placement.machine().nodes[node as usize];
    let mut procs: Vec<u64> = node.processors.iter().filter(|p| p.kind == kind).map(|p| p.id).collect();
    procs.sort_unstable();
    procs
}

fn cpus_of(placement: &Placement, node: u32) -> Vec<u64> {
    procs_of(placement, node, ProcKind::Cpu)
}

fn system_of(placement: &Placement, node: u32) -> u64 {
    placement.machine().nodes[node as usize]
        .memories
        .iter()
        .find(|m| m.kind == MemKind::System)
        .unwrap()
        .id
}

fn persistence(store: StoreKind, segment_owner: SegmentOwner) -> TaskKind {
    TaskKind::StorePersistence { store, segment_owner }
}

#[test]
fn one_node_runs_everything_locally() {
    for service_nodes in [0, 1] {
        let p = place(1, 4, service_nodes, 6);
        assert_eq!(p.is_fallback(), service_nodes == 1);
        assert_eq!(p.data_nodes(), &[0]);
        assert!(p.service_nodes().is_empty());
        assert_eq!(p.service_node(), 0);
        assert_eq!(p.partitions_on(0), 0..6);
        assert_eq!(p.monitors(), vec![(0, 0)]);
        let mut kinds = vec![
            TaskKind::TopLevel,
            TaskKind::LocalReducer { node: 0 },
            TaskKind::RobustnessMonitor { index: 0 },
        ];
        kinds.extend(SERVICE_KINDS);
        for part in 0..6 {
            kinds.extend([TaskKind::DataSource { partition: part }, TaskKind::Worker { partition: part }]);
            kinds.push(persistence(StoreKind::Telemetry, SegmentOwner::Partition(part)));
        }
        kinds.push(persistence(StoreKind::Control, SegmentOwner::Service));
        for kind in &kinds {
            assert_eq!(p.node_for(kind), Ok(0), "{kind:?}");
            assert!(cpus_of(&p, 0).contains(&p.processor_for(kind).unwrap()));
            assert_eq!(p.memory_for(kind), Ok(system_of(&p, 0)));
        }
        // Six partitions over four CPUs: 0..4 on CPUs 0..4, then 4, 5 on CPUs 0, 1.
        let cpus = cpus_of(&p, 0);
        for part in 0..6 {
            assert_eq!(p.processor_for(&TaskKind::Worker { partition: part }), Ok(cpus[part as usize % 4]));
        }
        assert_eq!(p.processor_for(&TaskKind::TopLevel), Ok(cpus[0]));
        assert_eq!(p.processor_for(&TaskKind::GraphManager), Ok(cpus[1]));
        assert_eq!(p.processor_for(&TaskKind::LocalReducer { node: 0 }), Ok(cpus[6 % 4]));
    }
}

#[test]
fn two_nodes_one_service() {
    let p = place(2, 2, 1, 3);
    assert!(!p.is_fallback());
    assert_eq!((p.data_nodes(), p.service_nodes()), (&[0][..], &[1][..]));
    for part in 0..3 {
        assert_eq!(p.owner_of_partition(part), Ok(0));
        assert_eq!(p.node_for(&TaskKind::DataSource { partition: part }), Ok(0));
        assert_eq!(p.node_for(&persistence(StoreKind::Control, SegmentOwner::Partition(part))), Ok(0));
    }
    for kind in SERVICE_KINDS {
        assert_eq!(p.node_for(&kind), Ok(1));
    }
    assert_eq!(p.monitors(), vec![(0, 1)]);
    assert_eq!(p.node_for(&TaskKind::RobustnessMonitor { index: 0 }), Ok(1));
    assert_eq!(p.node_for(&persistence(StoreKind::Results, SegmentOwner::Service)), Ok(1));
    assert_eq!(p.node_for(&TaskKind::LocalReducer { node: 0 }), Ok(0));
    assert_eq!(p.node_for(&TaskKind::TopLevel), Ok(0));
    assert_eq!(p.partitions_on(1), 0..0);
}

#[test]
fn data_sources_run_on_their_nodes_io_processors_when_there_are_some() {
    // 2 data nodes with 2 CPUs and 2 IO processors each, a service node; 5 partitions (3 + 2).
    let machine = Machine::uniform(3, 2).with_io_processors(2);
    let p = Placement::new(machine, Roles { service_nodes: 1 }, 5).unwrap();
    let io_of = |node: u32| procs_of(&p, node, ProcKind::Io);
    // Node 0's partitions 0, 1, 2 take its IO processors in turn; node 1's 3 and 4 one each.
    let sources: Vec<u64> = (0..5)
        .map(|part| p.processor_for(&TaskKind::DataSource { partition: part }).unwrap())
        .collect();
    assert_eq!(sources, vec![io_of(0)[0], io_of(0)[1], io_of(0)[0], io_of(1)[0], io_of(1)[1]]);
    for part in 0..5 {
        let source = TaskKind::DataSource { partition: part };
        let worker = TaskKind::Worker { partition: part };
        assert_eq!(p.on_io_processor(&source), Ok(true));
        assert_eq!(p.on_io_processor(&worker), Ok(false));
        assert_eq!(p.node_for(&source), p.node_for(&worker));
        assert!(cpus_of(&p, p.node_for(&worker).unwrap()).contains(&p.processor_for(&worker).unwrap()));
        // Instances in the node's memory, where the IO processor reads and writes them too.
        assert_eq!(p.memory_for(&source), p.memory_for(&worker));
    }
    // Nothing else moves to an IO processor.
    for kind in SERVICE_KINDS
        .into_iter()
        .chain([TaskKind::TopLevel, TaskKind::LocalReducer { node: 1 }])
    {
        assert_eq!(p.on_io_processor(&kind), Ok(false), "{kind:?}");
    }
    assert_eq!(
        p.on_io_processor(&TaskKind::DataSource { partition: 5 }),
        Err(PolicyError::UnknownPartition {
            partition: 5,
            partitions: 5
        })
    );
}

#[test]
fn three_nodes_one_service() {
    let p = place(3, 2, 1, 5);
    assert_eq!((p.data_nodes(), p.service_nodes()), (&[0, 1][..], &[2][..]));
    let owners: Vec<u32> = (0..5).map(|part| p.owner_of_partition(part).unwrap()).collect();
    assert_eq!(owners, vec![0, 0, 0, 1, 1]);
    assert_eq!((p.partitions_on(0), p.partitions_on(1), p.partitions_on(2)), (0..3, 3..5, 0..0));
    // Partition 3 is node 1's first partition: its first CPU; partition 2 is node 0's third: CPU 2 % 2 = 0.
    assert_eq!(p.processor_for(&TaskKind::Worker { partition: 3 }), Ok(cpus_of(&p, 1)[0]));
    assert_eq!(p.processor_for(&TaskKind::DataSource { partition: 4 }), Ok(cpus_of(&p, 1)[1]));
    assert_eq!(p.processor_for(&TaskKind::Worker { partition: 2 }), Ok(cpus_of(&p, 0)[0]));
    for kind in SERVICE_KINDS {
        assert_eq!(p.node_for(&kind), Ok(2));
    }
    assert_eq!(p.monitors(), vec![(0, 2)]);
    let slices = p.slice_index_launch(&TaskKind::Worker { partition: 0 }, 0..5).unwrap();
    let expected: Vec<(i64, u64)> = vec![
        (0, cpus_of(&p, 0)[0]),
        (1, cpus_of(&p, 0)[1]),
        (2, cpus_of(&p, 0)[0]),
        (3, cpus_of(&p, 1)[0]),
        (4, cpus_of(&p, 1)[1]),
    ];
    assert_eq!(slices, expected);
}

#[test]
fn four_nodes_two_services() {
    let p = place(4, 8, 2, 4);
    assert_eq!((p.data_nodes(), p.service_nodes()), (&[0, 1][..], &[2, 3][..]));
    assert_eq!(p.service_node(), 2);
    assert_eq!(
        (0..4).map(|part| p.owner_of_partition(part).unwrap()).collect::<Vec<_>>(),
        vec![0, 0, 1, 1]
    );
    for kind in SERVICE_KINDS {
        assert_eq!(p.node_for(&kind), Ok(2));
    }
    assert_eq!(p.monitors(), vec![(0, 2), (1, 3)]);
    assert_eq!(p.node_for(&TaskKind::RobustnessMonitor { index: 1 }), Ok(3));
    // Service tasks get distinct CPUs on a node with enough of them.
    let service_cpus = cpus_of(&p, 2);
    let chosen: Vec<u64> = [
        TaskKind::GlobalReducer,
        TaskKind::GraphManager,
        TaskKind::ResultsPublisher,
        TaskKind::RobustnessMonitor { index: 0 },
    ]
    .iter()
    .map(|k| p.processor_for(k).unwrap())
    .collect();
    assert_eq!(chosen, service_cpus[..4].to_vec());
    // The local reducer of node 1 takes the first CPU after node 1's two partitions.
    assert_eq!(p.processor_for(&TaskKind::LocalReducer { node: 1 }), Ok(cpus_of(&p, 1)[2]));
}

#[test]
fn no_service_node_puts_service_tasks_on_node_zero() {
    let p = place(3, 4, 0, 7);
    assert!(!p.is_fallback());
    assert_eq!(p.data_nodes(), &[0, 1, 2]);
    assert_eq!((p.partitions_on(0), p.partitions_on(1), p.partitions_on(2)), (0..3, 3..5, 5..7));
    for kind in SERVICE_KINDS {
        assert_eq!(p.node_for(&kind), Ok(0));
    }
    assert_eq!(p.monitors(), vec![(0, 0)]);
}

#[test]
fn every_node_a_service_node_falls_back_to_no_service_node() {
    let p = place(3, 2, 3, 3);
    assert!(p.is_fallback());
    assert_eq!(p.roles(), Roles { service_nodes: 3 });
    assert_eq!(p.data_nodes(), &[0, 1, 2]);
    assert!(p.service_nodes().is_empty());
    assert_eq!(p.node_for(&TaskKind::GraphManager), Ok(0));
    assert_eq!(p.monitors(), vec![(0, 0)]);
}

#[test]
fn more_partitions_than_cpus_and_fewer_partitions_than_data_nodes() {
    let p = place(5, 1, 1, 2);
    assert_eq!(p.data_nodes(), &[0, 1, 2, 3]);
    assert_eq!(
        (0..2).map(|part| p.owner_of_partition(part).unwrap()).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(p.partitions_on(2), 2..2);
    assert_eq!(p.partitions_on(3), 2..2);
}

#[test]
fn registered_memory_for_shared_regions_on_several_nodes() {
    let machine = Machine::uniform(3, 2).with_registered_memory(64 << 20);
    let p = Placement::new(machine.clone(), Roles::default(), 4).unwrap();
    let mem = |node: u32, kind: MemKind| machine.nodes[node as usize].memories.iter().find(|m| m.kind == kind).unwrap().id;
    assert_eq!(p.memory_for(&TaskKind::GraphManager), Ok(mem(2, MemKind::Registered)));
    assert_eq!(
        p.memory_for(&TaskKind::RobustnessMonitor { index: 0 }),
        Ok(mem(2, MemKind::Registered))
    );
    assert_eq!(
        p.memory_for(&persistence(StoreKind::Results, SegmentOwner::Service)),
        Ok(mem(2, MemKind::Registered))
    );
    assert_eq!(p.memory_for(&TaskKind::Worker { partition: 3 }), Ok(mem(1, MemKind::System)));
    assert_eq!(
        p.memory_for(&persistence(StoreKind::Telemetry, SegmentOwner::Partition(0))),
        Ok(mem(0, MemKind::System))
    );
    assert_eq!(p.memory_on(1, Sharing::Shared), Ok(mem(1, MemKind::Registered)));
    assert_eq!(p.memory_on(1, Sharing::Local), Ok(mem(1, MemKind::System)));
    assert_eq!(p.memory_on(7, Sharing::Local), Err(PolicyError::UnknownNode { node: 7, nodes: 3 }));
    let target = p.place(&TaskKind::GlobalReducer).unwrap();
    assert_eq!((target.node, target.memory), (2, mem(2, MemKind::Registered)));
    assert_eq!(target.processor, cpus_of(&p, 2)[0]);

    // Without registered memory, or in one process, shared regions use system memory.
    let p = place(3, 2, 1, 4);
    assert_eq!(p.memory_for(&TaskKind::GraphManager), Ok(system_of(&p, 2)));
    let single = Machine::uniform(1, 2).with_registered_memory(64 << 20);
    let p = Placement::new(single, Roles { service_nodes: 0 }, 1).unwrap();
    assert_eq!(p.memory_for(&TaskKind::GraphManager), Ok(system_of(&p, 0)));
}

#[test]
fn largest_memory_of_a_kind_wins_and_empty_ones_are_ignored() {
    let mut machine = Machine::uniform(2, 1);
    machine.nodes[1].memories = vec![
        Mem {
            id: 10,
            kind: MemKind::System,
            capacity_bytes: 100,
        },
        Mem {
            id: 11,
            kind: MemKind::System,
            capacity_bytes: 300,
        },
        Mem {
            id: 12,
            kind: MemKind::System,
            capacity_bytes: 300,
        },
        Mem {
            id: 13,
            kind: MemKind::Registered,
            capacity_bytes: 0,
        },
        Mem {
            id: 14,
            kind: MemKind::Framebuffer,
            capacity_bytes: 1 << 40,
        },
    ];
    let p = Placement::new(machine, Roles::default(), 1).unwrap();
    assert_eq!(p.memory_for(&TaskKind::GraphManager), Ok(11));
}

#[test]
fn only_cpus_are_chosen() {
    let mut machine = Machine::uniform(2, 1);
    machine.nodes[0].processors.insert(
        0,
        Proc {
            id: 1,
            kind: ProcKind::Gpu,
        },
    );
    machine.nodes[0].processors.insert(0, Proc { id: 2, kind: ProcKind::Io });
    let p = Placement::new(machine, Roles::default(), 3).unwrap();
    for part in 0..3 {
        assert_eq!(p.processor_for(&TaskKind::Worker { partition: part }), Ok(cpus_of(&p, 0)[0]));
    }
}

#[test]
fn input_order_does_not_matter() {
    let machine = Machine::uniform(4, 3).with_registered_memory(1 << 20);
    let mut shuffled = machine.clone();
    shuffled.nodes.reverse();
    for node in &mut shuffled.nodes {
        node.processors.reverse();
        node.memories.reverse();
    }
    let (a, b) = (
        Placement::new(machine.clone(), Roles { service_nodes: 2 }, 9).unwrap(),
        Placement::new(shuffled, Roles { service_nodes: 2 }, 9).unwrap(),
    );
    let spaces = |p: &Placement| p.machine().nodes.iter().map(|n| n.address_space).collect::<Vec<_>>();
    assert_eq!(spaces(&b), vec![0, 1, 2, 3]);
    assert_eq!(spaces(&a), spaces(&b));
    let mut kinds = vec![TaskKind::TopLevel, TaskKind::GraphManager, TaskKind::RobustnessMonitor { index: 1 }];
    kinds.extend((0..9).map(|partition| TaskKind::Worker { partition }));
    kinds.extend((0..4).map(|node| TaskKind::LocalReducer { node }));
    for kind in &kinds {
        assert_eq!(a.place(kind), b.place(kind), "{kind:?}");
    }
}

#[test]
fn invalid_machines_and_roles_are_refused() {
    let err =
        |machine: Machine, service_nodes: usize, partitions: u32| Placement::new(machine, Roles { service_nodes }, partitions).unwrap_err();
    assert_eq!(err(Machine::default(), 0, 1), PolicyError::NoNodes);
    assert_eq!(err(Machine::uniform(2, 2), 0, 0), PolicyError::NoPartitions);
    assert_eq!(
        err(Machine::uniform(2, 2), 3, 1),
        PolicyError::TooManyServiceNodes { requested: 3, nodes: 2 }
    );
    assert_eq!(err(Machine::uniform(2, 0), 0, 1), PolicyError::NoCpu { node: 0 });

    let mut machine = Machine::uniform(2, 1);
    machine.nodes[1].memories.retain(|m| m.kind != MemKind::System);
    assert_eq!(err(machine, 0, 1), PolicyError::NoSystemMemory { node: 1 });
    let mut machine = Machine::uniform(2, 1);
    machine.nodes[0].memories[0].capacity_bytes = 0;
    assert_eq!(err(machine, 0, 1), PolicyError::NoSystemMemory { node: 0 });

    let mut machine = Machine::uniform(2, 1);
    machine.nodes[1].address_space = 5;
    assert_eq!(
        err(machine, 0, 1),
        PolicyError::BadAddressSpaces {
            nodes: 2,
            found: vec![0, 5]
        }
    );
    let mut machine = Machine::uniform(2, 1);
    machine.nodes.push(Node::uniform(1, 1));
    assert!(matches!(
        err(machine, 0, 1),
        PolicyError::BadAddressSpaces { .. } | PolicyError::DuplicateProcessor { .. }
    ));

    let mut machine = Machine::uniform(2, 1);
    let id = machine.nodes[0].processors[0].id;
    machine.nodes[1].processors.push(Proc { id, kind: ProcKind::Cpu });
    assert_eq!(err(machine, 0, 1), PolicyError::DuplicateProcessor { id });
    let mut machine = Machine::uniform(2, 1);
    let id = machine.nodes[0].memories[0].id;
    machine.nodes[1].memories.push(Mem {
        id,
        kind: MemKind::Disk,
        capacity_bytes: 1,
    });
    assert_eq!(err(machine, 0, 1), PolicyError::DuplicateMemory { id });
}

#[test]
fn invalid_questions_are_refused() {
    let p = place(3, 2, 1, 4);
    assert_eq!(
        p.owner_of_partition(4),
        Err(PolicyError::UnknownPartition {
            partition: 4,
            partitions: 4
        })
    );
    assert_eq!(
        p.processor_for(&TaskKind::Worker { partition: 9 }),
        Err(PolicyError::UnknownPartition {
            partition: 9,
            partitions: 4
        })
    );
    assert_eq!(
        p.node_for(&TaskKind::LocalReducer { node: 3 }),
        Err(PolicyError::UnknownNode { node: 3, nodes: 3 })
    );
    assert_eq!(
        p.node_for(&TaskKind::RobustnessMonitor { index: 1 }),
        Err(PolicyError::UnknownMonitor { index: 1, monitors: 1 })
    );
    assert_eq!(
        p.slice_index_launch(&TaskKind::GraphManager, 0..2),
        Err(PolicyError::NotIndexable {
            kind: TaskKind::GraphManager
        })
    );
    assert_eq!(
        p.slice_index_launch(&persistence(StoreKind::Control, SegmentOwner::Service), 0..1),
        Err(PolicyError::NotIndexable {
            kind: persistence(StoreKind::Control, SegmentOwner::Service)
        })
    );
    assert_eq!(
        p.slice_index_launch(&TaskKind::Worker { partition: 0 }, -1..2),
        Err(PolicyError::BadPoint { point: -1 })
    );
    assert_eq!(
        p.slice_index_launch(&TaskKind::Worker { partition: 0 }, 2..5),
        Err(PolicyError::UnknownPartition {
            partition: 4,
            partitions: 4
        })
    );
    assert_eq!(p.slice_index_launch(&TaskKind::Worker { partition: 0 }, 2..2), Ok(vec![]));
    assert_eq!(TaskKind::try_from(0u64), Err(PolicyError::UnknownTag { tag: 0 }));
    assert!(PolicyError::UnknownTag { tag: 0 }.to_string().contains("0x0000000000000000"));
}

#[test]
fn index_launches_of_other_indexed_kinds() {
    let p = place(4, 2, 2, 4);
    let monitors = p.slice_index_launch(&TaskKind::RobustnessMonitor { index: 0 }, 0..2).unwrap();
    assert_eq!(
        monitors.iter().map(|&(_, proc_)| proc_).collect::<Vec<_>>(),
        vec![cpus_of(&p, 2)[1], cpus_of(&p, 3)[1]]
    );
    let reducers = p.slice_index_launch(&TaskKind::LocalReducer { node: 0 }, 0..2).unwrap();
    assert_eq!(reducers, vec![(0, cpus_of(&p, 0)[0]), (1, cpus_of(&p, 1)[0])]);
    let snapshots = p
        .slice_index_launch(&persistence(StoreKind::Telemetry, SegmentOwner::Partition(0)), 0..4)
        .unwrap();
    assert_eq!(
        snapshots,
        p.slice_index_launch(&TaskKind::DataSource { partition: 0 }, 0..4).unwrap()
    );
}

#[test]
fn tag_encoding_is_as_documented() {
    assert_eq!(TaskKind::TopLevel.to_tag(), 0xA201_0000_0000_0000);
    assert_eq!(TaskKind::Worker { partition: 7 }.to_tag(), 0xA203_0000_0000_0007);
    assert_eq!(TaskKind::RobustnessMonitor { index: u32::MAX }.to_tag(), 0xA208_0000_FFFF_FFFF);
    assert_eq!(
        persistence(StoreKind::Results, SegmentOwner::Partition(3)).to_tag(),
        0xA209_0201_0000_0003
    );
    assert_eq!(
        persistence(StoreKind::Control, SegmentOwner::Service).to_tag(),
        0xA209_0100_0000_0000
    );
    assert_eq!(TaskKind::TopLevel.to_tag() >> 56, TAG_MARKER);
    assert_eq!(u64::from(TaskKind::GraphManager), TaskKind::GraphManager.to_tag());
    assert_eq!(TaskKind::try_from(0xA206_0000_0000_0000), Ok(TaskKind::GraphManager));
    for bad in [
        0,
        1,
        0xA200_0000_0000_0000,
        0xA20A_0000_0000_0000,
        0xA206_0000_0000_0001,
        0xA203_0100_0000_0000,
        0xA209_0300_0000_0000,
        0xA209_0002_0000_0000,
        0xA209_0000_0000_0001,
        0xA303_0000_0000_0000,
    ] {
        assert_eq!(TaskKind::from_tag(bad), None, "{bad:#x}");
    }
}

#[test]
fn placement_is_send_sync_and_serializable_types_are_serde() {
    fn send_sync<T: Send + Sync>() {}
    fn serde<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    send_sync::<Placement>();
    send_sync::<PolicyError>();
    serde::<Machine>();
    serde::<Roles>();
    serde::<TaskKind>();
    serde::<ami_mapper::Target>();
}

#[test]
fn data_nodes_are_what_the_service_nodes_leave_or_every_node() {
    let roles = |service_nodes| Roles { service_nodes };
    assert_eq!(roles(1).data_nodes(3), 2);
    assert_eq!(roles(0).data_nodes(3), 3);
    // As many service nodes as nodes: the placement's fallback, every node holds data.
    assert_eq!(roles(2).data_nodes(2), 2);
    let fallback = Placement::new(Machine::uniform(2, 1), roles(2), 4).unwrap();
    assert!(fallback.is_fallback());
    assert_eq!(fallback.data_nodes().len(), roles(2).data_nodes(2));
}
