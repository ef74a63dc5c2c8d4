// vg.c++ -- Valgrind mode (see vg.h++).
#include "vg.h++"
#include "placement.h++"

#include <link.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdlib>
#include <ctime>
#include <cstring>

#include "report.h++"
#include "tcache.h++"
#include "module.h++"

#if CALLOC_VALGRIND
#include <valgrind/helgrind.h>
#endif

namespace lca {

#if CALLOC_VALGRIND

LCA_CORE_DATA(on_valgrind) constinit bool g_on_valgrind = false;
LCA_CORE_DATA(vg_decided) constinit bool g_vg_decided = false;
constinit thread_local unsigned tls_vg_serial_depth __attribute__((tls_model("initial-exec"))) = 0;

namespace {

// The quarantine: a ring of freed blocks, oldest first, bounded by count and by
// bytes (kVgQuarantineBytes, as memcheck's own --freelist-vol).  Its lock is
// the serialising lock (lca_mutex_lock).
constexpr std::size_t kVgQuarantineBytes = std::size_t{16} << 20;
struct QuarantineEntry {
  void* p;
  std::size_t bytes;
  Domain* domain;
};

constinit pthread_mutex_t g_quarantine_lock = PTHREAD_MUTEX_INITIALIZER;
LCA_BIG_BSS(vg_quarantine) constinit QuarantineEntry g_quarantine[kVgQuarantine] = {};
constinit std::size_t g_quarantine_head = 0;  // oldest entry
constinit std::size_t g_quarantine_count = 0;
constinit std::size_t g_quarantine_bytes = 0;

// The oldest entry may leave unless a defragmentation pass walks its heap
// (Domain::quarantine_hold): eviction stops there, over the byte limit for a
// while.  (g_quarantine_lock held, the quarantine not empty.)
bool head_may_leave() {
  return !g_quarantine[g_quarantine_head].domain->quarantine_held();
}

// The requested size lives in the last word of the block's usable bytes.
std::size_t* size_slot(const void* p, std::size_t usable) {
  return reinterpret_cast<std::size_t*>(const_cast<char*>(static_cast<const char*>(p)) + usable -
                                        sizeof(std::size_t));
}

void store_size(void* p, std::size_t size, std::size_t usable) {
  std::size_t* slot = size_slot(p, usable);
  vg_in_free_memory(slot, sizeof *slot, [&] { *slot = size; });
}

// The serialising lock: a futex word, 0 free, 1 held, 2 held and perhaps waited
// for (the mutex of Drepper's "Futexes Are Tricky").  Neither helgrind nor DRD
// sees it: it orders libcalloc's own work, which they do not check, and gives
// them no happens-before edge between the user's threads.
constinit int g_serial_word = 0;

long futex(int* word, int op, int value) { return syscall(SYS_futex, word, op, value, nullptr, nullptr, 0); }

// DRD's requests (valgrind/drd.h cannot be included with helgrind.h: both define
// the ANNOTATE_* macros).
constexpr unsigned kDrdStartSuppression = VG_USERREQ_TOOL_BASE('D', 'R') + 2;
constexpr unsigned kDrdFinishSuppression = VG_USERREQ_TOOL_BASE('D', 'R') + 3;

// Hides the writable segments (data, bss, relro) of the object libcalloc's code
// is in: its globals.  When libcalloc is linked statically, that object is the
// program, whose own globals are then hidden too.
int hide_own_segments(dl_phdr_info* info, std::size_t, void*) {
  auto here = reinterpret_cast<ElfW(Addr)>(&vg_decide);
  bool ours = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    ElfW(Addr) start = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && here >= start && here < start + ph.p_memsz) ours = true;
  }
  if (!ours) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD && (ph.p_flags & PF_W))
      vg_hide(reinterpret_cast<const void*>(info->dlpi_addr + ph.p_vaddr), ph.p_memsz);
  }
  return 1;
}

}  // namespace

