// The Legion side of a Rust placement policy: a DefaultMapper subclass that asks the policy,
// through plain C callbacks, where each task runs and which memory its instances use, and
// honours the answer. Tasks the policy does not place (it answers 0) keep the default mapper's
// behaviour. Compiled by legion-bridge's build script against the headers legion-sys links.
//
// The callbacks are Rust functions that catch panics themselves; nothing here throws.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "legion.h"
#include "legion/legion_c_util.h"
#include "mappers/default_mapper.h"

using namespace Legion;
using namespace Legion::Mapping;

extern "C" {

// The Rust policy. Each call returns 1 and fills its out-parameter when the policy decides, 0 to
// leave the decision to the default mapper.
typedef struct ami2_placement_callbacks_t {
  // Processor (Realm id) for task `task_id` with mapping tag `tag` (point `point` of an index
  // launch when `has_point`).
  int (*processor)(uint32_t task_id, uint64_t tag, int has_point, int64_t point, uint64_t *proc);
  // Memory (Realm id) for the instances of that task, which runs on `proc`.
  int (*memory)(uint32_t task_id, uint64_t tag, int has_point, int64_t point, uint64_t proc,
                uint64_t *mem);
  // 1 when any CPU of the task's process next to its memory may run it (the policy's first).
  int (*shares_node)(uint32_t task_id, uint64_t tag, int has_point, int64_t point);
} ami2_placement_callbacks_t;

// Counters of the mapper calls that consulted the policy (all processes' mappers of this process).
typedef struct ami2_mapper_stats_t {
  uint64_t placed_tasks;  // tasks (and index-launch points) placed by the policy at their origin
  uint64_t placed_calls;  // select_task_options / slice_task / map_task calls for placed tasks
  uint64_t placed_nanos;  // wall time spent in those calls, default-mapper work included
  uint64_t policy_calls;  // callbacks into the policy
  uint64_t policy_nanos;  // wall time spent in the policy callbacks
  uint64_t rejected;      // answers the shim could not honour (not a CPU or IO processor / not a local memory)
} ami2_mapper_stats_t;

}  // extern "C"

namespace {

std::atomic<uint64_t> placed_tasks{0}, placed_calls{0}, placed_nanos{0}, policy_calls{0}, policy_nanos{0},
    rejected{0};

uint64_t now_nanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Adds one placed mapper call, begun at `start`, to the counters.
void count_placed_call(uint64_t start) {
  placed_calls.fetch_add(1, std::memory_order_relaxed);
  placed_nanos.fetch_add(now_nanos() - start, std::memory_order_relaxed);
}

class PolicyMapper : public DefaultMapper {
 public:
  PolicyMapper(MapperRuntime *rt, Machine machine, Processor local,
               const ami2_placement_callbacks_t &callbacks)
      : DefaultMapper(rt, machine, local, "ami2_policy_mapper"), callbacks_(callbacks) {}

  // Calls never interleave on one mapper, so `current_memory_` (set in map_task for the
  // default mapper's memory choice) cannot leak into another task's mapping.
  MapperSyncModel get_mapper_sync_model(void) const override {
    return SERIALIZED_NON_REENTRANT_MAPPER_MODEL;
  }

  void select_task_options(const MapperContext ctx, const Task &task,
                           TaskOptions &output) override {
    uint64_t start = now_nanos();
    DefaultMapper::select_task_options(ctx, task, output);
    // The top-level task runs in one process (the bridge's top-level variant is not replicable):
    // asking for replication would only make the default mapper warn on every multi-process run.
    if (task.get_depth() == 0) output.replicate = false;
    if (task.is_index_space) return;  // points are placed in slice_task
    Processor proc;
    if (placed_processor(ctx, task, false, 0, proc)) {
      placed_tasks.fetch_add(1, std::memory_order_relaxed);
      output.initial_proc = proc;
      output.stealable = false;
      output.inline_task = false;
      count_placed_call(start);
    }
  }

