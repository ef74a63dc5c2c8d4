// module.h++ -- the heaps outside the core, SecureAllocator's (secure.c++) and
// HugePageAllocator's (huge.c++), as the core's entry points see them.
//
// Every libcalloc block goes to its owner whichever entry point it is given to:
// free, realloc, malloc_usable_size (and their lca_* names), any
// MemoryAllocator's deallocate, reallocate, try_realloc_inplace and
// get_allocation_size, the smart pointers of custom_alloc/memory.h++.  Those
// look a block up in the core heap's registry (block_lookup, tcache.h++); a
// pointer that no core heap owns was reported there ("Invalid free",
// "Invalid pointer").  Each module registers a table of its functions at its
// class's construction, and a pointer that no core heap owns is offered to each
// registered module before it is reported.  Only a call that is an error for
// the core heaps comes here, so the core's paths do nothing new for their own
// blocks (docs/design.md, "Blocks of the module heaps through the core's calls").
#ifndef LCA_MODULE_HXX
#define LCA_MODULE_HXX

#include <cstddef>

namespace lca {

enum class ResizeResult;

enum class ModuleHeap { secure, huge, count };

// A module's functions for its blocks given to the core's entry points.  Each
// returns false, having done nothing, when p is not a live block of the module
// (of any instance of it; the blocks of a destroyed instance are no longer
// its); for one of its blocks in a bad state (freed already, a corrupted
// canary) it reports and aborts as the module's own calls do.  They may run in
// any thread, at the same time as the instance's own calls in others.  `what`
// names the call in messages.
struct ModuleOps {
  bool (*free)(void* p, const char* what);
  // The bytes the block offers (the module's own size query's answer).
  bool (*usable_size)(const void* p, std::size_t* out, const char* what);
  // realloc within the module: the block stays in the instance that owns it.
  // *out is p (resized in place), a new block of the same instance (p freed),
  // or nullptr with p intact: a move that may_move forbids, or no memory
  // (errno ENOMEM).
  bool (*resize)(void* p, std::size_t size, bool may_move, void** out);
};

// Publishes m's table (a constant of the module's; the same one each time).
void register_module(ModuleHeap m, const ModuleOps* ops) noexcept;

// The calls of the core's entry points for a pointer that no core heap owns
// (block_lookup returned false with `route`): the module that owns p does the
// operation; a pointer that none owns is reported as block_lookup reports it.
void free_unowned(void* p);
std::size_t usable_size_unowned(const void* p, const char* what);
void* resize_unowned(void* p, std::size_t size, bool may_move, ResizeResult* how);
// free_unowned without the report: false when no module owns p (the
// Valgrind-mode free lets memcheck report it first).
bool module_free(void* p);

}  // namespace lca

#endif
