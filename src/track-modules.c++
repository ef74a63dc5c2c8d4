// track-modules.c++ -- the log of loaded objects behind allocation tracking's
// names (configure --enable-tracking).
//
// A tracked stack keeps return addresses only, and names them when a report
// is written.  A library closed with dlclose by then is in no module, and a
// library loaded later at its addresses would lend the old frames its names.
// So each interned stack (a site, track.c++) records the generation of the
// loader's list it was captured in, and this log keeps, per generation seen,
// which objects were loaded, where, from which file: a report names a frame
// through its site's generation (from the file by path when the object is
// gone).
//
// A generation is a change of dl_iterate_phdr's counters of objects added and
// removed (dlpi_adds, dlpi_subs), seen when a stack is interned: the first
// object's callback compares them with the newest generation's and, when they
// differ, the walk goes on over every object, extending the records of those
// still loaded at the same base from the same path and adding the others.  A
// record is {base, segment range, path, first and last generation seen}, so
// memory grows with the objects loaded (not with generations times objects):
// ~48 bytes a record and its path, from track.c++'s pool.  Records are never
// removed (a site may name them until exit).
//
// Why the site's generation names its frames right: the stack was captured
// before the interning, and the objects holding its frames were loaded then
// and still are at the interning (a thread does not run code of an object
// unloaded meanwhile), so the objects of the generation logged at the
// interning are those of the frames.
//
// Locks: the log is written inside dl_iterate_phdr (the loader's list lock,
// which serialises the callbacks) under g_log_lock, taken in the first
// callback and released after dl_iterate_phdr returns: the loader's lock is
// always taken first.  g_log_lock is only ever held inside g_fork_rw
// (unwind_enter_loader, shared): a fork waits until no thread holds it.
// Readers (report writers) follow the list without a lock: records are
// published with release stores and never change but for `last`.
#include "track-modules.h++"

#include <atomic>
#include <cstring>
#include <link.h>
#include <pthread.h>

#include "track-unwind.h++"
#include "vg.h++"