  void slice_task(const MapperContext ctx, const Task &task, const SliceTaskInput &input,
                  SliceTaskOutput &output) override {
    if (input.domain.get_dim() == 1) {
      uint64_t start = now_nanos();
      std::vector<TaskSlice> slices;
      bool all = true;
      for (Domain::DomainPointIterator it(input.domain); it && all; it++) {
        Processor proc;
        all = placed_processor(ctx, task, true, it.p[0], proc);
        if (all) slices.push_back(TaskSlice(Domain(it.p, it.p), proc, false, false));
      }
      if (all) {
        placed_tasks.fetch_add(slices.size(), std::memory_order_relaxed);
        output.slices = std::move(slices);
        output.verify_correctness = false;
        count_placed_call(start);
        return;
      }
    }
    DefaultMapper::slice_task(ctx, task, input, output);
  }

  void map_task(const MapperContext ctx, const Task &task, const MapTaskInput &input,
                MapTaskOutput &output) override {
    // A point task of an index launch knows its point; a single task has none.
    bool has_point = task.is_index_space && task.index_point.get_dim() == 1;
    int64_t point = has_point ? task.index_point[0] : 0;
    Processor proc;
    // DefaultMapper::map_task may move the task to any local CPU, undoing the initial processor:
    // the policy's processor is put back below.
    if (!placed_processor(ctx, task, has_point, point, proc) ||
        proc.address_space() != local_proc.address_space()) {
      DefaultMapper::map_task(ctx, task, input, output);
      return;
    }
    uint64_t start = now_nanos();
    Memory mem = placed_memory(task, has_point, point, proc);
    current_memory_ = mem;
    DefaultMapper::map_task(ctx, task, input, output);
    current_memory_ = Memory::NO_MEMORY;
    output.target_procs.assign(1, proc);
    if (proc.kind() == Processor::LOC_PROC && shares_node(task, has_point, point)) {
      // Placed by node, not by processor: the other CPUs of this process next to the task's
      // memory may run it too (Legion queues it for all of them), so that one CPU's work does not
      // wait behind another's while a CPU of the node is free.
      const std::vector<Processor> &others = node_cpus(proc, mem);
      output.target_procs.insert(output.target_procs.end(), others.begin(), others.end());
    }
    count_placed_call(start);
  }

 protected:
  Memory default_policy_select_target_memory(MapperContext ctx, Processor target_proc,
                                             const RegionRequirement &req,
                                             MemoryConstraint mc) override {
    if (current_memory_.exists() && !mc.is_valid()) return current_memory_;
    return DefaultMapper::default_policy_select_target_memory(ctx, target_proc, req, mc);
  }

