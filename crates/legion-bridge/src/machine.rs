//! What the machine looks like: processors and memories, and the address space (process) of each.

use legion_sys as raw;
use serde::{Deserialize, Serialize};

/// Kind of a Realm processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProcessorKind {
    /// A CPU core running application tasks (Realm `LOC_PROC`).
    Cpu,
    /// A GPU (`TOC_PROC`).
    Gpu,
    /// A utility processor running runtime meta-work (`UTIL_PROC`).
    Utility,
    /// An I/O processor (`IO_PROC`).
    Io,
    /// An OpenMP processor (`OMP_PROC`).
    OpenMp,
    /// A Python processor (`PY_PROC`).
    Python,
    /// A processor group or set, or a kind this bridge does not name.
    Other(u32),
}

impl ProcessorKind {
    fn from_raw(kind: raw::legion_processor_kind_t) -> Self {
        match kind {
            raw::LOC_PROC => Self::Cpu,
            raw::TOC_PROC => Self::Gpu,
            raw::UTIL_PROC => Self::Utility,
            raw::IO_PROC => Self::Io,
            raw::OMP_PROC => Self::OpenMp,
            raw::PY_PROC => Self::Python,
            other => Self::Other(other),
        }
    }
}

/// Kind of a Realm memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemoryKind {
    /// Ordinary host memory of one process (`SYSTEM_MEM`).
    System,
    /// Host memory registered with the network for RDMA (`REGDMA_MEM`).
    Registered,
    /// Host memory close to one socket (`SOCKET_MEM`).
    Socket,
    /// Host memory a GPU can read directly (`Z_COPY_MEM`).
    ZeroCopy,
    /// GPU frame buffer (`GPU_FB_MEM`).
    Framebuffer,
    /// Memory shared by all processes (`GLOBAL_MEM`).
    Global,
    /// Disk- or file-backed memory (`DISK_MEM`, `FILE_MEM`, `HDF_MEM`).
    Disk,
    /// A kind this bridge does not name (caches, managed GPU memory...).
    Other(u32),
}

impl MemoryKind {
    fn from_raw(kind: raw::legion_memory_kind_t) -> Self {
        match kind {
            raw::SYSTEM_MEM => Self::System,
            raw::REGDMA_MEM => Self::Registered,
            raw::SOCKET_MEM => Self::Socket,
            raw::Z_COPY_MEM => Self::ZeroCopy,
            raw::GPU_FB_MEM => Self::Framebuffer,
            raw::GLOBAL_MEM => Self::Global,
            raw::DISK_MEM | raw::FILE_MEM | raw::HDF_MEM => Self::Disk,
            other => Self::Other(other),
        }
    }
}

/// One processor of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Processor {
    /// Realm's id of the processor (unique in the whole machine).
    pub id: u64,
    pub kind: ProcessorKind,
    /// The process (Legion address space, MPI rank) the processor belongs to.
    pub address_space: u32,
}

impl Processor {
    pub(crate) fn from_raw(proc_: raw::legion_processor_t) -> Self {
        // SAFETY: kind and address-space queries only read the bits of the processor id.
        let (kind, address_space) = unsafe { (raw::legion_processor_kind(proc_), raw::legion_processor_address_space(proc_)) };
        Self {
            id: proc_.id,
            kind: ProcessorKind::from_raw(kind),
            address_space,
        }
    }
}

/// One memory of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Memory {
    /// Realm's id of the memory.
    pub id: u64,
    pub kind: MemoryKind,
    /// The process the memory belongs to.
    pub address_space: u32,
    /// Size in bytes (0 for a memory that cannot hold instances).
    pub capacity_bytes: u64,
}

impl Memory {
    fn from_raw(mem: raw::legion_memory_t) -> Self {
        // SAFETY: kind and address-space queries only read the bits of the memory id.
        let (kind, address_space) = unsafe { (raw::legion_memory_kind(mem), raw::legion_memory_address_space(mem)) };
        Self {
            id: mem.id,
            kind: MemoryKind::from_raw(kind),
            address_space,
            capacity_bytes: crate::mapper::memory_capacity(mem.id),
        }
    }
}

/// A snapshot of the machine: every processor and memory of every process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub processors: Vec<Processor>,
    pub memories: Vec<Memory>,
}

impl Machine {
    /// Reads the machine through a Legion machine handle (valid once the runtime has started).
    pub(crate) fn query(machine: raw::legion_machine_t) -> Self {
        // SAFETY: `machine` is a live machine handle; each buffer is sized by the matching
        // `_size` query before Legion fills it.
        unsafe {
            let count = raw::legion_machine_get_all_processors_size(machine);
            let mut procs = vec![raw::legion_processor_t::default(); count];
            raw::legion_machine_get_all_processors(machine, procs.as_mut_ptr(), count);
            let count = raw::legion_machine_get_all_memories_size(machine);
            let mut mems = vec![raw::legion_memory_t::default(); count];
            raw::legion_machine_get_all_memories(machine, mems.as_mut_ptr(), count);
            Self {
                processors: procs.into_iter().map(Processor::from_raw).collect(),
                memories: mems.into_iter().map(Memory::from_raw).collect(),
            }
        }
    }

    /// Reads the machine of the running runtime.
    pub(crate) fn current() -> Self {
        // SAFETY: creating a machine handle only needs a started runtime (we are inside a task or
        // a registration callback); it is destroyed right after the query.
        unsafe {
            let machine = raw::legion_machine_create();
            let snapshot = Self::query(machine);
            raw::legion_machine_destroy(machine);
            snapshot
        }
    }

    /// Number of processes (address spaces) in the machine.
    pub fn address_spaces(&self) -> u32 {
        self.processors.iter().map(|p| p.address_space + 1).max().unwrap_or(1)
    }

    /// Processors of one kind, in id order.
    pub fn processors_of(&self, kind: ProcessorKind) -> impl Iterator<Item = &Processor> {
        self.processors.iter().filter(move |p| p.kind == kind)
    }

    /// The most processors of one kind any one process has (0 when none has any).
    pub fn most_in_one_process(&self, kind: ProcessorKind) -> usize {
        (0..self.address_spaces())
            .map(|space| self.processors_of(kind).filter(|p| p.address_space == space).count())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor(id: u64, kind: ProcessorKind, address_space: u32) -> Processor {
        Processor { id, kind, address_space }
    }

    #[test]
    fn most_in_one_process_counts_per_process() {
        let machine = Machine {
            processors: vec![
                processor(1, ProcessorKind::Cpu, 0),
                processor(2, ProcessorKind::Utility, 0),
                processor(3, ProcessorKind::Cpu, 1),
                processor(4, ProcessorKind::Cpu, 1),
                processor(5, ProcessorKind::Cpu, 1),
            ],
            memories: Vec::new(),
        };
        assert_eq!(machine.most_in_one_process(ProcessorKind::Cpu), 3);
        assert_eq!(machine.most_in_one_process(ProcessorKind::Utility), 1);
        assert_eq!(machine.most_in_one_process(ProcessorKind::Gpu), 0);
    }
}
