// span.c++ -- span initialisation, remote-free collection, in-place growth.
//
// The hot operations (pop, local push, remote push) are inline in span.h++;
// this file holds the rarer ones.
#include "span.h++"


namespace lca {

void span_init(Span* s, SpanChunk* chunk, unsigned slot, unsigned size_class, Heap* heap) {
  char* base = reinterpret_cast<char*>(chunk) + (static_cast<std::size_t>(slot) << kSpanShift);
  std::uint32_t size = static_cast<std::uint32_t>(class_to_size(size_class));
  std::uint32_t count = static_cast<std::uint32_t>(kSpanSize / size);
  s->free = nullptr;
  s->base = base;
  s->bump = base;
  s->end = base + static_cast<std::size_t>(count) * size;
  s->used = 0;
  s->obj_size = size;
  s->reciprocal = static_cast<std::uint32_t>(((std::uint64_t{1} << 32) + size - 1) / size);
  s->size_class = static_cast<std::uint16_t>(size_class);
  s->multislot_count = 0;
  s->heap = heap;
  s->next = s->prev = nullptr;
  s->remote_free.store(nullptr, std::memory_order_relaxed);
  // The span's granules of the chunk bitmap are all clear: a retired span's
  // objects were all freed.
  s->flags = 0;
}

std::uint32_t span_object_slots(const Span* s, std::uint32_t i) {
  for (unsigned k = 0; k < s->multislot_count; ++k)
    if (s->multislot[k].first == i) return s->multislot[k].slots;
  return 1;
}

std::size_t span_release_multislot(Span* s, std::uint32_t i) {
  for (unsigned k = 0; k < s->multislot_count; ++k) {
    if (s->multislot[k].first != i) continue;
    std::uint32_t slots = s->multislot[k].slots;
    // The extra slots go back on the free list as ordinary objects.
    for (std::uint32_t j = 1; j < slots; ++j) {
      auto* o = reinterpret_cast<FreeObject*>(s->base + static_cast<std::size_t>(i + j) * s->obj_size);
      o->next = s->free;
      s->free = o;
    }
    s->used -= slots - 1;
    s->multislot[k] = s->multislot[--s->multislot_count];
    if (!s->multislot_count) s->flags &= static_cast<std::uint8_t>(~kSpanMultislot);
    return static_cast<std::size_t>(slots) * s->obj_size;
  }
  return s->obj_size;
}

std::uint32_t span_collect_remote(Span* s, std::size_t* extra_bytes) {
  FreeObject* list = s->remote_free.exchange(nullptr, std::memory_order_acquire);
  std::uint32_t n = 0;
  *extra_bytes = 0;
  while (list) {
    FreeObject* next = list->next;
    std::uint32_t i = span_index(s, list);
    *extra_bytes += span_push_local(s, list, i) - s->obj_size;
    list = next;
    ++n;
  }
  return n;
}

bool span_grow_at_frontier(Span* s, void* p, std::uint32_t i, std::size_t new_size) {
  std::uint32_t slots = span_object_slots(s, i);
  char* obj_end = static_cast<char*>(p) + static_cast<std::size_t>(slots) * s->obj_size;
  if (obj_end != s->bump) return false;
  std::size_t need = (new_size + s->obj_size - 1) / s->obj_size;
  if (need <= slots) return true;
  std::size_t extra = (need - slots) * s->obj_size;
  if (static_cast<std::size_t>(s->end - s->bump) < extra) return false;
  unsigned k = 0;
  while (k < s->multislot_count && s->multislot[k].first != i) ++k;
  if (k == s->multislot_count) {
    if (k == kMaxMultislot) return false;
    s->multislot[k].first = i;
    ++s->multislot_count;
    s->flags |= kSpanMultislot;
  }
  s->multislot[k].slots = static_cast<std::uint32_t>(need);
  s->bump += extra;
  s->used += static_cast<std::uint32_t>(need - slots);
  return true;
}

}  // namespace lca
