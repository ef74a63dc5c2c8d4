// chunk.h++ -- 4 MiB aligned chunks and the registry that says which are ours.
//
// Every span and arena block lives in a chunk: a 4 MiB region aligned to 4 MiB
// whose first 64 KiB hold its header (out-of-band metadata: span descriptors or the
// arena's block bitmap).  `ptr & ~(4 MiB - 1)` is the header of any block, but it is
// only followed after the registry, a two-level radix table indexed by ptr >> 22,
// confirms the chunk is libcalloc's: a foreign pointer is reported, never
// dereferenced.
#ifndef LCA_CHUNK_HXX
#define LCA_CHUNK_HXX

#include <atomic>
#include <cstddef>
#include <cstdint>

// For the globals the inline fast paths read: a hidden symbol is addressed
// relative to the code, without a load from the GOT.
#define LCA_HIDDEN __attribute__((visibility("hidden")))

namespace lca {

constexpr unsigned kChunkShift = 22;
constexpr std::size_t kChunkSize = std::size_t{1} << kChunkShift;
constexpr unsigned kSpanShift = 16;
constexpr std::size_t kSpanSize = std::size_t{1} << kSpanShift;
constexpr unsigned kSpansPerChunk = kChunkSize / kSpanSize;
constexpr std::size_t kChunkHeaderSize = kSpanSize;  // slot 0 of every chunk
constexpr std::uint64_t kChunkMagic = 0x6c6963616c6c6f63ull;  // "liccalloc"

enum class ChunkKind : std::uint32_t { spans = 1, arena = 2 };

// ChunkHeader::flags
enum : std::uint32_t {
  // Transparent huge pages may back the chunk (advised MADV_HUGEPAGE, or the THP
  // mode is `always` and it was not advised MADV_NOHUGEPAGE): purges return whole
  // free 2 MiB ranges only (huge.h++).
  kChunkMayBeHuge = 1,
};

struct Heap;
struct Domain;

// Where a heap wants its memory: a NUMA node (-1: anywhere, the kernel's
// first-touch default), bound preferred (the kernel may fall back to another node
// when this one is full) or strict.  numa.c++ is the policy that binds: it hands
// chunk_set_placement() its function once, and chunk and large call it for fresh
// memory without knowing NUMA (no upward include).
struct NodePlacement {
  int node = -1;
  bool strict = false;
};
using PlaceFunction = bool (*)(void* addr, std::size_t len, NodePlacement where);
// Installs the binding policy; nullptr withdraws it (numa.c++ does when the
// kernel refuses every binding: mbind EPERM under a seccomp or container
// policy, or ENOSYS).
void chunk_set_placement(PlaceFunction bind);
// Binds [addr, addr + len) as `where` says.  True when bound; false (the memory
// stays first-touch) when where.node < 0, no policy is installed, or the kernel
// refused (the caller counts that as a fallback).
bool chunk_place(void* addr, std::size_t len, NodePlacement where);
// Whether memory can be bound at all in this process (a policy is installed).
// When not, a request for a node takes unbound memory -- a cached free chunk or
// large mapping of node -1 -- as well as one bound to the node: fresh memory
// would be unbound too, and refusing the cached kind only grows the cache
// (docs/design.md, "Binding impossible").
bool chunk_can_place();

struct ChunkHeader {
  std::uint64_t magic;
  ChunkKind kind;
  std::uint32_t flags;  // kChunkMayBeHuge; kept for the chunk's whole life
  Domain* domain;
  Heap* heap;  // the heap that carves this chunk
  ChunkHeader* next;
  ChunkHeader* prev;
  std::int32_t node;  // the NUMA node the chunk is bound to, -1 when unbound
};

// A fresh, zeroed, registered chunk, bound as `where` says (chunk_place; its
// header's node is -1 when it is not bound); nullptr when the OS refuses.
ChunkHeader* chunk_map(ChunkKind kind, Domain* domain, NodePlacement where = {});
// Unregisters and unmaps a chunk.
void chunk_unmap(ChunkHeader* chunk);
// Returns the chunk's data pages (beyond its header) to the OS.
void chunk_purge_data(ChunkHeader* chunk);
// Zeroes the chunk's header (slot 0) for a chunk that changes kind, and writes its
// identity again (magic, domain, flags, kind).  With kChunkMayBeHuge the bytes
// are cleared with stores: a purge would split the huge page the chunk's first
// 2 MiB may sit on.
void chunk_reset_header(ChunkHeader* chunk, ChunkKind kind, Domain* domain, std::size_t used_bytes);

// --- registry -------------------------------------------------------------
// One byte per 4 MiB of the 48-bit user address space (64 MiB of zero-filled
// BSS: address space only, a page becomes resident when a chunk in its 16 GiB
// range is registered): the ChunkKind of the chunk there, 0 when it is not ours.
// A lookup is one load, and a foreign pointer is never dereferenced.
constexpr unsigned kAddressBits = 48;
constexpr std::size_t kRegistrySlots = std::size_t{1} << (kAddressBits - kChunkShift);
// Plain bytes read and written through std::atomic_ref: an array of std::atomic
// this long is value-initialised element by element in Clang's constant
// evaluator (constinit fails at its step limit, or takes gigabytes with the limit
// raised); a byte array is zero-filled BSS for every compiler.
extern std::uint8_t g_chunk_kind[kRegistrySlots] LCA_HIDDEN;

inline ChunkKind chunk_kind_of(const void* p) {
  // One shift for the range test and the index (an address at or above
  // 2^kAddressBits has a slot past the table); nullptr reads slot 0, which no
  // chunk can have (a chunk there would start at address 0, which
  // os_map_aligned returns only as failure): free's fast path needs no null test.
  std::uintptr_t slot = reinterpret_cast<std::uintptr_t>(p) >> kChunkShift;
  if (__builtin_expect(slot >= kRegistrySlots, 0)) return ChunkKind{};
  return static_cast<ChunkKind>(std::atomic_ref<std::uint8_t>(g_chunk_kind[slot]).load(std::memory_order_acquire));
}
inline ChunkHeader* chunk_base(const void* p) {
  return reinterpret_cast<ChunkHeader*>(reinterpret_cast<std::uintptr_t>(p) & ~(kChunkSize - 1));
}
inline ChunkHeader* registry_lookup(const void* p) {
  return chunk_kind_of(p) != ChunkKind{} ? chunk_base(p) : nullptr;
}
// Records a chunk's (new) kind.
void registry_set_kind(ChunkHeader* chunk, ChunkKind kind);

// Number of chunks registered now (all heaps).
std::size_t registry_chunk_count();

// Doubly linked lists of chunk headers, used by heaps and domains.
struct ChunkList {
  ChunkHeader* head = nullptr;
  std::size_t count = 0;
  void push(ChunkHeader* c);
  void remove(ChunkHeader* c);
  ChunkHeader* pop();
};

}  // namespace lca

#endif
