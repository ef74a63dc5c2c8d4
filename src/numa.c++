// numa.c++ -- NUMA topology (libnuma) and the policy that binds heap memory to
// nodes: mbind for fresh chunks and large mappings, move_pages for migration,
// get_mempolicy / move_pages without a target to ask the kernel where pages are.
//
// libnuma is loaded with dlopen by numa_init(), the first time NUMA is asked
// for (a NUMAAllocator, LIBCALLOC_OPTIONS=numa=1), not linked: libnuma's own
// constructor allocates and reads /proc and /sys when it is loaded, and every
// program linked with libcalloc would pay that at start-up, NUMA used or not
// (docs/design.md has the case that showed it).  The topology is read once, into
// constinit tables: libnuma allocates while it parses /sys, so it is never
// called from a malloc path.  The calls the heap makes later are libnuma's
// system-call wrappers (numaif.h: mbind, move_pages, get_mempolicy), which
// allocate nothing, and getcpu() for the caller's node.
#include "numa.h++"
#include "placement.h++"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <dlfcn.h>
#include <type_traits>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "chunk.h++"
#include "os.h++"
#include "report.h++"

namespace lca {

namespace {

// The libnuma functions used, resolved by dlsym (the names of numa.h / numaif.h).
struct Libnuma {
  decltype(&::numa_available) available;
  decltype(&::numa_max_node) max_node;
  decltype(&::numa_node_size64) node_size64;
  decltype(&::numa_get_mems_allowed) get_mems_allowed;
  decltype(&::numa_bitmask_isbitset) bitmask_isbitset;
  decltype(&::numa_bitmask_free) bitmask_free;
  decltype(&::numa_distance) distance;
  decltype(&::mbind) mbind;
  decltype(&::move_pages) move_pages;
  decltype(&::get_mempolicy) get_mempolicy;
  struct bitmask** nodes_ptr;  // numa_nodes_ptr: the nodes that exist
};
constinit Libnuma g_lib{};
// libnuma's soname on every distribution we know (Debian: libnuma1).
constexpr const char* kLibnumaSoname = "libnuma.so.1";

bool load_libnuma() {
  void* h = dlopen(kLibnumaSoname, RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
  Libnuma l{};
  bool ok = true;
  auto get = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
    ok = ok && fn;
  };
  get(l.available, "numa_available");
  get(l.max_node, "numa_max_node");
  get(l.node_size64, "numa_node_size64");
  get(l.get_mems_allowed, "numa_get_mems_allowed");
  get(l.bitmask_isbitset, "numa_bitmask_isbitset");
  get(l.bitmask_free, "numa_bitmask_free");
  get(l.distance, "numa_distance");
  get(l.mbind, "mbind");
  get(l.move_pages, "move_pages");
  get(l.get_mempolicy, "get_mempolicy");
  get(l.nodes_ptr, "numa_nodes_ptr");
  if (!ok) {
    dlclose(h);
    return false;
  }
  g_lib = l;  // kept loaded for the life of the process
  return true;
}

LCA_BIG_BSS(topology) constinit NumaTopology g_topology{};
LCA_BIG_BSS(node_bytes) constinit std::uint64_t g_node_bytes[kNumaMaxNodes]{};  // numa_node_bytes
constinit pthread_once_t g_topology_once = PTHREAD_ONCE_INIT;
constinit std::atomic<std::size_t> g_bound{0};
constinit std::atomic<std::size_t> g_refused{0};

constexpr unsigned long kMaskWords = (kNumaMaxNodes + 63) / 64;

void read_topology() {
  NumaTopology& t = g_topology;
  t.node_count = 1;
  t.usable = 1;
  t.distance[0][0] = 10;
  if (!load_libnuma()) {
    report_warning("NUMA: cannot load libnuma (libnuma.so.1): one node, nothing bound: ", dlerror());
    return;
  }
  if (g_lib.available() < 0) return;
  t.numa_available = true;
  int max = g_lib.max_node();
  if (max >= kNumaMaxNodes) max = kNumaMaxNodes - 1;
  t.node_count = max + 1;
  t.usable = 0;
  struct bitmask* allowed = g_lib.get_mems_allowed();
  for (int n = 0; n <= max; ++n) {
    long long free_bytes = 0;
    long long bytes =
        g_lib.bitmask_isbitset(*g_lib.nodes_ptr, static_cast<unsigned>(n)) ? g_lib.node_size64(n, &free_bytes) : 0;
    bool has_memory = bytes > 0;
    g_node_bytes[n] = has_memory ? static_cast<std::uint64_t>(bytes) : 0;
    bool is_allowed = allowed && g_lib.bitmask_isbitset(allowed, static_cast<unsigned>(n));
    if (has_memory && is_allowed) t.usable |= std::uint64_t{1} << n;
    for (int m = 0; m <= max; ++m) {
      int d = g_lib.distance(n, m);
      t.distance[n][m] = static_cast<std::uint8_t>(d > 0 && d < 256 ? d : (n == m ? 10 : 20));
    }
  }
  if (allowed) g_lib.bitmask_free(allowed);
  if (!t.usable) t.usable = 1;  // nothing readable: behave as one node
}

constinit std::atomic<bool> g_binding_withdrawn{false};

bool place_range(void* addr, std::size_t len, NodePlacement where) {
  if (!numa_node_usable(where.node)) {
    g_refused.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (int err = numa_bind(addr, len, where.node, where.strict, false)) {
    g_refused.fetch_add(1, std::memory_order_relaxed);
    // EPERM (mbind is never asked to move others' pages here, so this is a
    // seccomp or LSM policy: Docker's default profile refuses it without
    // CAP_SYS_NICE) or ENOSYS: every binding of this process would be refused.
    // Said once; the policy is withdrawn, so that chunk and large stop calling
    // mbind and take unbound memory for node requests (chunk_can_place).  Other
    // errors (ENOMEM, EFAULT...) are about one call.
    if ((err == EPERM || err == ENOSYS) && !g_binding_withdrawn.exchange(true)) {
      chunk_set_placement(nullptr);
      report_warning(err == EPERM ? "NUMA: mbind refused (EPERM: a seccomp or container policy?): nothing is bound "
                                    "to a node in this process; memory goes where first touched"
                                  : "NUMA: mbind refused (ENOSYS): nothing is bound to a node in this process; "
                                    "memory goes where first touched");
    }
    return false;
  }
  g_bound.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void init_once() {
  read_topology();
  // Without NUMA in the kernel (or without libnuma) there is nothing to bind:
  // no policy, and node requests take any memory (chunk_can_place).
  if (g_topology.numa_available) chunk_set_placement(place_range);
}

}  // namespace

LCA_CORE_DATA(thread_heaps) constinit std::atomic<bool> g_numa_thread_heaps{false};

void numa_init() { pthread_once(&g_topology_once, init_once); }

const NumaTopology& numa_topology() {
  numa_init();
  return g_topology;
}

std::uint64_t numa_node_bytes(int node) { return numa_node_usable(node) ? g_node_bytes[node] : 0; }

bool numa_node_usable(int node) {
  return node >= 0 && node < g_topology.node_count && ((g_topology.usable >> node) & 1);
}

int numa_current_node() {
  unsigned cpu = 0, node = 0;
  if (getcpu(&cpu, &node) != 0) return 0;
  return static_cast<int>(node);
}

namespace {
// The memory node of each CPU-only node, as the kernel answered it: node + 1, 0
// while not asked yet (numa_nearest_usable).
LCA_BIG_BSS(memory_node) constinit std::atomic<std::uint8_t> g_memory_node[kNumaMaxNodes]{};

// The usable node nearest to node by the SLIT distances, the lowest-numbered of
// those at the least distance: what numa_nearest_usable answers when the
// kernel cannot be asked.
int nearest_by_distance(int node) {
  int best = 0, best_distance = 1 << 30;
  for (int n = 0; n < g_topology.node_count; ++n) {
    if (!numa_node_usable(n)) continue;
    int d = node >= 0 && node < g_topology.node_count ? g_topology.distance[node][n] : 0;
    if (d < best_distance) best = n, best_distance = d;
  }
  return best;
}

// Where the kernel puts a page first touched by the calling thread on the
// CPU-only node `node`: a fresh private page with the local policy (MPOL_LOCAL
// on the range, so that a task policy -- numactl --membind, --interleave --
// does not decide it; without that mbind, only under the default task policy),
// written, then get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR).  That is the first
// node of the CPU's node's fallback list (numa_mem_id()) that has a free page
// and is allowed.  -1 when it cannot be asked, or the thread ran on another
// node meanwhile.  System calls only: nothing is allocated.
int ask_kernel_memory_node(int node) {
  if (!g_lib.get_mempolicy || !g_lib.mbind) return -1;
  std::size_t page = os_page_size();
  void* p = os_map(page);  // os.c++ makes every mmap (the steady-state count)
  if (!p) return -1;
  int answer = -1;
  int mode = -1;
  bool local = g_lib.mbind(p, page, MPOL_LOCAL, nullptr, 0, 0) == 0 ||
               (g_lib.get_mempolicy(&mode, nullptr, 0, nullptr, 0) == 0 && mode == MPOL_DEFAULT);
  if (local && numa_current_node() == node) {
    *static_cast<volatile char*>(p) = 1;  // a read would map the shared zero page
    if (numa_current_node() != node ||
        g_lib.get_mempolicy(&answer, nullptr, 0, p, MPOL_F_NODE | MPOL_F_ADDR) != 0)
      answer = -1;
  }
  os_unmap(p, page);
  return answer;
}
}  // namespace

// A CPU-only node's threads allocate where the kernel's own fallback puts their
// pages: the first node of the node's zonelist (Linux's build_zonelists /
// find_next_best_node; numa_mem_id()).  Among nodes at the same distance the
// kernel prefers the next higher-numbered one, then the less loaded (a count it
// keeps while it builds every node's list), so the distances alone do not tell
// it (4-node guest, all distances 20: CPU-only node 2 -> node 3, node 1 -> 3,
// node 3 -> 0): the kernel is asked, once per node, from a thread running on
// it.  An answer farther than the nearest usable node (that one was full at
// the time) or none (get_mempolicy refused, the thread moved) gives the
// nearest by distance.
int numa_nearest_usable(int node) {
  if (numa_node_usable(node)) return node;
  if (node < 0 || node >= g_topology.node_count) return nearest_by_distance(node);
  if (int known = g_memory_node[node].load(std::memory_order_relaxed)) return known - 1;
  int fallback = nearest_by_distance(node);
  if (numa_current_node() != node) return fallback;  // asked for another CPU's node: not cached
  int answer = ask_kernel_memory_node(node);
  if (answer < 0) {
    if (numa_current_node() != node) return fallback;  // moved meanwhile: asked again next time
    answer = fallback;
  } else if (!numa_node_usable(answer) || g_topology.distance[node][answer] > g_topology.distance[node][fallback]) {
    answer = fallback;
  }
  g_memory_node[node].store(static_cast<std::uint8_t>(answer + 1), std::memory_order_relaxed);
  return answer;
}

int numa_bind(void* addr, std::size_t len, int node, bool strict, bool move) {
  unsigned long mask[kMaskWords] = {};
  mask[node / 64] = 1ul << (node % 64);
  unsigned flags = move ? MPOL_MF_MOVE : 0;
  if (!g_lib.mbind) return ENOSYS;
  if (g_lib.mbind(addr, len, strict ? MPOL_BIND : MPOL_PREFERRED, mask, kNumaMaxNodes + 1, flags) != 0) return errno;
  return 0;
}

int numa_move(void* addr, std::size_t len, int node, std::size_t* moved, std::size_t* failed) {
  *moved = *failed = 0;
  // One node (or no NUMA, or no libnuma): every page is on it already.
  if (g_topology.node_count <= 1) return 0;
  if (!g_lib.move_pages) return ENOSYS;
  std::size_t page = os_page_size();
  auto lo = reinterpret_cast<std::uintptr_t>(addr) & ~(page - 1);
  auto hi = (reinterpret_cast<std::uintptr_t>(addr) + len + page - 1) & ~(page - 1);
  constexpr std::size_t kBatch = 256;
  void* pages[kBatch];
  int nodes[kBatch];
  int status[kBatch];
  int err = 0;
  while (lo < hi) {
    // First ask where the pages are: only resident pages on another node move
    // (and count as moved).
    std::size_t n = 0;
    void* query[kBatch];
    for (std::size_t k = 0; k < kBatch && lo < hi; ++k, lo += page) query[k] = reinterpret_cast<void*>(lo), ++n;
    if (g_lib.move_pages(0, n, query, nullptr, status, 0) < 0) {
      // Where the pages are is not known: every resident page of the rest of
      // the range counts as one that could not be moved.
      err = err ? err : errno;
      *failed += numa_resident_pages(reinterpret_cast<std::uintptr_t>(query[0]), hi, page);
      break;
    }
    std::size_t queried = n;
    n = 0;
    for (std::size_t k = 0; k < queried; ++k) {
      if (status[k] >= 0 && status[k] != node) {
        pages[n] = query[k];
        nodes[n++] = node;
      } else if (status[k] < 0 && status[k] != -ENOENT && status[k] != -EFAULT) {
        ++*failed;  // (-ENOENT: never touched; -EFAULT: the shared zero page, no data)
      }
    }
    if (!n) continue;
    if (g_lib.move_pages(0, n, pages, nodes, status, MPOL_MF_MOVE) < 0) {
      // Refused (EPERM from a seccomp policy, ENOMEM...): the statuses are not
      // written, and some pages may have moved before the error.  Ask where
      // they are now; the count below sees each page on the target as moved,
      // any other as failed.  Nothing known: all of them failed.
      err = err ? err : errno;
      if (g_lib.move_pages(0, n, pages, nullptr, status, 0) < 0) {
        *failed += n;
        continue;
      }
    } else {
      // -EBUSY: the page was held for a moment (fresh pages wait in a per-CPU
      // list before they reach the LRU, where migration finds them): try those
      // again.
      for (int retry = 0; retry < 3; ++retry) {
        std::size_t busy = 0;
        for (std::size_t i = 0; i < n; ++i)
          if (status[i] == -EBUSY) ++busy;
        if (!busy) break;
        sched_yield();
        for (std::size_t i = 0; i < n; ++i) {
          if (status[i] != -EBUSY) continue;
          int one_status = 0;
          if (g_lib.move_pages(0, 1, &pages[i], &nodes[i], &one_status, MPOL_MF_MOVE) == 0) status[i] = one_status;
        }
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (status[i] == node)
        ++*moved;
      else if (status[i] != -ENOENT)  // -ENOENT: never touched, nothing to move
        ++*failed;
    }
  }
  return err;
}

int numa_node_of_address(const void* p) {
  int node = -1;
  if (!g_lib.get_mempolicy) return numa_node_usable(0) ? 0 : -1;
  if (g_lib.get_mempolicy(&node, nullptr, 0, const_cast<void*>(p), MPOL_F_NODE | MPOL_F_ADDR) != 0) return -1;
  return node;
}

void numa_resident_by_node(const void* addr, std::size_t len, std::size_t* per_node) {
  if (!g_lib.move_pages) return numa_resident_on_node0(addr, len, per_node);
  std::size_t page = os_page_size();
  auto lo = reinterpret_cast<std::uintptr_t>(addr) & ~(page - 1);
  auto hi = (reinterpret_cast<std::uintptr_t>(addr) + len + page - 1) & ~(page - 1);
  constexpr std::size_t kBatch = 256;
  void* pages[kBatch];
  int status[kBatch];
  while (lo < hi) {
    std::size_t n = 0;
    for (; n < kBatch && lo < hi; ++n, lo += page) pages[n] = reinterpret_cast<void*>(lo);
    if (g_lib.move_pages(0, n, pages, nullptr, status, 0) < 0) return;
    for (std::size_t i = 0; i < n; ++i)
      if (status[i] >= 0 && status[i] < kNumaMaxNodes) per_node[status[i]] += page;
  }
}

NumaPlacementCounters numa_placement_counters() {
  return {g_bound.load(std::memory_order_relaxed), g_refused.load(std::memory_order_relaxed)};
}

void numa_enable_thread_heaps() {
  numa_init();
  if (__builtin_popcountll(g_topology.usable) > 1) g_numa_thread_heaps.store(true, std::memory_order_relaxed);
}

}  // namespace lca
