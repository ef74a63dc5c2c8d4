// track.h++ -- allocation tracking of the process heap (configure --enable-tracking).
//
// Included only where CALLOC_TRACKING is defined; the hooks in malloc.c++ and
// remote.c++ sit behind #if CALLOC_TRACKING, so a build without the module
// carries no trace of it.  Two modes, chosen once from LIBCALLOC_OPTIONS:
//  - full (leak_report, or sample=1): every malloc and free of the process heap
//    goes through the slow paths, as in Valgrind mode (tls_heap stays
//    &g_no_heap), where track_malloc records the block and free_cold forgets it;
//  - sample (profile, sample=BYTES): the fast path counts bytes down per thread
//    (tls_track_countdown); when the count passes zero the allocation is made
//    by track_malloc from the arena (whose frees always reach free_cold) and
//    recorded with the weight that makes the estimates unbiased.
#ifndef LCA_TRACK_HXX
#define LCA_TRACK_HXX

#include <cerrno>
#include <cstddef>
#include <cstdint>

#include "config.h"
#include "options.h++"

#if !CALLOC_TRACKING
#error "track.h++ is part of --enable-tracking builds only"
#endif



namespace lca {

enum class TrackMode : unsigned char { off, sample, full };
extern TrackMode g_track_mode;

// Bytes the calling thread may still allocate before its next sample.  Starts
// at 0, so a thread's first allocation reaches track_malloc, which sets it up:
// when sampling, to an interval drawn then, less that allocation's bytes (a
// sample when that is negative); out of reach when sampling is off.
extern constinit thread_local std::int64_t tls_track_countdown __attribute__((tls_model("initial-exec")));

// The fast path's test: true when this allocation of `size` bytes must go to
// track_malloc.  One thread-local subtract and a branch.
// Unsigned arithmetic: a request near SIZE_MAX wraps instead of overflowing,
// and goes to track_malloc, which refuses it as malloc_slow would.
inline bool track_countdown(std::size_t size) {
  auto left = static_cast<std::int64_t>(static_cast<std::uint64_t>(tls_track_countdown) - size);
  tls_track_countdown = left;
  return __builtin_expect(left < 0, 0);
}
inline bool track_full() { return g_track_mode == TrackMode::full; }
inline bool track_active() { return g_track_mode != TrackMode::off; }

// Reads the tracking options and starts tracking (the library constructor).
void track_init(const Options& o);
// The return address of libcalloc's constructor (the library's, run from
// the dynamic loader's call_init when libcalloc.so is loaded): where the
// loader calls every library's constructors, and where a constructor that
// tail-calls malloc leaves its allocation's first frame (see dlopen_records).
void track_note_constructor_caller(const void* ra);
// Writes the reports that the options ask for (the library destructor).
void track_at_exit();
// fork(): called by lifecycle.c++'s handlers (in the lock order they set), not
// registered with pthread_atfork of their own: prefork takes the tracker's locks,
// the parent and the child release them (the child only when `locked`: prefork
// ran), and the child reseeds sampling.
void track_prefork();
void track_postfork_parent();
void track_postfork_child(bool locked);

// An allocation of the process heap that tracking must see (the countdown
// passed zero, or full mode).  Returns the block, or nullptr with errno ENOMEM.
void* track_malloc(std::size_t size, std::size_t alignment);
// calloc of more than kLargeThreshold bytes that tracking must see: as
// track_malloc, zero-filled, a fresh mapping left untouched.
void* track_calloc(std::size_t size);
// A free of any block, before the allocator releases it (free_cold).
void track_free(void* p);
// track_free while tracking is active, errno kept: what every free path of the
// process heap calls before it releases p (free_cold; with --enable-secure,
// the secure heap's free once it has claimed a block marked tracked -- see
// secure_set_tracked -- and the frees of blocks that are not secure ones).
inline void track_forget(void* p) {
  if (!track_active()) return;
  int saved = errno;
  track_free(p);
  errno = saved;
}
// As track_forget, for a block that stays live for now (MemoryAllocator's
// reallocate, which may resize it in place): with --enable-secure its tracked
// mark goes too, and a block without the mark is not looked up.
void track_forget_live(void* p);
// realloc of a live block p of the process heap while tracking is active.
void* track_realloc(void* p, std::size_t size);

// Test hooks: switch tracking of the process heap on or off now, in a
// single-threaded process (a forked child); sample_bytes 0 means full mode.
void track_start_for_test(TrackMode mode, std::size_t sample_bytes);
struct TrackTotals {
  double calls, bytes, live_blocks, live_bytes;  // estimates when sampling
  std::size_t samples;                           // blocks recorded
  std::size_t stacks;                            // distinct stacks interned
};
TrackTotals track_totals();
// Writes the leak report to path now, as the exit handler does; false (errno
// set) when it cannot.
bool track_write_leak_report_for_test(const char* path);
// Waits up to `seconds` until the profile signal has had `n` profiles written
// (since the process started, a forked child counting its parent's); true when
// it has.  Allocates nothing while it waits.
bool track_wait_signal_dumps_for_test(std::uint64_t n, double seconds);
// The calling thread's lookups in the tracker's block table so far (one per
// track_free or realloc that reads it): with --enable-secure, a free of a block
// the tracker did not record makes none.
std::uint64_t track_lookups_for_test();
// The file and line the .debug_line bytes [line, line + len) give the
// module-relative address rel (one uncompressed section, no string sections:
// DW_FORM_string names); false, and nothing written, when no row covers it.
// For crafted tables under 64 KiB (past that the reader gives the pages it
// has read back to the kernel: MADV_DONTNEED).
bool track_line_for_test(const unsigned char* line, std::size_t len, std::uintptr_t rel, const char** file,
                         std::uint32_t* line_no);

// Stack capture and symbolisation, shared with AllocationTracker
// (allocation_tracker.c++).  track_capture fills up to max frames (return
// addresses) after skipping `skip` frames above its caller's; returns the count.
unsigned track_capture(void** frames, unsigned max, unsigned skip);
// "function+0xOFF (module)" of a return address, demangled, into buf (with a
// final NUL; truncated if long).  Allocates (demangling): never from malloc.
// Each call for an address not seen before reads the module's symbol and line
// tables; track_prepare_symbols reads them once for many addresses, which
// later track_symbolize calls then find.
void track_symbolize(const void* addr, char* buf, std::size_t cap);
void track_prepare_symbols(void* const* addrs, std::size_t n);

}  // namespace lca

#endif
