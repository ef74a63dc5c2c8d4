// custom_alloc/allocation_tracker.h++ -- allocation tracking: leak detection and
// hot allocation sites (libcalloc configured with --enable-tracking).
//
// AllocationTracker records the blocks its user tells it about, with the stack
// that allocated each one (libcalloc's unwinder), and reports what is still live (leaks)
// and where allocations come from (hot sites).  It works with any heap: it only
// sees the addresses and sizes passed to track_allocation / track_deallocation.
// Its own bookkeeping uses the ordinary C++ containers of this header, so it
// must not be called from inside an allocator's malloc.
//
// The process heap (malloc, operator new) tracks itself without this class when
// LIBCALLOC_OPTIONS asks (leak_report=1, profile=PATH, sample=BYTES; see
// docs/guide/tracking.md); dump_process_profile() writes that profile on demand.
// A libcalloc built without --enable-tracking has none of these symbols.
#ifndef CUSTOM_ALLOC_ALLOCATION_TRACKER_HXX
#define CUSTOM_ALLOC_ALLOCATION_TRACKER_HXX

#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <custom_alloc/memory_allocator.h++>

namespace custom_alloc {

class CUSTOM_ALLOC_EXPORT AllocationTracker {
 public:
  struct AllocationInfo {
    void* address;
    size_t size;
    std::vector<void*> stack_trace;  // return addresses, innermost (the allocating function) first
    std::chrono::time_point<std::chrono::steady_clock> timestamp;
    std::thread::id thread_id;
  };

  AllocationTracker() = default;
  AllocationTracker(const AllocationTracker&) = delete;
  AllocationTracker& operator=(const AllocationTracker&) = delete;

  // Records a live block of `size` bytes at ptr, with the caller's stack.
  // A null ptr is ignored; an address already live is replaced (its block was
  // freed without track_deallocation) and counted in untracked_frees.
  void track_allocation(void* ptr, size_t size);
  // Forgets the block at ptr.  An address that is not live (never tracked, or
  // forgotten already) changes nothing but the count untracked_frees.
  void track_deallocation(void* ptr);

  // The blocks still live, largest first (then oldest first).
  std::vector<AllocationInfo> get_leaks() const;

  struct Profile {
    std::map<std::vector<void*>, size_t> allocation_sites;  // stack -> count
    size_t total_allocations;
    size_t total_bytes_allocated;
    // Time spent inside track_allocation (stack capture and bookkeeping): what
    // tracking costs the program, since the allocation itself happens outside.
    std::chrono::microseconds total_allocation_time;
    // Beyond the request: bytes per site, live blocks and bytes now, and the
    // deallocations of addresses that were not live.
    std::map<std::vector<void*>, size_t> bytes_per_site;
    size_t live_allocations;
    size_t live_bytes;
    size_t untracked_frees;
  };

  Profile generate_profile() const;

  // Leaks grouped by stack, largest first, each stack symbolised (function names
  // demangled, module and offset), then the hot sites and a summary line.
  void print_report(std::ostream& out) const;

  // The function containing addr, demangled ("ns::f(int)+0x1c"), followed by
  // " (module)"; "0xADDR (module+0xOFF)" when no symbol is known.  addr is
  // read as a return address, as in stack_trace: the function is the one
  // holding addr - 1 (the call), so a call at the very end of a function names
  // that function.  For a function's own entry address pass addr + 1: the
  // entry itself names the code before it, or nothing.
  static std::string symbol_name(void* addr);

  // The program-wide tracker (the request's g_allocation_tracker): made on
  // first use and never destroyed, so static destructors may still use it.
  static AllocationTracker& global();

 private:
  // Per-stack totals since the tracker was made.
  struct SiteTotals {
    size_t count = 0;
    size_t bytes = 0;
  };

  std::unordered_map<void*, AllocationInfo> active_allocations_;
  mutable std::mutex tracker_mutex_;
  std::map<std::vector<void*>, SiteTotals> sites_;
  size_t total_allocations_ = 0;
  size_t total_bytes_allocated_ = 0;
  size_t untracked_frees_ = 0;
  std::chrono::nanoseconds tracking_time_{0};

  std::vector<void*> capture_stack_trace(int max_depth = 16);
  std::string resolve_symbol(void* addr);
};

// Output formats of the process heap's profile.
enum class ProfileFormat {
  text,       // human-readable: hot sites with calls, bytes, live bytes, symbolised stacks
  collapsed,  // "root;caller;allocator BYTES" lines, for flamegraph.pl and speedscope
  pprof,      // gperftools' heap profile, for google-pprof / pprof
};

// Writes the process heap's tracking data now (the same as at exit with
// LIBCALLOC_OPTIONS=profile=PATH).  "-" or nullptr writes to stderr; "%p" in
// path becomes the process id.  False (errno set) when tracking of the process
// heap is off or the file cannot be written.
CUSTOM_ALLOC_EXPORT bool dump_process_profile(const char* path, ProfileFormat format = ProfileFormat::text);

}  // namespace custom_alloc

// Global tracker (optional compilation flag), as in the request: define
// ENABLE_ALLOCATION_TRACKING before including this header.  A name for
// AllocationTracker::global() rather than an object defined in the library,
// which would be destroyed at exit while other static destructors may still
// report their frees to it, and could be used before its construction.
#ifdef ENABLE_ALLOCATION_TRACKING
#define g_allocation_tracker (::custom_alloc::AllocationTracker::global())
#endif

#endif
