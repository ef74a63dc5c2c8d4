// asan.c++ -- ASan mode: Valgrind mode's hooks (vg.h++) on AddressSanitizer's
// shadow memory, compiled only with -fsanitize=address (sanitizer.h++).
//
// What the user sees (on top of everything ASan checks itself):
//  - a block is addressable for exactly the requested bytes; the rest of its slot,
//    at least kVgRedzone bytes, is poisoned, so an access one byte past the end is
//    an ASan report ("use-after-poison": ASan's name for any access to memory a
//    program poisoned itself);
//  - a freed block is poisoned whole and waits in a FIFO quarantine (kAsanQuarantine
//    blocks, kAsanQuarantineBytes bytes) before its memory is reused, so a use
//    after free is reported, not silently read from or written into a new block;
//    once out of the quarantine its memory is libcalloc's again (unpoisoned: the
//    free lists live there), as in Valgrind mode.  Large blocks (their own
//    mappings) skip the quarantine: freed, they stay poisoned while the mapping is
//    cached and fault once it is unmapped;
//  - after ASan's report, libcalloc adds a line that places the address in its
//    block, in memcheck's words ("libcalloc: 0x... is 3 bytes inside a block of
//    size 32 free'd (...)"), for blocks of spans and arenas;
//  - libcalloc's own checks stay: a double free (found by a mark in the block's
//    size word), an invalid free, abort with libcalloc's message.
// The requested size lives in the last word of the slot (in the redzone), as in
// Valgrind mode; a block in the quarantine has kFreedBit set there.  Nothing that
// libcalloc returns to the OS keeps ASan poison: os_unmap unpoisons first (ASan
// does not clear the shadow of unmapped memory, and a later mapping there would
// inherit it).
#include "sanitizer.h++"

#if LCA_ASAN

#include <pthread.h>
#include <cstdint>

#include "arena.h++"
#include "report.h++"
#include "tcache.h++"
#include "module.h++"
#include "vg.h++"
#include "placement.h++"

