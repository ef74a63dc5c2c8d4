// chunk.c++ -- chunk mapping and the ownership registry.
//
// The registry covers the 48-bit user address space with 2^13 leaves of 2^13
// entries (one per 4 MiB chunk).  Leaves are mapped on first use and never freed,
// so a lookup is two dependent loads and never races with a leaf going away.
#include "chunk.h++"

#include <pthread.h>

#include "os.h++"

namespace lca {

constinit std::atomic<RegistryLeaf*> g_registry_top[std::size_t{1} << kRegistryTopBits] = {};

namespace {
constinit pthread_mutex_t g_registry_lock = PTHREAD_MUTEX_INITIALIZER;
constinit std::atomic<std::size_t> g_chunk_count{0};

std::atomic<ChunkHeader*>* registry_slot(std::uintptr_t addr, bool create) {
  std::uintptr_t slot = addr >> kChunkShift;
  auto& top = g_registry_top[slot >> kRegistryLeafBits];
  RegistryLeaf* leaf = top.load(std::memory_order_acquire);
  if (!leaf) {
    if (!create) return nullptr;
    pthread_mutex_lock(&g_registry_lock);
    leaf = top.load(std::memory_order_acquire);
    if (!leaf) {
      leaf = static_cast<RegistryLeaf*>(os_map(sizeof(RegistryLeaf)));
      if (leaf) top.store(leaf, std::memory_order_release);
    }
    pthread_mutex_unlock(&g_registry_lock);
    if (!leaf) return nullptr;
  }
  return &(*leaf)[slot & ((std::uintptr_t{1} << kRegistryLeafBits) - 1)];
}
}  // namespace

ChunkHeader* chunk_map(ChunkKind kind, Domain* domain) {
  void* mem = os_map_aligned(kChunkSize, kChunkSize);
  if (!mem) return nullptr;
  auto addr = reinterpret_cast<std::uintptr_t>(mem);
  std::atomic<ChunkHeader*>* slot = (addr >> kAddressBits) ? nullptr : registry_slot(addr, true);
  if (!slot) {
    os_unmap(mem, kChunkSize);
    return nullptr;
  }
  auto* chunk = static_cast<ChunkHeader*>(mem);
  chunk->magic = kChunkMagic;
  chunk->kind = kind;
  chunk->domain = domain;
  slot->store(chunk, std::memory_order_release);
  g_chunk_count.fetch_add(1, std::memory_order_relaxed);
  return chunk;
}

void chunk_unmap(ChunkHeader* chunk) {
  auto addr = reinterpret_cast<std::uintptr_t>(chunk);
  if (auto* slot = registry_slot(addr, false)) slot->store(nullptr, std::memory_order_release);
  g_chunk_count.fetch_sub(1, std::memory_order_relaxed);
  os_unmap(chunk, kChunkSize);
}

void chunk_purge_data(ChunkHeader* chunk) {
  os_purge(reinterpret_cast<char*>(chunk) + kChunkHeaderSize, kChunkSize - kChunkHeaderSize);
}

std::size_t registry_chunk_count() { return g_chunk_count.load(std::memory_order_relaxed); }

void ChunkList::push(ChunkHeader* c) {
  c->prev = nullptr;
  c->next = head;
  if (head) head->prev = c;
  head = c;
  ++count;
}

void ChunkList::remove(ChunkHeader* c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = nullptr;
  --count;
}

ChunkHeader* ChunkList::pop() {
  ChunkHeader* c = head;
  if (c) remove(c);
  return c;
}

void registry_lock() { pthread_mutex_lock(&g_registry_lock); }
void registry_unlock() { pthread_mutex_unlock(&g_registry_lock); }
void registry_reinit_after_fork() { pthread_mutex_init(&g_registry_lock, nullptr); }

}  // namespace lca
