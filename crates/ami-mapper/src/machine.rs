//! The machine description the policy works on: nodes (address spaces), their processors and memories.

use serde::{Deserialize, Serialize};

/// Kind of a processor, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcKind {
    /// A CPU core running application tasks (Realm `LOC_PROC`): the only kind the policy places tasks on.
    Cpu,
    /// A utility processor running runtime meta-work (`UTIL_PROC`); never chosen.
    Utility,
    /// A GPU (`TOC_PROC`); never chosen.
    Gpu,
    /// An I/O processor (`IO_PROC`); never chosen.
    Io,
    /// Any other kind (OpenMP, Python, processor groups...); never chosen.
    Other,
}

/// Kind of a memory, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemKind {
    /// Ordinary host memory of one process (`SYSTEM_MEM`): where instances go by default.
    System,
    /// Host memory registered with the network for RDMA (`REGDMA_MEM`): preferred for regions shared between nodes.
    Registered,
    /// Host memory close to one socket (`SOCKET_MEM`); never chosen.
    Socket,
    /// Host memory a GPU can read directly (`Z_COPY_MEM`); never chosen.
    ZeroCopy,
    /// GPU frame buffer (`GPU_FB_MEM`); never chosen.
    Framebuffer,
    /// Memory shared by all processes (`GLOBAL_MEM`); never chosen.
    Global,
    /// Disk- or file-backed memory; never chosen.
    Disk,
    /// Any other kind; never chosen.
    Other,
}

/// One processor: Realm's id (unique in the machine) and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proc {
    /// Realm's id of the processor, unique among the machine's processors.
    pub id: u64,
    /// What the processor is.
    pub kind: ProcKind,
}

/// One memory: Realm's id (unique in the machine), its kind and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mem {
    /// Realm's id of the memory, unique among the machine's memories.
    pub id: u64,
    /// What the memory is.
    pub kind: MemKind,
    /// Its capacity; a memory of capacity 0 is never chosen.
    pub capacity_bytes: u64,
}

/// One node: a Legion address space (one process) with its processors and memories.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Legion address space of the node; a machine's nodes have address spaces `0..n`, each once.
    pub address_space: u32,
    /// Processors local to this address space, in any order.
    pub processors: Vec<Proc>,
    /// Memories local to this address space, in any order.
    pub memories: Vec<Mem>,
}

/// Default capacity of the system memory made by the helper constructors (512 MiB, Legion's usual `-ll:csize`).
pub const DEFAULT_SYSTEM_BYTES: u64 = 512 << 20;

impl Node {
    /// A node with `cpus` CPU processors, one utility processor and one system memory of
    /// [`DEFAULT_SYSTEM_BYTES`], with synthetic ids: processor `i` is `(1 << 56) | (address_space << 16) | i`
    /// (the utility processor comes last), memory `i` is `(2 << 56) | (address_space << 16) | i`.
    pub fn uniform(address_space: u32, cpus: usize) -> Node {
        let mut processors: Vec<Proc> = (0..cpus)
            .map(|i| Proc {
                id: Self::synthetic_proc_id(address_space, i),
                kind: ProcKind::Cpu,
            })
            .collect();
        processors.push(Proc {
            id: Self::synthetic_proc_id(address_space, cpus),
            kind: ProcKind::Utility,
        });
        let memories = vec![Mem {
            id: Self::synthetic_mem_id(address_space, 0),
            kind: MemKind::System,
            capacity_bytes: DEFAULT_SYSTEM_BYTES,
        }];
        Node {
            address_space,
            processors,
            memories,
        }
    }

    fn synthetic_proc_id(address_space: u32, index: usize) -> u64 {
        (1u64 << 56) | (u64::from(address_space) << 16) | index as u64
    }

    fn synthetic_mem_id(address_space: u32, index: usize) -> u64 {
        (2u64 << 56) | (u64::from(address_space) << 16) | index as u64
    }
}

/// The whole machine: every node (address space) of the Legion run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Machine {
    /// The nodes, in any order (the policy sorts them by address space).
    pub nodes: Vec<Node>,
}

impl Machine {
    /// `nodes` nodes with address spaces `0..nodes`, each made by [`Node::uniform`] with `cpus_per_node` CPUs.
    pub fn uniform(nodes: u32, cpus_per_node: usize) -> Machine {
        Machine {
            nodes: (0..nodes).map(|a| Node::uniform(a, cpus_per_node)).collect(),
        }
    }

    /// The same machine with `count` more IO processors on every node, with synthetic ids following the
    /// node's processors.
    pub fn with_io_processors(mut self, count: usize) -> Machine {
        for node in &mut self.nodes {
            let first = node.processors.len();
            node.processors.extend((first..first + count).map(|i| Proc {
                id: Node::synthetic_proc_id(node.address_space, i),
                kind: ProcKind::Io,
            }));
        }
        self
    }

    /// The same machine with one more memory on every node: registered (RDMA) memory of `capacity_bytes`,
    /// with a synthetic id following the node's memories.
    pub fn with_registered_memory(mut self, capacity_bytes: u64) -> Machine {
        for node in &mut self.nodes {
            let id = Node::synthetic_mem_id(node.address_space, node.memories.len());
            node.memories.push(Mem {
                id,
                kind: MemKind::Registered,
                capacity_bytes,
            });
        }
        self
    }
}
