// custom_alloc/numa_allocator.h++ -- a heap whose memory sits on NUMA nodes.
//
// A NUMAAllocator is an independent heap with one sub-heap per NUMA node: every
// chunk and large mapping of a node's sub-heap is bound to that node (mbind,
// MPOL_PREFERRED by default, MPOL_BIND with Binding::strict).  allocate() serves
// the caller from the node of the CPU it runs on now (a thread that moves to
// another node allocates there from its next call), allocate_on_node() from the
// node named, for every size.  deallocate() from any thread returns a block to
// the sub-heap of its node.  migrate_to_node() moves a block's pages with
// move_pages (data intact).  get_numa_stats() counts local and remote
// allocations and migrations, and asks the kernel where this heap's pages are.
//
// Errors: a node that does not exist, has no memory or is not in the process's
// allowed set (cpuset) gives nullptr / no migration, errno = EINVAL and one
// warning line "libcalloc: warning: NUMAAllocator: invalid node N ...".  When the
// kernel refuses mbind (a seccomp or container policy), the memory stays
// first-touch (the kernel's default) and bind_fallbacks counts it; a refusal
// for the whole process (EPERM, ENOSYS) is reported once, and node requests
// then reuse cached unbound memory.
//
// Built with --disable-numa (or without libnuma) the class exists and describes
// one node, 0.  Every member is thread-safe.
#ifndef CUSTOM_ALLOC_NUMA_ALLOCATOR_HXX
#define CUSTOM_ALLOC_NUMA_ALLOCATOR_HXX

#include <atomic>
#include <cstddef>
#include <map>
#include <mutex>

#include <custom_alloc/memory_allocator.h++>

namespace lca { struct NumaNodeHeaps; }  // the node heaps, for the defragmentation engine (src/numa.h++)

namespace custom_alloc {

class CUSTOM_ALLOC_EXPORT NUMAAllocator : public MemoryAllocator {
 public:
  enum class Binding {
    preferred,  // MPOL_PREFERRED: the node first, another one when it is full
    // MPOL_BIND: that node only.  A request larger than the node's memory
    // fails (nullptr, errno ENOMEM, a warning).  Pages come at first touch, so
    // one that fits the node but not its free memory does not fail: touching a
    // page the node cannot supply wakes the kernel's OOM killer (SIGKILL).
    strict,
  };

  struct NUMAStats {
    std::size_t local_allocations;   // served from the caller's own node
    std::size_t remote_allocations;  // allocate_on_node for another node than the caller's
    std::size_t migrations;          // migrate_to_node calls that moved pages
    // Bytes of this heap's memory resident on each node, as the kernel reports it
    // (move_pages without a target over every chunk and large block): not a
    // count kept by libcalloc.  Nodes with none are absent.
    std::map<int, std::size_t> per_node_usage;
    std::size_t migrated_pages;      // pages move_pages moved
    // Resident pages on another node that migrate_to_node could not move
    // (shared, locked, or move_pages refused: EPERM under a seccomp policy,
    // ENOMEM...), one per page, not per call.  When the kernel refuses to say
    // where the pages are, every resident page left of the range counts.
    std::size_t migration_failures;
    std::size_t bind_fallbacks;      // fresh chunks and mappings left unbound (mbind refused)
    std::size_t invalid_requests;    // calls refused with EINVAL (bad node or range)
  };

  explicit NUMAAllocator(Binding binding = Binding::preferred);
  ~NUMAAllocator() override;

  // From the node of the calling thread's CPU (nearest node with memory when that
  // node has none).
  void* allocate(std::size_t size, std::size_t alignment = ALIGNMENT) override;
  // Any block of any libcalloc heap; blocks of this one go back to their node.
  void deallocate(void* ptr) override;

  // size bytes on `node`, every size (slab, arena, large).  nullptr and errno =
  // EINVAL for a bad node, ENOMEM when memory is short.
  void* allocate_on_node(std::size_t size, int node);
  // Moves the resident pages of [ptr, ptr + size) to target_node (the whole pages
  // they lie on: neighbours on those pages move too).  Pages never touched have
  // nothing to move; with one node nothing moves.  errno = EINVAL and nothing
  // moved for a bad node, or for a range that runs past the end of the address
  // space; the kernel's errno when it refused a move_pages call (the pages it
  // did not move count in migration_failures).
  void migrate_to_node(void* ptr, std::size_t size, int target_node);

  NUMAStats get_numa_stats() const;
  // MemoryAllocator's statistics and trim() over every node heap of this
  // allocator (MemoryAllocator's own, called through a base reference, see only
  // the base heap, which serves nothing but a node heap's failures).
  Stats get_stats() const;
  void trim();

  // The request declares these two private; they are public here so that tests
  // and users can check and pin placement themselves.
  // The node of the CPU the calling thread runs on now.
  int get_current_node() const;
  // Binds the pages of [ptr, ptr + size) to node and moves those resident
  // (mbind MPOL_MF_MOVE), with this allocator's Binding.  Returns false (errno
  // set: EINVAL bad node or a range past the end of the address space, else the
  // kernel's refusal, counted in bind_fallbacks).
  bool bind_memory_to_node(void* ptr, std::size_t size, int node);

  // Topology, read once: highest node + 1; whether node exists, has memory and
  // is allowed; where the kernel says p's page is (-1 on error: it faults the
  // page in); SLIT distance (10 = local); whether NUMA support is compiled in.
  static int node_count();
  static bool node_usable(int node);
  static int node_of_address(const void* p);
  static int node_distance(int a, int b);
  static bool numa_supported();

 private:
  friend struct ::lca::NumaNodeHeaps;
  ::lca::Domain* node_domain(int node);
  bool check_node(int node, const char* what);

  Binding binding_;
  mutable std::mutex lock_;  // creation of node heaps
  std::atomic<::lca::Domain*> nodes_[64] = {};  // per node, made at first use
  std::atomic<std::size_t> local_{0}, remote_{0}, migrations_{0}, migrated_pages_{0};
  std::atomic<std::size_t> migration_failures_{0}, bind_fallbacks_{0}, invalid_{0};
};

}  // namespace custom_alloc

#endif
