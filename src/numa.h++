// numa.h++ -- NUMA topology and the placement policy that binds heap memory to
// nodes (libnuma).
//
// The topology (how many nodes, which have memory and may be used by this
// process, their distances) is read once through libnuma, at the library's start
// or at the first NUMAAllocator, never on a malloc path (libnuma allocates while
// it reads /sys).  Everything the heap calls later -- the current node (getcpu,
// a vDSO call), binding a range (mbind), moving pages (move_pages), asking the
// kernel where a page is (get_mempolicy, move_pages without a target) -- is a
// system call or a table read that allocates nothing.  numa plugs into chunk as
// its placement policy (chunk_set_placement): chunk and large bind fresh memory
// through it without knowing NUMA.
//
// Built with --disable-numa (or when libnuma is absent) the module is not
// compiled: the inline stubs below describe one node, 0, and bind nothing.
#ifndef LCA_NUMA_HXX
#define LCA_NUMA_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <sys/mman.h>

#include "config.h"
#include "os.h++"

namespace custom_alloc { class NUMAAllocator; }

namespace lca {

struct Domain;

// Nodes beyond this are not supported (the kernel's default MAX_NUMNODES on
// x86-64 Debian kernels is 1024; a machine with more than 64 memory nodes is not
// one we can test).  numa_topology() reports them as absent.
constexpr int kNumaMaxNodes = 64;

struct NumaTopology {
  int node_count;        // highest node number + 1 (1 when NUMA is unavailable)
  bool numa_available;   // the kernel has NUMA (libnuma's numa_available() >= 0)
  std::uint64_t usable;  // bit n: node n exists, has memory and is in mems_allowed
  std::uint8_t distance[kNumaMaxNodes][kNumaMaxNodes];  // SLIT distances (10: local)
};

// Counters of the placement policy, process-wide.
struct NumaPlacementCounters {
  std::size_t bound;    // ranges bound with mbind
  std::size_t refused;  // mbind calls the kernel refused (memory left first-touch)
};

// The resident pages of [lo, hi), page-aligned (mincore; page by page over a
// batch that has a hole in the mapping: a hole's pages count as not resident).
inline std::size_t numa_resident_pages(std::uintptr_t lo, std::uintptr_t hi, std::size_t page) {
  unsigned char vec[256];
  std::size_t count = 0;
  while (lo < hi) {
    std::size_t n = (hi - lo) / page < sizeof vec ? (hi - lo) / page : sizeof vec;
    if (mincore(reinterpret_cast<void*>(lo), n * page, vec) != 0)
      for (std::size_t i = 0; i < n; ++i)
        if (mincore(reinterpret_cast<void*>(lo + i * page), page, &vec[i]) != 0) vec[i] = 0;
    for (std::size_t i = 0; i < n; ++i) count += vec[i] & 1;
    lo += n * page;
  }
  return count;
}

// Without libnuma everything is on node 0: mincore says what is resident.
inline void numa_resident_on_node0(const void* addr, std::size_t len, std::size_t* per_node) {
  std::size_t page = os_page_size();
  auto lo = reinterpret_cast<std::uintptr_t>(addr) & ~(page - 1);
  auto hi = (reinterpret_cast<std::uintptr_t>(addr) + len + page - 1) & ~(page - 1);
  per_node[0] += numa_resident_pages(lo, hi, page) * page;
}

// The node heaps of a NUMAAllocator (numa_allocator.c++; in every build, as the
// class is): heaps[n] is node n's, nullptr where none was made yet.  A node
// heap, once made, lives as long as its allocator.  For the defragmentation
// engine (defrag.c++), which walks each of them.  `take_lock`: read under the
// allocator's creation lock (for helgrind and DRD, as node_domain does);
// false from a relocation callback, which holds the pass's heap locks.
struct NumaNodeHeaps {
  static void get(const custom_alloc::NUMAAllocator& a, Domain* heaps[kNumaMaxNodes], bool take_lock);
};

#ifdef CALLOC_NUMA
// Loads libnuma (dlopen), reads the topology (once; later calls return at once)
// and installs the placement policy into chunk.  Not from a malloc path: libnuma
// allocates.  Without libnuma.so.1 at run time: one node, a warning.
void numa_init();
// The topology; numa_init() must have run.
const NumaTopology& numa_topology();
inline bool numa_built() { return true; }
bool numa_node_usable(int node);
// The memory of a usable node in bytes (libnuma's numa_node_size64 at start-up),
// 0 when unknown: a strict binding refuses a request larger than its node's.
// (Not in NumaTopology: the --disable-numa build's constant copy of it is in
// .data, and 512 bytes more there moved a variable every program touches past
// the file's last page -- tests/integration/small-rss.sh, CI's minimal build.)
std::uint64_t numa_node_bytes(int node);
// The node of the CPU the caller runs on (getcpu); 0 when unknown.
int numa_current_node();
// The usable node `node`'s threads allocate on: itself when usable; for a
// CPU-only node, the node where the kernel's own fallback puts a page its CPU
// first touches (asked of the kernel once, from a thread on that node: the
// caller's node is the case that counts), else the nearest by distance.  System
// calls only (a probe page: mmap, mbind, get_mempolicy, munmap), no allocation.
int numa_nearest_usable(int node);
// mbind: MPOL_BIND (strict) or MPOL_PREFERRED.  0, or the errno of the refusal.
int numa_bind(void* addr, std::size_t len, int node, bool strict, bool move);
// move_pages of the pages of [addr, addr + len) that are resident on another
// node to node: counts the pages moved and those that could not be (their
// per-page status; after a refused move call, those not on node when asked
// again, or all of them when that is refused too; after a refused query, every
// resident page, mincore, of the rest of the range).  With one node nothing
// moves.  0, or the errno of the first refused call (the counts are still
// right: later batches are tried).
int numa_move(void* addr, std::size_t len, int node, std::size_t* moved, std::size_t* failed);
// The node of the page holding p (get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR): the
// kernel faults the page in to answer); -1 on error.
int numa_node_of_address(const void* p);
// Adds the resident bytes of [addr, addr + len) to per_node[node] (move_pages with
// no target: asks the kernel, faults nothing in).
void numa_resident_by_node(const void* addr, std::size_t len, std::size_t* per_node);
NumaPlacementCounters numa_placement_counters();
// LIBCALLOC_OPTIONS=numa=1: true once node-local thread heaps are on (more than
// one usable node); the process heap's slow paths ask it (inline: a load, on
// every large allocation).
extern std::atomic<bool> g_numa_thread_heaps;
inline bool numa_thread_heaps() { return g_numa_thread_heaps.load(std::memory_order_relaxed); }
void numa_enable_thread_heaps();
#else
inline void numa_init() {}
const NumaTopology& numa_topology();
inline bool numa_built() { return false; }
inline bool numa_node_usable(int node) { return node == 0; }
inline std::uint64_t numa_node_bytes(int) { return 0; }
inline int numa_current_node() { return 0; }
inline int numa_nearest_usable(int) { return 0; }
inline int numa_bind(void*, std::size_t, int, bool, bool) { return 38; /* ENOSYS */ }
inline int numa_move(void*, std::size_t, int, std::size_t* moved, std::size_t* failed) {
  *moved = *failed = 0;
  return 0;
}
inline int numa_node_of_address(const void*) { return 0; }
inline void numa_resident_by_node(const void* addr, std::size_t len, std::size_t* per_node) {
  numa_resident_on_node0(addr, len, per_node);
}
inline NumaPlacementCounters numa_placement_counters() { return {}; }
inline bool numa_thread_heaps() { return false; }
inline void numa_enable_thread_heaps() {}
#endif

}  // namespace lca

#endif
