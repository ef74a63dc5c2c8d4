// chunk.c++ -- chunk mapping and the ownership registry.
//
// The registry is a flat byte table over the 48-bit user address space, one entry
// per 4 MiB chunk, in zero-initialised BSS: never allocated, never freed, so a
// lookup is one load and never races with the table changing shape.
#include "chunk.h++"
#include "placement.h++"

#include <cstring>

#include "config.h"
#include "huge.h++"
#include "options.h++"
#include "os.h++"

namespace lca {

LCA_BIG_BSS(chunk_kind) constinit std::uint8_t g_chunk_kind[kRegistrySlots] = {};

namespace {
constinit std::atomic<std::size_t> g_chunk_count{0};
constinit std::atomic<PlaceFunction> g_place{nullptr};
}  // namespace

void chunk_set_placement(PlaceFunction bind) { g_place.store(bind, std::memory_order_release); }

bool chunk_place(void* addr, std::size_t len, NodePlacement where) {
  if (where.node < 0) return false;
  PlaceFunction bind = g_place.load(std::memory_order_acquire);
  return bind && bind(addr, len, where);
}

bool chunk_can_place() { return g_place.load(std::memory_order_acquire) != nullptr; }

namespace {
LCA_CORE_TEXT void registry_store(const ChunkHeader* chunk, std::uint8_t kind) {
  std::atomic_ref<std::uint8_t>(g_chunk_kind[reinterpret_cast<std::uintptr_t>(chunk) >> kChunkShift])
      .store(kind, std::memory_order_release);
}
}  // namespace

LCA_CORE_TEXT void registry_set_kind(ChunkHeader* chunk, ChunkKind kind) {
  chunk->kind = kind;
  registry_store(chunk, static_cast<std::uint8_t>(kind));
}

LCA_CORE_TEXT ChunkHeader* chunk_map(ChunkKind kind, Domain* domain, NodePlacement where) {
  void* mem = os_map_aligned(kChunkSize, kChunkSize);
  if (!mem) return nullptr;
  if (reinterpret_cast<std::uintptr_t>(mem) >> kAddressBits) {  // beyond the registry
    os_unmap(mem, kChunkSize);
    return nullptr;
  }
  // LIBCALLOC_OPTIONS=huge_heap=0|1: chunks are 4 MiB-aligned, so each holds two
  // whole 2 MiB ranges that THP can back (or is kept from backing).
  // Built with --disable-huge, only huge_heap=0 has an effect.
#ifdef CALLOC_HUGE
  bool advised = g_options.huge_heap > 0;
  // A small heap stays on 4 KiB pages under THP `always` (huge.h++).
  bool small_heap = huge_small_heap_no_thp(huge_thp_policy(), g_options.huge_heap,
                                           g_chunk_count.load(std::memory_order_relaxed));
  if (g_options.huge_heap >= 0 || small_heap) os_advise_huge(mem, kChunkSize, advised);
#else
  constexpr bool advised = false;
  constexpr bool small_heap = false;
  if (g_options.huge_heap == 0) os_advise_huge(mem, kChunkSize, false);
#endif
  // Bound before the header is written: its page is the first to fault in.
  bool bound = chunk_place(mem, kChunkSize, where);
  auto* chunk = static_cast<ChunkHeader*>(mem);
  if (g_options.huge_heap != 0 && !small_heap && huge_may_back(huge_thp_policy(), advised))
    chunk->flags = kChunkMayBeHuge;
  chunk->node = bound ? where.node : -1;
  chunk->magic = kChunkMagic;
  chunk->domain = domain;
  registry_set_kind(chunk, kind);
  g_chunk_count.fetch_add(1, std::memory_order_relaxed);
  return chunk;
}

LCA_CORE_TEXT void chunk_unmap(ChunkHeader* chunk) {
  registry_store(chunk, 0);
  g_chunk_count.fetch_sub(1, std::memory_order_relaxed);
  os_unmap(chunk, kChunkSize);
}

LCA_CORE_TEXT void chunk_purge_data(ChunkHeader* chunk) {
  // The header keeps the first 2 MiB range in use: with huge pages, only the
  // second range goes.
  std::size_t from = (chunk->flags & kChunkMayBeHuge) ? kHugePage2M : kChunkHeaderSize;
  if (from != kChunkHeaderSize) huge_count_purge(1, 1, kHugePage2M - kChunkHeaderSize);
  os_purge(reinterpret_cast<char*>(chunk) + from, kChunkSize - from);
}

LCA_CORE_TEXT void chunk_reset_header(ChunkHeader* chunk, ChunkKind kind, Domain* domain, std::size_t used_bytes) {
  std::uint32_t flags = chunk->flags;
  std::int32_t node = chunk->node;
  if (flags & kChunkMayBeHuge)
    std::memset(static_cast<void*>(chunk), 0, used_bytes);
  else
    os_purge(chunk, kChunkHeaderSize);  // the rest of slot 0 reads as zero too
  chunk->magic = kChunkMagic;
  chunk->flags = flags;
  chunk->node = node;
  chunk->domain = domain;
  registry_set_kind(chunk, kind);
}

std::size_t registry_chunk_count() { return g_chunk_count.load(std::memory_order_relaxed); }

LCA_CORE_TEXT void ChunkList::push(ChunkHeader* c) {
  c->prev = nullptr;
  c->next = head;
  if (head) head->prev = c;
  head = c;
  ++count;
}

LCA_CORE_TEXT void ChunkList::remove(ChunkHeader* c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = nullptr;
  --count;
}

LCA_CORE_TEXT ChunkHeader* ChunkList::pop() {
  ChunkHeader* c = head;
  if (c) remove(c);
  return c;
}

}  // namespace lca
