// sizeclass.h++ -- the size classes of the slab spans.
//
// Every multiple of 16 up to 1 KiB, then four classes per doubling up to the slab
// limit kSlabMax.  Every power of two is a class, so a power-of-two request wastes
// nothing; below 1 KiB the waste is under 16 bytes, above it under 25 %.  A request
// maps to its class with one table load indexed by (size + 15) / 16: O(1), no
// loops, no divisions.  docs/design.md records why (peak RSS against glibc) and
// why the limit is 8 KiB.
#ifndef LCA_SIZECLASS_HXX
#define LCA_SIZECLASS_HXX

#include <cstddef>
#include <cstdint>

#include "placement.h++"

namespace lca {

constexpr std::size_t kSlabMax = 8192;
constexpr std::size_t kFineClassLimit = 1024;  // 16-byte steps up to here
constexpr unsigned kNumClasses = kFineClassLimit / 16 + 12;

struct SizeClassTables {
  std::uint32_t size[kNumClasses];
  std::uint8_t of_granule[kSlabMax / 16 + 1];  // (size + 15) / 16 -> class
};

constexpr SizeClassTables make_size_class_tables() {
  SizeClassTables t{};
  unsigned n = 0;
  for (std::uint32_t s = 16; s <= kFineClassLimit; s += 16) t.size[n++] = s;
  for (std::uint32_t base = kFineClassLimit; base < kSlabMax; base *= 2)
    for (std::uint32_t q = 1; q <= 4; ++q) t.size[n++] = base + q * (base / 4);
  unsigned c = 0;
  for (std::size_t g = 0; g <= kSlabMax / 16; ++g) {
    while (t.size[c] < g * 16) ++c;
    t.of_granule[g] = static_cast<std::uint8_t>(c);
  }
  return t;
}

// In the RELRO page, not .rodata: malloc's fast path reads it (placement.h++).
LCA_CORE_RODATA(size_classes) inline constexpr SizeClassTables kSizeClasses = make_size_class_tables();
static_assert(kSizeClasses.size[kNumClasses - 1] == kSlabMax, "classes must end at the slab limit");

// size must be <= kSlabMax.  Size 0 maps to the 16-byte class.
inline unsigned size_to_class(std::size_t size) {
  return kSizeClasses.of_granule[(size + 15) >> 4];
}
inline std::size_t class_to_size(unsigned c) { return kSizeClasses.size[c]; }

}  // namespace lca

#endif