 private:
  // The policy's processor for this task, when it places it on a CPU or IO processor that exists
  // and the task has a variant for (tasks run on IO processors only when registered for them:
  // VariantOptions::io_processors; the default mapper would abort on a task it cannot run).
  bool placed_processor(const MapperContext ctx, const Task &task, bool has_point, int64_t point,
                        Processor &proc) {
    uint64_t id = 0;
    uint64_t start = now_nanos();
    int placed = callbacks_.processor(task.task_id, task.tag, has_point ? 1 : 0, point, &id);
    policy_calls.fetch_add(1, std::memory_order_relaxed);
    policy_nanos.fetch_add(now_nanos() - start, std::memory_order_relaxed);
    if (!placed) return false;
    proc.id = id;
    if (!proc.exists() || (proc.kind() != Processor::LOC_PROC && proc.kind() != Processor::IO_PROC) ||
        (proc.kind() == Processor::IO_PROC && !has_variant_for(ctx, task.task_id, proc.kind()))) {
      rejected.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  // Whether task `task_id` has a variant for processors of `kind`, asked of the runtime once per
  // pair: variants are registered before the runtime starts, and every source task asks.
  bool has_variant_for(const MapperContext ctx, TaskID task_id, Processor::Kind kind) {
    const std::pair<TaskID, int> key(task_id, static_cast<int>(kind));
    auto known = has_variant_.find(key);
    if (known != has_variant_.end()) return known->second;
    std::vector<VariantID> variants;
    runtime->find_valid_variants(ctx, task_id, variants, kind);
    return has_variant_.emplace(key, !variants.empty()).first->second;
  }

  // Whether the policy lets every CPU of the task's node run it.
  bool shares_node(const Task &task, bool has_point, int64_t point) {
    uint64_t start = now_nanos();
    int shared = callbacks_.shares_node(task.task_id, task.tag, has_point ? 1 : 0, point);
    policy_calls.fetch_add(1, std::memory_order_relaxed);
    policy_nanos.fetch_add(now_nanos() - start, std::memory_order_relaxed);
    return shared != 0;
  }

  // The policy's memory for this task's instances, or NO_MEMORY (default choice) when it has no
  // answer or names a memory of another process.
  Memory placed_memory(const Task &task, bool has_point, int64_t point, Processor proc) {
    uint64_t id = 0;
    uint64_t start = now_nanos();
    int placed =
        callbacks_.memory(task.task_id, task.tag, has_point ? 1 : 0, point, proc.id, &id);
    policy_calls.fetch_add(1, std::memory_order_relaxed);
    policy_nanos.fetch_add(now_nanos() - start, std::memory_order_relaxed);
    if (!placed) return Memory::NO_MEMORY;
    Memory mem;
    mem.id = id;
    if (!mem.exists() || mem.address_space() != proc.address_space() || mem.capacity() == 0) {
      rejected.fetch_add(1, std::memory_order_relaxed);
      return Memory::NO_MEMORY;
    }
    return mem;
  }

  // The CPUs of this process other than `proc` next to `mem` (any CPU when `mem` does not
  // exist), worked out once per pair: the machine does not change during a run, and map_task
  // asks for every task placed by node.
  const std::vector<Processor> &node_cpus(Processor proc, Memory mem) {
    const std::pair<uint64_t, uint64_t> key(proc.id, mem.id);
    auto known = node_cpus_.find(key);
    if (known != node_cpus_.end()) return known->second;
    std::vector<Processor> others;
    Machine::ProcessorQuery cpus(machine);
    cpus.local_address_space().only_kind(Processor::LOC_PROC);
    for (Machine::ProcessorQuery::iterator it = cpus.begin(); it != cpus.end(); it++) {
      if (*it != proc && (!mem.exists() || machine.has_affinity(*it, mem))) others.push_back(*it);
    }
    return node_cpus_.emplace(key, std::move(others)).first->second;
  }

  ami2_placement_callbacks_t callbacks_;
  Memory current_memory_ = Memory::NO_MEMORY;
  // Calls never interleave on one mapper (see get_mapper_sync_model): no lock needed.
  std::map<std::pair<uint64_t, uint64_t>, std::vector<Processor>> node_cpus_;
  std::map<std::pair<TaskID, int>, bool> has_variant_;
};

}  // namespace

extern "C" {

// Replaces the default mapper of every processor in `procs` by a policy mapper. Call from a
// registration callback.
void ami2_install_policy_mapper(legion_machine_t machine, legion_runtime_t runtime,
                                const legion_processor_t *procs, uint32_t count,
                                ami2_placement_callbacks_t callbacks) {
  Runtime *rt = CObjectWrapper::unwrap(runtime);
  Machine m = *CObjectWrapper::unwrap(machine);
  for (uint32_t i = 0; i < count; i++) {
    Processor p = CObjectWrapper::unwrap(procs[i]);
    rt->replace_default_mapper(new PolicyMapper(rt->get_mapper_runtime(), m, p, callbacks), p);
  }
}

ami2_mapper_stats_t ami2_policy_mapper_stats(void) {
  ami2_mapper_stats_t stats;
  stats.placed_tasks = placed_tasks.load();
  stats.placed_calls = placed_calls.load();
  stats.placed_nanos = placed_nanos.load();
  stats.policy_calls = policy_calls.load();
  stats.policy_nanos = policy_nanos.load();
  stats.rejected = rejected.load();
  return stats;
}

// Capacity in bytes of memory `id` (the C API has no such query).
uint64_t ami2_memory_capacity(uint64_t id) {
  Memory mem;
  mem.id = id;
  return mem.exists() ? mem.capacity() : 0;
}

}  // extern "C"