namespace lca {

namespace {

pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
std::atomic<const LoadedObject*> g_log{nullptr};      // newest first
std::atomic<std::uint32_t> g_generation{0};           // the newest logged; 0: none yet
unsigned long long g_adds, g_subs;                    // its counters (g_log_lock)
std::atomic<std::size_t> g_objects{0}, g_bytes{0};    // written under g_log_lock

struct Update {
  bool first = true;
  bool locked = false;    // g_log_lock taken by this walk
  bool logging = false;   // the counters changed: every object is logged
  std::uint32_t gen = 0;  // the answer
};

LCA_SAMPLING_TEXT void segments(const dl_phdr_info* info, std::uintptr_t* lo, std::uintptr_t* hi) {
  *lo = ~std::uintptr_t{0};
  *hi = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    std::uintptr_t a = info->dlpi_addr + ph.p_vaddr;
    if (a < *lo) *lo = a;
    if (a + ph.p_memsz > *hi) *hi = a + ph.p_memsz;
  }
  if (*lo > *hi) *lo = *hi = 0;
}

LCA_SAMPLING_TEXT void log_object(const dl_phdr_info* info, std::uint32_t gen) {
  const char* name = info->dlpi_name ? info->dlpi_name : "";
  std::uintptr_t lo, hi;
  segments(info, &lo, &hi);
  if (lo == hi) return;
  // The record of the previous generation (its last is gen - 1), same load.
  for (const LoadedObject* o = g_log.load(std::memory_order_relaxed); o; o = o->next) {
    if (o->last.load(std::memory_order_relaxed) + 1 == gen && o->base == info->dlpi_addr && o->lo == lo && o->hi == hi &&
        std::strcmp(o->path, name) == 0) {
      const_cast<LoadedObject*>(o)->last.store(gen, std::memory_order_relaxed);
      return;
    }
  }
  std::size_t len = std::strlen(name);
  std::size_t bytes = (sizeof(LoadedObject) + len + 1 + 15) & ~std::size_t{15};
  auto* o = static_cast<LoadedObject*>(track_pool_alloc(bytes));
  if (!o) return;  // out of memory: this object's frames stay unnamed in this generation
  char* path = reinterpret_cast<char*>(o + 1);
  std::memcpy(path, name, len + 1);
  o->base = info->dlpi_addr;
  o->lo = lo;
  o->hi = hi;
  o->path = path;
  o->first = gen;
  o->last.store(gen, std::memory_order_relaxed);
  o->next = g_log.load(std::memory_order_relaxed);
  g_log.store(o, std::memory_order_release);
  g_objects.store(g_objects.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  g_bytes.store(g_bytes.load(std::memory_order_relaxed) + bytes, std::memory_order_relaxed);
}

LCA_SAMPLING_TEXT int update_cb(dl_phdr_info* info, std::size_t size, void* data) {
  auto* u = static_cast<Update*>(data);
  if (u->first) {
    u->first = false;
    if (size < offsetof(dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) return 1;  // no counters: 0
    pthread_mutex_lock(&g_log_lock);
    u->locked = true;
    std::uint32_t gen = g_generation.load(std::memory_order_relaxed);
    if (gen != 0 && g_adds == info->dlpi_adds && g_subs == info->dlpi_subs) {
      u->gen = gen;
      return 1;
    }
    if (gen >= kMaxGeneration) return 1;  // no numbers left: 0
    u->logging = true;
    u->gen = gen + 1;
    g_adds = info->dlpi_adds;
    g_subs = info->dlpi_subs;
  }
  log_object(info, u->gen);
  return 0;
}

}  // namespace

LCA_SAMPLING_TEXT std::uint32_t modules_generation() {
  if (vg_serialised()) return 0;
  if (!unwind_enter_loader()) return 0;
  Update u;
  dl_iterate_phdr(update_cb, &u);
  if (u.logging) g_generation.store(u.gen, std::memory_order_release);
  if (u.locked) pthread_mutex_unlock(&g_log_lock);
  unwind_leave_loader();  // last: no thread holds g_log_lock when fork's handler has it
  return u.gen;
}

LCA_SAMPLING_TEXT const LoadedObject* modules_object_at(std::uint32_t gen, std::uintptr_t addr) {
  if (gen == 0 || addr == 0) return nullptr;
  std::uintptr_t a = addr - 1;  // a return address: the call is the byte before it
  for (const LoadedObject* o = g_log.load(std::memory_order_acquire); o; o = o->next)
    if (o->first <= gen && gen <= o->last.load(std::memory_order_relaxed) && a >= o->lo && a < o->hi) return o;
  return nullptr;
}

LCA_SAMPLING_TEXT std::uint32_t modules_generation_if(unsigned long long adds, unsigned long long subs) {
  // Inside g_fork_rw as modules_generation: no thread holds g_log_lock when
  // the process forks (the child would wait for it forever).
  if (!unwind_enter_loader()) return 0;
  pthread_mutex_lock(&g_log_lock);
  std::uint32_t gen = g_generation.load(std::memory_order_relaxed);
  if (g_adds != adds || g_subs != subs) gen = 0;
  pthread_mutex_unlock(&g_log_lock);
  unwind_leave_loader();
  return gen;
}

LCA_SAMPLING_TEXT bool modules_same_objects(std::uint32_t then, std::uint32_t now, void* const* frames, unsigned n) {
  for (unsigned i = 0; i < n; ++i) {
    auto a = reinterpret_cast<std::uintptr_t>(frames[i]);
    const LoadedObject* o = modules_object_at(then, a);
    if (o && o->last.load(std::memory_order_relaxed) >= now) continue;  // loaded throughout
    const LoadedObject* m = modules_object_at(now, a);
    if (!o && !m) continue;
    if (!o || !m || o->base != m->base || o->lo != m->lo || o->hi != m->hi || std::strcmp(o->path, m->path) != 0)
      return false;
  }
  return true;
}

ModulesStats modules_stats() {  // (no lock: the profile thread may ask while another thread forks)
  return ModulesStats{g_generation.load(std::memory_order_relaxed), g_objects.load(std::memory_order_relaxed),
                      g_bytes.load(std::memory_order_relaxed)};
}

}  // namespace lca
