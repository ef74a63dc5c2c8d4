// track-modules.h++ -- the log of loaded objects that allocation tracking
// (configure --enable-tracking) names frames through: which objects were
// loaded where, by generation of the loader's list.  See track-modules.c++.
#ifndef LCA_TRACK_MODULES_HXX
#define LCA_TRACK_MODULES_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"

#if !CALLOC_TRACKING
#error "track-modules.h++ is part of --enable-tracking builds only"
#endif

namespace lca {

// One load of an object seen by the log: loaded at base, its PT_LOAD
// segments spanning [lo, hi), from the file path ("" for the program); seen
// loaded in the generations first..last (a reload at the same base from the
// same path continues the record).
struct LoadedObject {
  std::uintptr_t base, lo, hi;
  const char* path;
  std::uint32_t first;
  // last: written under the log's lock, read by report writers without it.
  std::atomic<std::uint32_t> last;
  const LoadedObject* next;  // the log, newest first
};

// The log's generation for the objects loaded now: dl_iterate_phdr's counters
// of objects added and removed are compared with those of the log's newest
// generation, and a new generation is logged (every object's path, base and
// range) when they differ.  Called when a stack is interned (once per
// distinct stack, never on the malloc and free fast paths).  0 when it cannot
// tell: in Valgrind mode (the loader's lock must not be taken there, see
// unwind_capture), while a fork is under way, without the counters (glibc
// before 2.4), or out of memory.
std::uint32_t modules_generation();

// Generations are below 1 << 24 (a site keeps one in 24 bits): past that,
// modules_generation answers 0.
constexpr std::uint32_t kMaxGeneration = (std::uint32_t{1} << 24) - 1;

// The newest logged generation when its counters are adds and subs (those
// of dl_iterate_phdr now, as a walk's generation check read them); else 0.
std::uint32_t modules_generation_if(unsigned long long adds, unsigned long long subs);

// Whether each of the return addresses frames[0..n) lies, in generation now,
// in the same load of the same object as in generation then (the same base,
// range and path: a library reloaded where it was is the same), or in no
// object in either.
bool modules_same_objects(std::uint32_t then, std::uint32_t now, void* const* frames, unsigned n);

// The object that held addr (a return address) in generation gen; nullptr
// when gen is 0 or no object of that generation held it.  The object is
// loaded now when its last generation is the newest (modules_generation's
// answer now).
const LoadedObject* modules_object_at(std::uint32_t gen, std::uintptr_t addr);

struct ModulesStats {
  std::uint32_t generations;  // logged
  std::size_t objects;        // records
  std::size_t bytes;          // pool memory they hold (records and paths)
};
ModulesStats modules_stats();

}  // namespace lca

#endif
