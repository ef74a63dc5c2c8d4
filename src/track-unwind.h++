// track-unwind.h++ -- stack capture for allocation tracking (configure
// --enable-tracking): our own x86-64 frame walker with its shared frame cache,
// and libgcc_s / libunwind as fallbacks.  See track-unwind.c++.
#ifndef LCA_TRACK_UNWIND_HXX
#define LCA_TRACK_UNWIND_HXX

#include <cstddef>
#include <cstdint>

#include "config.h"

#if !CALLOC_TRACKING
#error "track-unwind.h++ is part of --enable-tracking builds only"
#endif

// The code that a sampled allocation (and every program's start and exit)
// runs in this module and track.c++ goes into one section, which GNU ld puts
// at the start of .text (.text.hot.*), next to the PLT and before the heap's
// code: the kernel maps a library's text in 64 KiB fault-around windows, and
// this keeps sampling out of windows that no other code of a running program
// touches.  Without it the walker sat in a window of its own: +64 KiB of RSS
// for any sampled program (docs/design.md, "Sampling's text").  The exit-time
// reports stay in .text.  A function given the section is never split into
// hot and cold parts; its inline callees come with it.
#define LCA_SAMPLING_TEXT __attribute__((section(".text.hot.lca_sampling")))

namespace lca {

// Loads the fallback unwinders (libgcc_s; libunwind only when libgcc_s is
// missing), once; later calls return at once.
void unwind_init();

// Return addresses from the one into unwind_capture's caller up, at most max
// (<= kUnwindMaxFrames); returns the count (0 when no unwinder works).  Our
// walker first; a capture it cannot finish is made again by libgcc_s's
// _Unwind_Backtrace (or, without libgcc_s, libunwind's unw_step).  Never
// allocates (but a thread's first capture reads its stack bounds with
// pthread_getattr_np, which may): call it with the thread marked busy.
constexpr int kUnwindMaxFrames = 64;
int unwind_capture(void** out, int max);

// What the calling thread's last unwind_capture knows of the objects its
// frames lie in: all in objects never unloaded (the program, its startup
// libraries, ld.so); checked: some may be in objects dlopen loaded (or the
// walk parsed a rule), and the walk's generation check read dl_iterate_phdr's
// counters of objects added and removed (unwind_last_counters); or unknown (a
// fallback unwinder walked, or another architecture).
enum class CaptureObjects : unsigned char { permanent, checked, unknown };
extern constinit thread_local CaptureObjects tls_objects __attribute__((tls_model("initial-exec")));
void unwind_last_counters(unsigned long long* adds, unsigned long long* subs);

// fork (lifecycle.c++'s handlers, before the tracker's locks): prefork waits
// until no thread is inside a walk (which holds the loader's lock, inside
// dl_iterate_phdr, and this module's cache lock) and keeps new walks out
// (they fall back meanwhile); the child re-initialises.
void unwind_prefork();
void unwind_postfork_parent();
void unwind_postfork_child();

// Around a dl_iterate_phdr of the tracker's outside a walk (track-modules.c++'s
// log): unwind_enter_loader takes the lock fork's prepare handler takes, shared,
// so that no thread is inside the loader's list lock when the process forks;
// false (and nothing taken) when a fork is under way.  unwind_leave_loader
// releases it.  Outside the own walker's builds: always true, nothing taken.
bool unwind_enter_loader();
void unwind_leave_loader();

// Memory for the frame cache: track.c++'s pool of OS-backed pieces (zeroed).
void* track_pool_alloc(std::size_t bytes);

// The GNU build ID among the ELF notes in the n bytes at notes (a PT_NOTE
// segment or an SHT_NOTE section): its bytes, their count in *size; nullptr
// when there is none or a note runs past the end.  Used here to tell a file
// from the object mapped, and by track.c++ to find separate debug files.
const unsigned char* elf_notes_build_id(const unsigned char* notes, std::size_t n, std::size_t* size);

// --- test hooks (tests/unit/track-unwind.c++) -----------------------------------
// Our walker alone, in unwind_capture's shape: -1 when it could not finish
// (the capture would fall back); 0 frames on other architectures (-1 too).
int unwind_capture_ours(void** out, int max);
// libunwind's unw_step loop, the same shape (libunwind loaded on first use);
// -1 when libunwind cannot be loaded.
int unwind_capture_step(void** out, int max);
struct UnwindStats {
  std::uint64_t captures;   // by our walker (finished or not); other threads' last <= 63 not yet counted
  std::uint64_t fallbacks;  // of those, made again by a fallback unwinder
  std::uint64_t hits, misses, uncached;  // frame rules: from the cache, parsed, not representable
  std::uint64_t flushes;    // cache emptied because objects were loaded or unloaded
  std::uint64_t checks;     // generation checks on a hit (rules of objects dlopen could unload)
  std::size_t entries;      // rules in the cache now
  std::size_t bytes;        // cache memory taken from the pool (all tables)
};
UnwindStats unwind_stats();

}  // namespace lca

#endif
