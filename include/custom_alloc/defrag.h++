// custom_alloc/defrag.h++ -- defragmentation: the fragmentation metric, a
// relocation engine for raw-pointer heaps, and a handle heap whose objects move
// while other threads use them (configure --enable-defrag, the default).
//
// DefragmentationEngine works on an independent heap (`MemoryAllocator alloc;`)
// whose owner accepts that its objects move.  Per size class it compacts the
// spans with two fingers: objects leave the spans of the sparsest chunks (and
// the sparsest spans) for the free slots of the densest, lowest slots first,
// until every span but one is full and that one holds its objects at its start.
// Arena blocks move into the first free hole before them in the order (densest
// chunk, address), keeping the alignment their address has (up to a page).  The
// engine calls callback(old, new, size) once per move -- after the bytes are
// copied, before the old place is freed -- then returns the emptied spans and
// chunks to the OS and uncarves the free tails of partly full spans.  Large
// blocks (above 1 MiB, one mapping each) never move.
//
// THE CALLER'S CONTRACT: the callback is where the owner updates its references;
// it must not allocate, free, resize or trim in the heap being defragmented
// (such a call aborts with "libcalloc: Heap used during its defragmentation of
// ADDR: ..."; the heap's lock is recursive and would let it through).  It may
// read the heap: get_allocation_size of the old or the new place (both are live
// blocks during the callback) or of any other block, get_stats (which counts
// the new place and not yet the free of the old), analyze and
// calculate_fragmentation; and it may use other heaps.  No other thread
// may use the heap's raw pointers while a pass runs (allocate and deallocate
// from other threads are safe: they wait for the pass's lock).  A callback that
// throws stops the pass cleanly: the block it was told of stays at its old
// address (the new place is freed), the blocks moved before it keep their new
// places, and the exception reaches the caller.  The process heap
// (MemoryAllocator::instance(), the one behind malloc) is refused with
// "libcalloc: Defragmentation refused of ADDR: ..." and abort(): its pointers
// are not ours to move; so is a HandleAllocator (it moves its objects itself;
// analyze and calculate_fragmentation measure it) and a SecureAllocator (its
// blocks never move).  analyze and calculate_fragmentation of the process
// heap or a SecureAllocator abort with "libcalloc: Fragmentation analysis
// refused of ADDR: ...": the engine walks independent heaps only (get_stats and
// lca_get_stats have the others' counters).
//
// A NUMAAllocator is one heap per node (and a base heap that serves only what
// a node heap could not): analyze and calculate_fragmentation measure them all
// together, analyze_node one node's; defragment compacts each node heap in
// turn and moves every block within its own node heap, so its new place is
// memory bound to the same node (a block from allocate_on_node(n) stays on n;
// pages that migrate_to_node moved elsewhere are not followed: the block goes
// back to its heap's node).  One budget covers the whole pass, and a round of
// budgeted passes goes through the heaps in turn, each resuming where the last
// pass stopped.  The callback must not use the NUMAAllocator at all; the check
// above catches uses of the node heap being compacted.
//
// HandleAllocator hands out handles instead of pointers.  resolve(h) costs a few
// loads and a store; defragment() moves objects while other threads allocate,
// resolve, pin and free.  THE VALIDITY RULE: a pointer returned by resolve(h)
// stays valid until the same thread's next call into the same HandleAllocator
// (resolve, try_resolve, pin, allocate_handle, deallocate_handle, handle_size,
// defragment, relocate, offline; releasing a pin is not a call) -- userspace
// RCU's quiescent-state rule.  A pointer needed across such calls is pinned:
// `auto g = alloc.pin(h);` keeps the object in place until the guard dies.  The
// mover waits for every thread that may still hold a pointer from resolve to
// make its next call; a thread that resolved and then does something else for
// long should call offline() (calls that return no pointer, and thread exit, do
// it themselves).  Moving never waits forever: an object whose holders do not
// pass a quiescent point in time (5 ms) is left where it is and counted
// (objects_skipped); a reader that finds an object about to move takes it back
// after 50 us, and one that finds it being copied waits for that one copy.
// A freed, stale or forged handle is detected (a slot index and a generation;
// each heap starts its generations at a value of its own, so a handle of another
// heap, or of a destroyed one, is "Invalid" here too):
// resolve, pin, handle_size and deallocate_handle abort with "libcalloc: Stale
// handle of 0x...: ..." or "libcalloc: Invalid handle of 0x...: ..."
// (deallocate_handle of a pinned handle: "Invalid free"); try_resolve returns
// nullptr instead.  A handle's object is freed by deallocate_handle only:
// deallocate(resolve(h)), free, lca_free or another heap's deallocate of it
// aborts with "libcalloc: Invalid free of ADDR: the block is a handle's object
// (HandleAllocator): free it with deallocate_handle", and realloc, reallocate
// or try_realloc_inplace of it with "libcalloc: Invalid realloc of ADDR: ..."
// (its size is fixed, and a moved block would leave the handle naming the
// freed place) -- before anything changes.  Under Valgrind the old place of a moved object is a freed
// block to memcheck, so a stale pointer into it is reported.
#ifndef CUSTOM_ALLOC_DEFRAG_HXX
#define CUSTOM_ALLOC_DEFRAG_HXX

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>

