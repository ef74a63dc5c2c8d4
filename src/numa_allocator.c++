// numa_allocator.c++ -- custom_alloc::NUMAAllocator: one private domain per NUMA
// node, each bound to its node through the numa placement policy, over the base
// heap (which serves nothing of its own but the allocations a node heap cannot).
//
// Compiled in every build: without CALLOC_NUMA the numa.h++ stubs describe one
// node, 0, and nothing is bound or moved.
#include <cerrno>
#include <new>

#include <custom_alloc/numa_allocator.h++>

#include "numa.h++"
#include "os.h++"
#include "report.h++"
#include "stats.h++"
#include "tcache.h++"
#include "vg.h++"

namespace lca {
#ifndef CALLOC_NUMA
const NumaTopology& numa_topology() {
  static constinit NumaTopology one{1, false, 1, {{10}}};
  return one;
}

#endif
}  // namespace lca

namespace custom_alloc {

NUMAAllocator::NUMAAllocator(Binding binding) : MemoryAllocator(), binding_(binding) { lca::numa_init(); }

NUMAAllocator::~NUMAAllocator() {
  for (auto& slot : nodes_)
    if (lca::Domain* d = slot.exchange(nullptr)) lca::domain_destroy(d);
}

namespace {
// One warning line "libcalloc: warning: NUMAAllocator: ..." that fill writes
// into a Writer (no malloc), with errno set to err; false, for the callers'
// refusals.  Not a member: see check_range below.
template <class Fill>
bool refuse(int err, Fill fill) {
  char line[200];
  lca::Writer w{line, sizeof line};
  w.str("NUMAAllocator: ");
  fill(w);
  line[w.len < sizeof line ? w.len : sizeof line - 1] = 0;
  lca::report_warning(line);
  errno = err;
  return false;
}
}  // namespace

bool NUMAAllocator::check_node(int node, const char* what) {
  if (lca::numa_node_usable(node)) return true;
  invalid_.fetch_add(1, std::memory_order_relaxed);
  return refuse(EINVAL, [&](lca::Writer& w) {
    w.str("invalid node ");
    if (node < 0) w.str("-").num(static_cast<unsigned long long>(-static_cast<long long>(node)));
    else w.num(static_cast<unsigned>(node));
    w.str(" for ").str(what).str(" (not a node with memory this process may use; nodes: 0-");
    w.num(static_cast<unsigned>(lca::numa_topology().node_count - 1)).str(")");
  });
}

namespace {
// Binding::strict keeps a block to its node (MPOL_BIND) and the kernel places
// pages at their first touch, so a block larger than all of the node's memory
// would be handed out and the process OOM-killed at its touch (SIGKILL, no
// word).  Such a request is refused: errno ENOMEM and one line naming it.  One
// that fits the node's memory but not what is free now is not refused (the
// kernel may reclaim; else its OOM killer acts at the touch: docs/guide/numa.md).
// Not a member: see check_range below.
bool fits_node(std::size_t size, int node, const char* what) {
  std::uint64_t bytes = lca::numa_node_bytes(node);
  if (bytes == 0 || size <= bytes) return true;  // 0: unknown (no libnuma)
  return refuse(ENOMEM, [&](lca::Writer& w) {
    w.str(what).str(" of ").num(static_cast<unsigned long long>(size));
    w.str(" bytes with Binding::strict: more than node ").num(static_cast<unsigned>(node)).str(" has (");
    w.num(static_cast<unsigned long long>(bytes)).str(" bytes)");
  });
}
}  // namespace

lca::Domain* NUMAAllocator::node_domain(int node) {
  // Made once, then read without the lock -- except in Valgrind mode: helgrind
  // and DRD do not see an acquire load as synchronisation.
  if (!lca::on_valgrind())
    if (lca::Domain* d = nodes_[node].load(std::memory_order_acquire)) return d;
  std::lock_guard<std::mutex> guard(lock_);
  lca::Domain* d = nodes_[node].load(std::memory_order_relaxed);
  if (!d) {
    d = lca::domain_create();
    if (!d) return nullptr;
    lca::domain_set_placement(d, lca::NodePlacement{node, binding_ == Binding::strict});
    nodes_[node].store(d, std::memory_order_release);
  }
  return d;
}

void* NUMAAllocator::allocate(std::size_t size, std::size_t alignment) {
  int node = lca::numa_nearest_usable(get_current_node());
  if (binding_ == Binding::strict && !fits_node(size, node, "allocate")) return nullptr;
  lca::Domain* d = node_domain(node);
  if (!d) return MemoryAllocator::allocate(size, alignment);
  if (!lca::is_power_of_two(alignment)) {
    errno = EINVAL;
    return nullptr;
  }
  if (size > lca::kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = lca::domain_alloc(d, size, alignment < ALIGNMENT ? ALIGNMENT : alignment);
  if (!p) {
    errno = ENOMEM;
    return nullptr;
  }
  local_.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void NUMAAllocator::deallocate(void* ptr) { MemoryAllocator::deallocate(ptr); }

void* NUMAAllocator::allocate_on_node(std::size_t size, int node) {
  if (!check_node(node, "allocate_on_node")) return nullptr;
  if (binding_ == Binding::strict && !fits_node(size, node, "allocate_on_node")) return nullptr;
  lca::Domain* d = node_domain(node);
  if (!d || size > lca::kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = lca::domain_alloc(d, size, ALIGNMENT);
  if (!p) {
    errno = ENOMEM;
    return nullptr;
  }
  (node == get_current_node() ? local_ : remote_).fetch_add(1, std::memory_order_relaxed);
  return p;
}

namespace {
// Whether the whole pages of [ptr, ptr + size) lie below the end of the address
// space: the page rounding of a range past it wrapped to a page or none
// (tests/unit/numa, test_ranges_that_wrap_are_refused).  Else counted in
// `invalid`, errno EINVAL.  Not a member: an exported one is called through
// the PLT, and its slot moved .data and .bss (tests/integration/small-rss.sh).
bool check_range(const void* ptr, std::size_t size, std::atomic<std::size_t>& invalid) {
  std::uintptr_t end;
  if (!__builtin_add_overflow(reinterpret_cast<std::uintptr_t>(ptr), size, &end) &&
      !__builtin_add_overflow(end, lca::os_page_size() - 1, &end))
    return true;
  invalid.fetch_add(1, std::memory_order_relaxed);
  errno = EINVAL;
  return false;
}
}  // namespace

void NUMAAllocator::migrate_to_node(void* ptr, std::size_t size, int target_node) {
  if (!ptr || !size) return;
  if (!check_node(target_node, "migrate_to_node") || !check_range(ptr, size, invalid_)) return;
  std::size_t moved = 0, failed = 0;
  // A refused call counts the pages it left where they were, not 1 (the
  // pages moved before it count too).
  int err = lca::numa_move(ptr, size, target_node, &moved, &failed);
  if (err) errno = err;
  if (moved) migrations_.fetch_add(1, std::memory_order_relaxed);
  migrated_pages_.fetch_add(moved, std::memory_order_relaxed);
  migration_failures_.fetch_add(failed, std::memory_order_relaxed);
}

bool NUMAAllocator::bind_memory_to_node(void* ptr, std::size_t size, int node) {
  if (!check_node(node, "bind_memory_to_node") || !check_range(ptr, size, invalid_)) return false;
  std::size_t page = lca::os_page_size();
  auto lo = reinterpret_cast<std::uintptr_t>(ptr) & ~(page - 1);
  auto hi = (reinterpret_cast<std::uintptr_t>(ptr) + size + page - 1) & ~(page - 1);
  int err = lca::numa_bind(reinterpret_cast<void*>(lo), hi - lo, node, binding_ == Binding::strict, true);
  if (err) {
    bind_fallbacks_.fetch_add(1, std::memory_order_relaxed);
    errno = err;
    return false;
  }
  return true;
}

namespace {
struct Usage {
  std::size_t bytes[lca::kNumaMaxNodes];
};
void add_usage(void* ctx, const void* addr, std::size_t len) {
  lca::numa_resident_by_node(addr, len, static_cast<Usage*>(ctx)->bytes);
}
}  // namespace

NUMAAllocator::NUMAStats NUMAAllocator::get_numa_stats() const {
  NUMAStats s{};
  s.local_allocations = local_.load(std::memory_order_relaxed);
  s.remote_allocations = remote_.load(std::memory_order_relaxed);
  s.migrations = migrations_.load(std::memory_order_relaxed);
  s.migrated_pages = migrated_pages_.load(std::memory_order_relaxed);
  s.migration_failures = migration_failures_.load(std::memory_order_relaxed);
  s.invalid_requests = invalid_.load(std::memory_order_relaxed);
  s.bind_fallbacks = bind_fallbacks_.load(std::memory_order_relaxed);
  Usage usage{};
  lca::domain_for_each_range(domain(), add_usage, &usage);
  {
    std::lock_guard<std::mutex> guard(lock_);  // no node heap is destroyed meanwhile
    for (const auto& slot : nodes_) {
      lca::Domain* d = slot.load(std::memory_order_acquire);
      if (!d) continue;
      lca::domain_for_each_range(d, add_usage, &usage);
      s.bind_fallbacks += d->bind_fallbacks.load(std::memory_order_relaxed);
      s.bind_fallbacks += lca::large_counters(&d->large).bind_fallbacks;
    }
  }
  for (int n = 0; n < lca::kNumaMaxNodes; ++n)
    if (usage.bytes[n]) s.per_node_usage[n] = usage.bytes[n];
  return s;
}

MemoryAllocator::Stats NUMAAllocator::get_stats() const {
  lca_stats sum{};
  auto add = [&sum](lca::Domain* d) {
    lca_stats one{};
    lca::stats_fill(d, &one);
    sum.total_allocated += one.total_allocated;
    sum.total_freed += one.total_freed;
    sum.active_allocations += one.active_allocations;
    sum.os_memory_mapped += one.os_memory_mapped;
    sum.fragmentation_bytes += one.fragmentation_bytes;
    sum.allocation_count += one.allocation_count;
    sum.free_count += one.free_count;
    sum.realloc_in_place += one.realloc_in_place;
    sum.realloc_moved += one.realloc_moved;
    sum.realloc_remapped += one.realloc_remapped;
    sum.large_mappings += one.large_mappings;
  };
  add(domain());
  {
    std::lock_guard<std::mutex> guard(lock_);
    for (const auto& slot : nodes_)
      if (lca::Domain* d = slot.load(std::memory_order_acquire)) add(d);
  }
  Stats out;
  out.total_allocated = sum.total_allocated;
  out.total_freed = sum.total_freed;
  out.active_allocations = sum.active_allocations;
  out.os_memory_mapped = sum.os_memory_mapped;
  out.fragmentation_bytes = sum.fragmentation_bytes;
  out.allocation_count = sum.allocation_count;
  out.free_count = sum.free_count;
  out.realloc_in_place = sum.realloc_in_place;
  out.realloc_moved = sum.realloc_moved;
  out.realloc_remapped = sum.realloc_remapped;
  out.large_mappings = sum.large_mappings;
  return out;
}

void NUMAAllocator::trim() {
  MemoryAllocator::trim();
  std::lock_guard<std::mutex> guard(lock_);
  for (const auto& slot : nodes_)
    if (lca::Domain* d = slot.load(std::memory_order_acquire)) lca::domain_trim(d);
}

}  // namespace custom_alloc

namespace lca {
void NumaNodeHeaps::get(const custom_alloc::NUMAAllocator& a, Domain* heaps[kNumaMaxNodes], bool take_lock) {
  static_assert(sizeof a.nodes_ / sizeof a.nodes_[0] == kNumaMaxNodes);
  if (take_lock) a.lock_.lock();  // (helgrind and DRD: see node_domain)
  for (int n = 0; n < kNumaMaxNodes; ++n) heaps[n] = a.nodes_[n].load(std::memory_order_acquire);
  if (take_lock) a.lock_.unlock();
}
}  // namespace lca

namespace custom_alloc {

int NUMAAllocator::get_current_node() const { return lca::numa_current_node(); }

int NUMAAllocator::node_count() { return lca::numa_topology().node_count; }

bool NUMAAllocator::node_usable(int node) {
  lca::numa_init();
  return lca::numa_node_usable(node);
}

int NUMAAllocator::node_of_address(const void* p) { return lca::numa_node_of_address(p); }

int NUMAAllocator::node_distance(int a, int b) {
  const lca::NumaTopology& t = lca::numa_topology();
  if (a < 0 || b < 0 || a >= t.node_count || b >= t.node_count) return -1;
  return t.distance[a][b];
}

bool NUMAAllocator::numa_supported() { return lca::numa_built() && lca::numa_topology().numa_available; }

}  // namespace custom_alloc