void vg_serial_lock() {
  int c = 0;
  if (__atomic_compare_exchange_n(&g_serial_word, &c, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
  if (c != 2) c = __atomic_exchange_n(&g_serial_word, 2, __ATOMIC_ACQUIRE);
  while (c != 0) {
    futex(&g_serial_word, FUTEX_WAIT_PRIVATE, 2);
    c = __atomic_exchange_n(&g_serial_word, 2, __ATOMIC_ACQUIRE);
  }
}

void vg_serial_unlock() {
  if (__atomic_exchange_n(&g_serial_word, 0, __ATOMIC_RELEASE) == 2) futex(&g_serial_word, FUTEX_WAKE_PRIVATE, 1);
}

LCA_CORE_TEXT void vg_hide(const void* p, std::size_t n) {
  if (!on_valgrind() || !n) return;
  VALGRIND_HG_DISABLE_CHECKING(p, n);
  VALGRIND_DO_CLIENT_REQUEST_STMT(kDrdStartSuppression, p, n, 0, 0, 0);
}

LCA_CORE_TEXT void vg_show_clean(const void* p, std::size_t n) {
  if (!on_valgrind() || !n) return;
  VALGRIND_HG_ENABLE_CHECKING(p, n);
  VALGRIND_DO_CLIENT_REQUEST_STMT(kDrdFinishSuppression, p, n, 0, 0, 0);
  VALGRIND_HG_CLEAN_MEMORY(p, n);  // DRD's ANNOTATE_NEW_MEMORY too
}

LCA_CORE_TEXT void vg_decide() {
  bool on = false;
  if (RUNNING_ON_VALGRIND) {
    // Valgrind puts the tool's own preload library (the one that replaces malloc)
    // in LD_PRELOAD; the tools without one do not care about heap blocks.
    const char* preload = std::getenv("LD_PRELOAD");
    for (const char* tool : {"vgpreload_memcheck", "vgpreload_helgrind", "vgpreload_drd", "vgpreload_massif",
                             "vgpreload_dhat"})
      if (preload && std::strstr(preload, tool)) on = true;
  }
  g_on_valgrind = on;
  if (on) dl_iterate_phdr(hide_own_segments, nullptr);
  g_vg_decided = true;
}

std::uintptr_t vg_peek_word(const void* p) {
  if (!on_valgrind()) return *static_cast<const std::uintptr_t*>(p);
  // Byte by byte: a block of 9 bytes has one addressable byte in its second word.
  constexpr std::size_t n = sizeof(std::uintptr_t);
  const auto* b = static_cast<const unsigned char*>(p);
  unsigned char vbits[n];
  bool addressable[n];
  for (std::size_t i = 0; i < n; ++i)
    addressable[i] = VALGRIND_GET_VBITS(b + i, &vbits[i], 1) == 1;  // 3: not addressable
  (void)VALGRIND_MAKE_MEM_DEFINED(p, n);
  std::uintptr_t v = *static_cast<const std::uintptr_t*>(p);
  for (std::size_t i = 0; i < n; ++i) {
    if (addressable[i])
      (void)VALGRIND_SET_VBITS(b + i, &vbits[i], 1);
    else
      (void)VALGRIND_MAKE_MEM_NOACCESS(b + i, 1);
  }
  return v;
}

void vg_block_allocated(void* p, std::size_t size, std::size_t usable, bool zeroed) {
  if (!on_valgrind() || !p) return;
  (void)VALGRIND_MAKE_MEM_NOACCESS(p, usable);
  store_size(p, size, usable);
  VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, zeroed);
  // The requested bytes are the user's, the slack after them stays libcalloc's.
  vg_hide(p, usable);
  vg_show_clean(p, size);
}

std::size_t vg_block_size(const void* p, std::size_t usable) {
  const std::size_t* slot = size_slot(p, usable);
  return vg_in_free_memory(slot, sizeof *slot, [&] { return *slot; });
}

void vg_block_resized(void* p, std::size_t old_size, std::size_t size, std::size_t old_usable,
                      std::size_t usable) {
  if (!on_valgrind()) return;
  VALGRIND_RESIZEINPLACE_BLOCK(p, old_size, size, 0);
  std::size_t most = usable > old_usable ? usable : old_usable;
  if (most > size) vg_hide(static_cast<char*>(p) + size, most - size);
  if (size > old_size) vg_show_clean(static_cast<char*>(p) + old_size, size - old_size);
  if (usable > size) (void)VALGRIND_MAKE_MEM_NOACCESS(static_cast<char*>(p) + size, usable - size);
  // A shrink split the tail off as a free block: its tag and links are ours.
  if (old_usable > usable) (void)VALGRIND_MAKE_MEM_DEFINED(static_cast<char*>(p) + usable, old_usable - usable);
  store_size(p, size, usable);
}

void vg_free(void* p, void (*release)(void*)) {
  lca_mutex_lock(&g_quarantine_lock);
  for (std::size_t k = 0; k < g_quarantine_count; ++k) {
    if (g_quarantine[(g_quarantine_head + k) % kVgQuarantine].p == p) {
      lca_mutex_unlock(&g_quarantine_lock);
      VALGRIND_FREELIKE_BLOCK(p, 0);  // memcheck's report: "Invalid free()", with both stacks
      report_fatal("Double free", p, "the block is not allocated (freed already)");
    }
  }
  lca_mutex_unlock(&g_quarantine_lock);
  // A block of no core heap may be a module heap's (SecureAllocator,
  // HugePageAllocator): it goes to its heap, which tells memcheck itself.
  LargeInfo info;
  ChunkHeader* ch = registry_lookup(p);
  bool large = !ch && large_lookup(p, &info);
  if (!ch && !large && module_free(p)) return;
  // A HandleAllocator's handle's object (a live block, then): refused before
  // memcheck is told of a free, so that the object stays as it was.
  if (Domain* hd = ch ? ch->domain : large ? info.domain : nullptr; hd && !hd->per_thread)
    handle_object_check_unlocked(hd, p, "free");
  // memcheck's own report first ("Invalid free()" for anything but a live block),
  // then libcalloc's check, which aborts with its message on a bad pointer.
  VALGRIND_FREELIKE_BLOCK(p, 0);
  BlockRef r;
  block_lookup(p, &r, "free");
  if (!r.domain->per_thread) relocating_check(r.domain);  // (free_now's check, before the quarantine)
  vg_hide(p, r.usable);  // libcalloc's memory again, for helgrind and DRD
  r.domain->vg.frees.fetch_add(1, std::memory_order_relaxed);
  r.domain->vg.bytes_freed.fetch_add(vg_block_size(p, r.usable), std::memory_order_relaxed);
  if (r.kind == BlockRef::Kind::large) {
    // A mapping of its own: freed at once (memcheck still describes a later
    // access as inside a freed block, or the unmapped page faults).
    (void)VALGRIND_MAKE_MEM_DEFINED(p, r.usable);
    release(p);
    return;
  }
  void* due[kVgQuarantine];
  std::size_t n_due = 0;
  lca_mutex_lock(&g_quarantine_lock);
  if (g_quarantine_count == kVgQuarantine) {
    if (!head_may_leave() && !r.domain->quarantine_held()) {
      // Full, and its oldest block belongs to a heap being defragmented: this
      // block skips the quarantine instead.
      lca_mutex_unlock(&g_quarantine_lock);
      (void)VALGRIND_MAKE_MEM_DEFINED(p, r.usable);
      release(p);
      return;
    }
    // (A pass frees blocks of its own heap only where it walks nothing.)
    QuarantineEntry& e = g_quarantine[g_quarantine_head];
    due[n_due++] = e.p;
    g_quarantine_bytes -= e.bytes;
    g_quarantine_head = (g_quarantine_head + 1) % kVgQuarantine;
    --g_quarantine_count;
  }
  g_quarantine[(g_quarantine_head + g_quarantine_count) % kVgQuarantine] = QuarantineEntry{p, r.usable, r.domain};
  ++g_quarantine_count;
  g_quarantine_bytes += r.usable;
  while (g_quarantine_bytes > kVgQuarantineBytes && g_quarantine_count > 1 && head_may_leave()) {
    QuarantineEntry& e = g_quarantine[g_quarantine_head];
    due[n_due++] = e.p;
    g_quarantine_bytes -= e.bytes;
    g_quarantine_head = (g_quarantine_head + 1) % kVgQuarantine;
    --g_quarantine_count;
  }
  lca_mutex_unlock(&g_quarantine_lock);
  for (std::size_t k = 0; k < n_due; ++k) {
    // Its memory is libcalloc's again (defined: the free lists live there).
    BlockRef d;
    block_lookup(due[k], &d, "free");
    (void)VALGRIND_MAKE_MEM_DEFINED(due[k], d.usable);
    release(due[k]);
  }
}

void vg_save_vbits(const void* p, void* buf, std::size_t n) {
  if (on_valgrind() && n) (void)VALGRIND_GET_VBITS(p, buf, n);
}

void vg_restore_vbits(const void* p, const void* buf, std::size_t n) {
  if (on_valgrind() && n) (void)VALGRIND_SET_VBITS(p, buf, n);
}

void vg_block_forgotten(const void* p) {
  if (on_valgrind()) VALGRIND_FREELIKE_BLOCK(p, 0);
}

// The serialising lock alone is held across fork() (the quarantine's is the same
// lock); the child's one thread took it and releases it as the parent does.
LCA_CORE_TEXT void vg_prefork_first() {
  if (on_valgrind()) vg_serial_enter();
}
LCA_CORE_TEXT void vg_prefork() {}
LCA_CORE_TEXT void vg_postfork_parent() {
  if (on_valgrind()) vg_serial_leave();
}
LCA_CORE_TEXT void vg_postfork_child() {
  if (on_valgrind()) vg_serial_leave();
}

void vg_domain_created(Domain* d) {
  if (on_valgrind()) VALGRIND_CREATE_MEMPOOL_EXT(d, 0, 0, VALGRIND_MEMPOOL_METAPOOL | VALGRIND_MEMPOOL_AUTO_FREE);
}

void vg_domain_destroying(Domain* d) {
  if (!on_valgrind()) return;
  // Blocks of this heap still in the quarantine go with it.
  lca_mutex_lock(&g_quarantine_lock);
  std::size_t kept = 0;
  for (std::size_t k = 0; k < g_quarantine_count; ++k) {
    QuarantineEntry e = g_quarantine[(g_quarantine_head + k) % kVgQuarantine];
    ChunkHeader* ch = registry_lookup(e.p);
    if (ch && ch->domain == d) {
      g_quarantine_bytes -= e.bytes;
      continue;
    }
    g_quarantine[(g_quarantine_head + kept++) % kVgQuarantine] = e;
  }
  g_quarantine_count = kept;
  lca_mutex_unlock(&g_quarantine_lock);
}

void vg_domain_destroyed(Domain* d) {
  if (on_valgrind()) VALGRIND_DESTROY_MEMPOOL(d);
}

void vg_quarantine_release_domain(Domain* d) {
  if (!on_valgrind()) return;
  void* due[kVgQuarantine];
  std::size_t n_due = 0;
  lca_mutex_lock(&g_quarantine_lock);
  std::size_t kept = 0;
  for (std::size_t k = 0; k < g_quarantine_count; ++k) {
    QuarantineEntry e = g_quarantine[(g_quarantine_head + k) % kVgQuarantine];
    ChunkHeader* ch = registry_lookup(e.p);
    if (ch ? ch->domain == d : false) {
      g_quarantine_bytes -= e.bytes;
      due[n_due++] = e.p;
      continue;
    }
    g_quarantine[(g_quarantine_head + kept++) % kVgQuarantine] = e;
  }
  g_quarantine_count = kept;
  lca_mutex_unlock(&g_quarantine_lock);
  for (std::size_t k = 0; k < n_due; ++k) {
    BlockRef r;
    block_lookup(due[k], &r, "free");
    (void)VALGRIND_MAKE_MEM_DEFINED(due[k], r.usable);
    free_now(due[k]);
  }
}

LCA_CORE_TEXT void vg_chunk_added(Domain* d, const void* chunk, std::size_t size) {
  if (!on_valgrind()) return;
  if (!d->per_thread) VALGRIND_MEMPOOL_ALLOC(d, chunk, size);
  // libcalloc's memory until a block is handed out (MEMPOOL_ALLOC made it undefined).
  (void)VALGRIND_MAKE_MEM_DEFINED(chunk, size);
}

LCA_CORE_TEXT void vg_chunk_removed(Domain* d, const void* chunk) {
  if (!on_valgrind()) return;
  if (!d->per_thread) VALGRIND_MEMPOOL_FREE(d, chunk);  // AUTO_FREE: its blocks go too
  (void)VALGRIND_MAKE_MEM_DEFINED(chunk, kChunkSize);
}

#elif !LCA_ASAN  // neither Valgrind nor ASan mode (ASan mode: asan.c++)

std::uintptr_t vg_peek_word(const void* p) { return *static_cast<const std::uintptr_t*>(p); }
void vg_block_allocated(void*, std::size_t, std::size_t, bool) {}
std::size_t vg_block_size(const void*, std::size_t usable) { return usable; }
void vg_block_resized(void*, std::size_t, std::size_t, std::size_t, std::size_t) {}
void vg_free(void* p, void (*release)(void*)) { release(p); }
void vg_save_vbits(const void*, void*, std::size_t) {}
void vg_restore_vbits(const void*, const void*, std::size_t) {}
void vg_block_forgotten(const void*) {}
LCA_CORE_TEXT void vg_prefork_first() {}
LCA_CORE_TEXT void vg_prefork() {}
LCA_CORE_TEXT void vg_postfork_parent() {}
LCA_CORE_TEXT void vg_postfork_child() {}
void vg_domain_created(Domain*) {}
void vg_domain_destroying(Domain*) {}
void vg_domain_destroyed(Domain*) {}
void vg_quarantine_release_domain(Domain*) {}
LCA_CORE_TEXT void vg_chunk_added(Domain*, const void*, std::size_t) {}
LCA_CORE_TEXT void vg_chunk_removed(Domain*, const void*) {}

#endif

// (vg.h++)
void pause_briefly(unsigned round) {
  if (!on_valgrind() && round < 64) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    return;
  }
  if (!on_valgrind() && round < 128) {
    sched_yield();
    return;
  }
  timespec ts{0, 20'000};
  nanosleep(&ts, nullptr);
}

}  // namespace lca