#include <custom_alloc/memory_allocator.h++>

namespace lca { struct HandleTable; }  // the handle heap's state (src/defrag.c++)

namespace custom_alloc {

class NUMAAllocator;

// What one pass may do before it returns (a pass stops at the first limit it
// reaches and says whether work remains; every limit lets it move one object
// or finish one piece of work at least, so that passes converge: a max_objects
// or max_bytes of 0 counts as 1 object).  The
// defaults: no limit.  Budgeted passes of the raw engine make a round: each
// resumes where the previous one stopped -- the size classes in order, the
// arena blocks, then returning the emptied memory to the OS, itself a piece
// (a chunk purged or unmapped) per pass -- until one ends with work_remaining
// false.  A pass may overrun max_time by one piece: one move, one size class's
// plan, one chunk unmapped.  A pass with no limit does the whole heap from the
// start, whatever a round left.
struct DefragBudget {
  std::size_t max_bytes = SIZE_MAX;    // bytes moved
  std::size_t max_objects = SIZE_MAX;  // objects moved
  std::chrono::microseconds max_time = std::chrono::microseconds::max();  // wall time of the pass
  // Fill fragmentation_before/after (two walks of the heap's objects, outside
  // the time budget but under the heap's lock); false leaves them at -1.
  // (DefragmentationEngine only: HandleAllocator::defragment always fills
  // them, from the heap's spans and arena chunks without walking objects.)
  bool measure = true;
};

// The fragmentation of a heap.  "Held" is what the heap's blocks occupy: the
// carved part of every span in use (slots below its bump pointer), each arena
// chunk in use from its first block to the end of its last allocated block, and
// the pages of every large block.  Memory the heap keeps but no block occupies
// (uncarved slots, the free tail of an arena chunk, cached empty chunks) is not
// held: it is address space, mostly not resident, and compaction cannot shrink
// it further.  fragmentation = 1 - live_bytes / held_bytes (0 for an empty heap).
struct FragmentationReport {
  std::size_t live_bytes;         // usable bytes of the live blocks
  std::size_t held_bytes;         // see above
  std::size_t trapped_bytes;      // free bytes inside held spans and arena runs
  std::size_t largest_free_run;   // the largest free run inside held memory, bytes
  std::size_t spans_in_use;
  std::size_t arena_chunks_in_use;
  std::size_t os_memory_mapped;   // the heap's whole mapping, as get_stats() says
  double fragmentation;
};

class CUSTOM_ALLOC_EXPORT DefragmentationEngine {
 public:
  struct DefragStats {
    std::size_t bytes_moved;         // usable bytes copied
    std::size_t objects_relocated;   // moves (one callback each)
    // Free blocks merged: spans emptied and released, plus arena holes
    // coalesced with a neighbour when a moved block left its place.
    std::size_t free_blocks_merged;
    std::chrono::microseconds duration;
    std::size_t objects_skipped;     // pinned, busy, or no room in a denser place
    std::size_t bytes_released;      // os_memory_mapped before - after (0 if it grew)
    double fragmentation_before;
    double fragmentation_after;
    bool work_remaining;             // a budget stopped the pass early
  };

