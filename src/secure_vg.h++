// secure_vg.h++ -- what Valgrind sees of the hardened heap (secure.c++), with
// --enable-valgrind-annotations (CALLOC_VALGRIND; secure_vg.c++ is compiled only
// then).  The contract is vg.h++'s for the core heap, reached with its helpers:
//  - every secure block is a VALGRIND_MALLOCLIKE_BLOCK of exactly the requested
//    size, not zeroed for memcheck (malloc's contract: a read before a write is an
//    uninitialised read, although the hardened heap hands out zeroed memory;
//    calloc marks its bytes defined), and the rest of its slot -- the canary, the
//    slack -- stays no-access, so a read of the canary or an overflow is reported
//    as "0 bytes after a block of size N";
//  - free is a VALGRIND_FREELIKE_BLOCK issued before the heap's own checks, so
//    memcheck's "Invalid free()" (with both stacks) comes before libcalloc's
//    message; the freed slot is no-access and waits in the heap's own quarantine,
//    so a use after free is "inside a block of size N free'd";
//  - the slots of an opened slab that hold no block and large blocks' slack are
//    no-access; the heap brackets its own accesses to them (the zero check at
//    hand-out and in trim, the canary check, the wipe) with secure_vg_own and
//    secure_vg_disown;
//  - destroying a SecureAllocator frees, for memcheck, every block still in it;
//  - no table of the heap holds a plain pointer to a live block (the large-block
//    table keeps its keys encoded), so a leaked block is "definitely lost";
//  - every entry point holds VgSerial (vg.h++), and the heap's memory stays out of
//    helgrind's and DRD's race checking (os.h++ hides its mappings, a freed slot
//    is hidden again, a block handed out is shown clean).
// In Valgrind mode the thread caches are off (every call takes the class lock).
// Without the annotations -- and in an ASan build, whose "Valgrind mode" the
// hardened heap does not join -- secure_vg() is false and every hook here is an
// empty inline.
#ifndef LCA_SECURE_VG_HXX
#define LCA_SECURE_VG_HXX

#include <cstddef>

#include "config.h"
#include "vg.h++"

namespace lca {

#if CALLOC_VALGRIND
// Valgrind mode, for the hardened heap.
inline bool secure_vg() { return on_valgrind(); }
// n bytes at p (in a slab or a large block's mapping) are the heap's for an
// access of its own: defined.
void secure_vg_own(const void* p, std::size_t n);
// ... and no-access again (free slots, canaries, slack).
void secure_vg_disown(const void* p, std::size_t n);
// A block of `size` bytes at p was handed out; the `extent` bytes from p (its slot,
// or up to a large block's trailing guard page) are the heap's after it.
void secure_vg_allocated(void* p, std::size_t size, std::size_t extent);
// calloc: the n bytes at p are defined (the heap zeroed them).
void secure_vg_zeroed(const void* p, std::size_t n);
// A free of p is about to be checked: memcheck's report first.
void secure_vg_freeing(const void* p);
// The freed block's `extent` bytes at p are the heap's again (no-access, hidden).
void secure_vg_freed(const void* p, std::size_t extent);
// A block resized in place from old_size to size bytes in a slot of `extent`
// bytes from p (the heap owned the bytes after old_size during the resize).
void secure_vg_resized(void* p, std::size_t old_size, std::size_t size, std::size_t extent);
// A live block that goes away without a free (its heap is destroyed).
void secure_vg_forgotten(const void* p);
#else
constexpr bool secure_vg() { return false; }
inline void secure_vg_own(const void*, std::size_t) {}
inline void secure_vg_disown(const void*, std::size_t) {}
inline void secure_vg_allocated(void*, std::size_t, std::size_t) {}
inline void secure_vg_zeroed(const void*, std::size_t) {}
inline void secure_vg_freeing(const void*) {}
inline void secure_vg_freed(const void*, std::size_t) {}
inline void secure_vg_resized(void*, std::size_t, std::size_t, std::size_t) {}
inline void secure_vg_forgotten(const void*) {}
#endif

}  // namespace lca

#endif
