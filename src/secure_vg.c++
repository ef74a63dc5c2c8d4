// secure_vg.c++ -- the hardened heap's client requests (see secure_vg.h++);
// compiled only with --enable-valgrind-annotations.  Called from secure.c++'s
// slow paths in Valgrind mode only (the thread caches are off there).
#include "secure_vg.h++"

#include <valgrind/memcheck.h>

namespace lca {

void secure_vg_own(const void* p, std::size_t n) { vg_defined(p, n); }

void secure_vg_disown(const void* p, std::size_t n) { vg_noaccess(p, n); }

void secure_vg_allocated(void* p, std::size_t size, std::size_t extent) {
  if (!on_valgrind()) return;
  // The canary and the slack after the block stay the heap's: no-access, so that
  // a read or write there is reported against the block.
  vg_noaccess(p, extent);
  VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, 0);
  vg_hide(p, extent);
  vg_show_clean(p, size);
}

void secure_vg_zeroed(const void* p, std::size_t n) { vg_defined(p, n); }

void secure_vg_freeing(const void* p) {
  if (on_valgrind()) VALGRIND_FREELIKE_BLOCK(p, 0);
}

void secure_vg_freed(const void* p, std::size_t extent) {
  vg_noaccess(p, extent);
  vg_hide(p, extent);
}

void secure_vg_resized(void* p, std::size_t old_size, std::size_t size, std::size_t extent) {
  if (!on_valgrind()) return;
  // The bytes after old_size were made the heap's (defined) for the resize:
  // memcheck's view of the block's first old_size bytes is untouched.
  char* c = static_cast<char*>(p);
  VALGRIND_RESIZEINPLACE_BLOCK(p, old_size, size, 0);  // grown bytes: undefined
  if (extent > size) {
    vg_noaccess(c + size, extent - size);
    vg_hide(c + size, extent - size);
  }
  if (size > old_size) vg_show_clean(c + old_size, size - old_size);
}

void secure_vg_forgotten(const void* p) { vg_block_forgotten(p); }

}  // namespace lca