  using RelocationCallback = std::function<void(void* old_addr, void* new_addr, std::size_t size)>;

  // One full pass (no budget).
  DefragStats defragment(MemoryAllocator& allocator, RelocationCallback callback);
  // One incremental pass within `budget`; repeated passes converge.
  DefragStats defragment(MemoryAllocator& allocator, RelocationCallback callback, const DefragBudget& budget);

  float calculate_fragmentation(const MemoryAllocator& allocator);
  FragmentationReport analyze(const MemoryAllocator& allocator);
  // The heap of one node of a NUMAAllocator (all zero when no block was ever
  // allocated on it).  A node outside 0 .. NUMAAllocator::node_count() - 1
  // aborts with "libcalloc: Fragmentation analysis refused of ADDR: ...".
  FragmentationReport analyze_node(const NUMAAllocator& allocator, int node);
};

// A handle: slot index (low 32 bits) and generation (high 32 bits); 0 is never a
// valid handle.
using Handle = std::uint64_t;

class CUSTOM_ALLOC_EXPORT HandleAllocator : public MemoryAllocator {
 public:
  // Keeps an object in place (the mover skips it) and its pointer valid until
  // the guard is destroyed or released.  A guard must not outlive its heap:
  // releasing or destroying it after the HandleAllocator is gone aborts with
  // "libcalloc: Invalid pin release of 0x...: the PinGuard outlived its
  // HandleAllocator ..." (a destroyed heap's table is kept, without slots,
  // and reused by the next HandleAllocator).
  class CUSTOM_ALLOC_EXPORT PinGuard {
   public:
    PinGuard() = default;
    PinGuard(PinGuard&& o) noexcept : table_(o.table_), handle_(o.handle_), ptr_(o.ptr_) { o.table_ = nullptr; }
    PinGuard& operator=(PinGuard&& o) noexcept;
    PinGuard(const PinGuard&) = delete;
    PinGuard& operator=(const PinGuard&) = delete;
    ~PinGuard() { release(); }
    void* get() const noexcept { return ptr_; }
    template <class T>
    T* as() const noexcept {
      return static_cast<T*>(ptr_);
    }
    explicit operator bool() const noexcept { return table_ != nullptr; }
    void release() noexcept;

   private:
    friend class HandleAllocator;
    PinGuard(::lca::HandleTable* t, Handle h, void* p) : table_(t), handle_(h), ptr_(p) {}
    ::lca::HandleTable* table_ = nullptr;
    Handle handle_ = 0;
    void* ptr_ = nullptr;
  };

  struct HandleStats {
    std::size_t live_handles;
    std::size_t moves;             // objects moved since the heap was made
    std::size_t moves_abandoned;   // marked but given up (readers too slow or a reader took it back)
    std::size_t reader_waits;      // resolve, pin and deallocate_handle calls that found their object
                                   // marked or being copied (and waited; try_resolve is not counted)
  };

  HandleAllocator();
  ~HandleAllocator() override;

  // A handle to `size` bytes (16-byte aligned); 0 with errno = ENOMEM.
  Handle allocate_handle(std::size_t size);
  // Frees h's object; 0 (no handle) does nothing, as free(NULL).
  void deallocate_handle(Handle h);
  // The object's current address: valid by the rule above.
  void* resolve(Handle h);
  // As resolve, but nullptr for a freed, stale or forged handle.
  void* try_resolve(Handle h) noexcept;
  // The size asked for at allocate_handle.
  std::size_t handle_size(Handle h);
  PinGuard pin(Handle h);

  // One pass over the whole heap (runs concurrently with the other members).
  void defragment();
  DefragmentationEngine::DefragStats defragment(const DefragBudget& budget);
  // Moves one object now, wherever it lies (false: pinned, busy, or no memory).
  bool relocate(Handle h);
  // The calling thread holds no pointer of this heap until its next call.
  void offline() noexcept;

  HandleStats handle_stats() const;
  float fragmentation() const;

  // Raw-pointer members of MemoryAllocator still work, but their blocks are not
  // handles and never move.  They refuse a handle's object (see above).

 private:
  ::lca::HandleTable* table_;
};

}  // namespace custom_alloc

#endif