namespace lca {

namespace {

constexpr std::size_t kAsanQuarantine = std::size_t{1} << 16;         // blocks
constexpr std::size_t kAsanQuarantineBytes = std::size_t{32} << 20;  // their usable bytes
constexpr std::size_t kMaxDuePerFree = 64;
// Set in the size word of a block in the quarantine (sizes stay below kMaxRequest).
constexpr std::size_t kFreedBit = std::size_t{1} << 63;
static_assert(kMaxRequest < kFreedBit);

struct QuarantineEntry {
  void* p;
  std::size_t bytes;
  Domain* domain;
};
constinit pthread_mutex_t g_quarantine_lock = PTHREAD_MUTEX_INITIALIZER;
LCA_BIG_BSS(asan_quarantine) constinit QuarantineEntry g_quarantine[kAsanQuarantine] = {};
constinit std::size_t g_quarantine_head = 0;  // oldest entry
constinit std::size_t g_quarantine_count = 0;
constinit std::size_t g_quarantine_bytes = 0;

// The oldest entry may leave unless a defragmentation pass walks its heap
// (Domain::quarantine_hold; the pass's thread itself frees through here, and a
// release would coalesce the free runs it has planned into): eviction stops
// there, over the byte limit for a while.  (g_quarantine_lock held, the
// quarantine not empty.)
bool head_may_leave() {
  return !g_quarantine[g_quarantine_head].domain->quarantine_held();
}

std::size_t* size_slot(const void* p, std::size_t usable) {
  return reinterpret_cast<std::size_t*>(const_cast<char*>(static_cast<const char*>(p)) + usable -
                                        sizeof(std::size_t));
}

void store_size(void* p, std::size_t word, std::size_t usable) {
  std::size_t* slot = size_slot(p, usable);
  vg_in_free_memory(slot, sizeof *slot, [&] { *slot = word; });
}

std::size_t load_size_word(const void* p, std::size_t usable) {
  return static_cast<std::size_t>(vg_peek_word(size_slot(p, usable)));
}

// A block leaves the quarantine: its memory is libcalloc's again (the free lists
// live there), and `release` frees it for good.
void release_from_quarantine(void* p, void (*release)(void*)) {
  BlockRef r;
  block_lookup(p, &r, "free");
  asan_unpoison(p, r.usable);
  release(p);
}

// --- describing a reported address ---------------------------------------------

// The block of a span or arena chunk that holds (or ends just before) addr:
// false when addr is in no block libcalloc handed out.
bool find_block(const char* addr, const char** start, std::size_t* usable) {
  ChunkHeader* ch = registry_lookup(addr);
  if (!ch) return false;
  if (ch->kind == ChunkKind::spans) {
    const Span* s = span_of(span_chunk_of(ch), addr);
    // (Any thread's report: the unlocked reads of a remote free, span.h++.)
    if (span_flags_seen_remotely(s) & kSpanInactive) return false;
    const char* base = span_base(s);
    if (addr < base || addr >= span_bump_seen_remotely(s)) return false;
    std::uint32_t i = span_index(s, addr);
    for (unsigned k = 0; k < s->multislot_count; ++k)
      if (i >= s->multislot[k].first && i < s->multislot[k].first + s->multislot[k].slots) i = s->multislot[k].first;
    *start = base + static_cast<std::size_t>(i) * s->obj_size;
    *usable = span_usable_size(s, i);
    // A free object (on a free list) is libcalloc's memory, not a block.
    return vg_peek_word(*start + sizeof(void*)) != free_guard(*start);
  }
  if (ch->kind == ChunkKind::arena) {
    // Walk the boundary tags: {prev_size, size | flags}, flag 1 = free.
    const char* t = reinterpret_cast<const char*>(ch) + kChunkHeaderSize;
    const char* end = reinterpret_cast<const char*>(ch) + kChunkSize - kArenaTag;
    while (t < end) {
      std::size_t flags = reinterpret_cast<const BlockTag*>(t)->size_flags;
      std::size_t bytes = flags & ~std::size_t{15};
      if (bytes < kArenaMinBlock) return false;
      if (addr < t + bytes) {
        if (flags & 1) return false;
        *start = t + kArenaTag;
        *usable = bytes - kArenaTag;
        return addr >= *start;
      }
      t += bytes;
    }
  }
  return false;
}

// ASan calls this after printing a report (before the process dies).
void describe_report(const char*) {
  const char* addr = static_cast<const char*>(__asan_get_report_address());
  const char* start;
  std::size_t usable;
  if (!addr || !find_block(addr, &start, &usable)) return;
  std::size_t word = load_size_word(start, usable);
  bool freed = word & kFreedBit;
  std::size_t size = word & ~kFreedBit;
  std::size_t off = static_cast<std::size_t>(addr - start);
  char line[256];
  Writer w{line, sizeof line};
  w.str("libcalloc: ").ptr(addr).str(" is ");
  if (off < size)
    w.num(off).str(" bytes inside");
  else
    w.num(off - size).str(" bytes after");
  w.str(" a block of size ").num(size).str(freed ? " free'd" : " alloc'd").str(" (block at ").ptr(start);
  w.str(freed ? ", waiting in libcalloc's quarantine)\n" : ", live)\n");
  w.flush_to(2);
}

__attribute__((constructor)) void asan_mode_init() { __asan_set_error_report_callback(describe_report); }

}  // namespace

// Reads a word of a block whatever its poisoning (a live block's guard word may be
// in its redzone, a quarantined block is poisoned whole).
__attribute__((no_sanitize("address"))) std::uintptr_t vg_peek_word(const void* p) {
  return *static_cast<const volatile std::uintptr_t*>(p);
}

void vg_block_allocated(void* p, std::size_t size, std::size_t usable, bool) {
  if (!p) return;
  asan_poison(p, usable);
  store_size(p, size, usable);
  asan_unpoison(p, size);
}

std::size_t vg_block_size(const void* p, std::size_t usable) {
  std::size_t word = load_size_word(p, usable);
  if (word & kFreedBit) report_fatal("Use after free", p, "the block was freed (it waits in libcalloc's quarantine)");
  return word;
}

void vg_block_resized(void* p, std::size_t, std::size_t size, std::size_t old_usable, std::size_t usable) {
  asan_poison(p, usable);
  store_size(p, size, usable);
  asan_unpoison(p, size);
  // A shrink split the tail off as a free block: its tag and links are ours.
  if (old_usable > usable) asan_unpoison(static_cast<char*>(p) + usable, old_usable - usable);
}

void vg_free(void* p, void (*release)(void*)) {
  BlockRef r;
  // Aborts on anything but a block libcalloc considers live; a module heap's
  // block (SecureAllocator, HugePageAllocator) goes to its heap.
  if (!block_lookup(p, &r, "free", true)) return free_unowned(p);
  if (!r.domain->per_thread) {
    // free_now's checks, before the quarantine.
    relocating_check(r.domain);
    handle_object_check_unlocked(r.domain, p, "free");
  }
  std::size_t word = load_size_word(p, r.usable);
  if (word & kFreedBit) report_fatal("Double free", p, "the block is not allocated (freed already)");
  r.domain->vg.frees.fetch_add(1, std::memory_order_relaxed);
  r.domain->vg.bytes_freed.fetch_add(word, std::memory_order_relaxed);
  asan_poison(p, r.usable);
  if (r.kind == BlockRef::Kind::large) {
    // Its own mapping: released at once.  Kept in the mapping cache it stays
    // poisoned; unmapped, os_unmap clears its shadow and an access faults.
    release(p);
    return;
  }
  store_size(p, word | kFreedBit, r.usable);
  void* due[kMaxDuePerFree];
  std::size_t n_due = 0;
  lca_mutex_lock(&g_quarantine_lock);
  if (g_quarantine_count == kAsanQuarantine) {
    if (!head_may_leave() && !r.domain->quarantine_held()) {
      // Full, and its oldest block belongs to a heap being defragmented: this
      // block skips the quarantine instead.
      lca_mutex_unlock(&g_quarantine_lock);
      release_from_quarantine(p, release);
      return;
    }
    // (A pass frees blocks of its own heap only where it walks nothing.)
    QuarantineEntry& e = g_quarantine[g_quarantine_head];
    due[n_due++] = e.p;
    g_quarantine_bytes -= e.bytes;
    g_quarantine_head = (g_quarantine_head + 1) % kAsanQuarantine;
    --g_quarantine_count;
  }
  g_quarantine[(g_quarantine_head + g_quarantine_count) % kAsanQuarantine] = QuarantineEntry{p, r.usable, r.domain};
  ++g_quarantine_count;
  g_quarantine_bytes += r.usable;
  // The oldest entries leave until the bytes fit again, at most kMaxDuePerFree
  // per free (a big block may push out thousands of small ones: the following
  // frees finish the job).
  while (g_quarantine_bytes > kAsanQuarantineBytes && g_quarantine_count > 1 && n_due < kMaxDuePerFree &&
         head_may_leave()) {
    QuarantineEntry& e = g_quarantine[g_quarantine_head];
    due[n_due++] = e.p;
    g_quarantine_bytes -= e.bytes;
    g_quarantine_head = (g_quarantine_head + 1) % kAsanQuarantine;
    --g_quarantine_count;
  }
  lca_mutex_unlock(&g_quarantine_lock);
  for (std::size_t k = 0; k < n_due; ++k) release_from_quarantine(due[k], release);
}

void asan_flush_quarantine() {
  for (;;) {
    void* due[kMaxDuePerFree];
    std::size_t n_due = 0;
    lca_mutex_lock(&g_quarantine_lock);
    while (g_quarantine_count && n_due < kMaxDuePerFree) {
      QuarantineEntry& e = g_quarantine[g_quarantine_head];
      due[n_due++] = e.p;
      g_quarantine_bytes -= e.bytes;
      g_quarantine_head = (g_quarantine_head + 1) % kAsanQuarantine;
      --g_quarantine_count;
    }
    lca_mutex_unlock(&g_quarantine_lock);
    if (!n_due) return;
    for (std::size_t k = 0; k < n_due; ++k) release_from_quarantine(due[k], free_now);
  }
}

void vg_save_vbits(const void*, void*, std::size_t) {}
void vg_restore_vbits(const void*, const void*, std::size_t) {}
// The memory goes with its chunk or mapping, whose shadow is cleared then.
void vg_block_forgotten(const void*) {}

void vg_prefork_first() {}
void vg_prefork() {
  pthread_mutex_lock(&g_quarantine_lock);
  fork_hold(&g_quarantine_lock);  // a fork handler run after libcalloc's may free (vg.h++)
}
void vg_postfork_parent() { pthread_mutex_unlock(&g_quarantine_lock); }
void vg_postfork_child() { pthread_mutex_init(&g_quarantine_lock, nullptr); }

void vg_domain_created(Domain*) {}

void vg_domain_destroying(Domain* d) {
  // Blocks of this heap still in the quarantine go with it (its chunks are
  // unmapped, os_unmap clears their shadow).
  lca_mutex_lock(&g_quarantine_lock);
  std::size_t kept = 0;
  for (std::size_t k = 0; k < g_quarantine_count; ++k) {
    QuarantineEntry e = g_quarantine[(g_quarantine_head + k) % kAsanQuarantine];
    ChunkHeader* ch = registry_lookup(e.p);
    if (ch && ch->domain == d) {
      g_quarantine_bytes -= e.bytes;
      continue;
    }
    g_quarantine[(g_quarantine_head + kept++) % kAsanQuarantine] = e;
  }
  g_quarantine_count = kept;
  lca_mutex_unlock(&g_quarantine_lock);
}

void vg_domain_destroyed(Domain*) {}

void vg_quarantine_release_domain(Domain* d) {
  for (;;) {
    void* due[kMaxDuePerFree];
    std::size_t n_due = 0;
    lca_mutex_lock(&g_quarantine_lock);
    std::size_t kept = 0, k = 0;
    for (; k < g_quarantine_count; ++k) {
      QuarantineEntry e = g_quarantine[(g_quarantine_head + k) % kAsanQuarantine];
      ChunkHeader* ch = registry_lookup(e.p);
      if (n_due < kMaxDuePerFree && ch && ch->domain == d) {
        g_quarantine_bytes -= e.bytes;
        due[n_due++] = e.p;
        continue;
      }
      g_quarantine[(g_quarantine_head + kept++) % kAsanQuarantine] = e;
    }
    g_quarantine_count = kept;
    lca_mutex_unlock(&g_quarantine_lock);
    if (!n_due) return;
    for (std::size_t i = 0; i < n_due; ++i) release_from_quarantine(due[i], free_now);
  }
}

// A chunk is libcalloc's memory whole when a heap takes it and when it leaves one.
void vg_chunk_added(Domain*, const void* chunk, std::size_t size) { asan_unpoison(chunk, size); }
void vg_chunk_removed(Domain*, const void* chunk) { asan_unpoison(chunk, kChunkSize); }

}  // namespace lca

#endif  // LCA_ASAN
