// huge_page_allocator.c++ -- custom_alloc::HugePageAllocator, the C++ face of a
// huge-block table (huge.c++) on top of an independent heap.
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <new>

#include <custom_alloc/huge_page_allocator.h++>

#include "huge.h++"
#include "module.h++"
#include "report.h++"

namespace custom_alloc {

namespace {

// Set by enable_transparent_huge_pages(); the status is then evaluated when asked,
// so that it follows a change of the system-wide mode.
constinit std::atomic<bool> g_thp_requested{false};

HugePageAllocator::Backing to_public(lca::HugeBacking b) {
  switch (b) {
    case lca::HugeBacking::hugetlb: return HugePageAllocator::Backing::hugetlb;
    case lca::HugeBacking::transparent: return HugePageAllocator::Backing::transparent;
    case lca::HugeBacking::normal: return HugePageAllocator::Backing::normal;
    case lca::HugeBacking::none: break;
  }
  return HugePageAllocator::Backing::none;
}

HugePageAllocator::ThpMode to_public(lca::ThpMode m) {
  switch (m) {
    case lca::ThpMode::always: return HugePageAllocator::ThpMode::always;
    case lca::ThpMode::madvise: return HugePageAllocator::ThpMode::madvise;
    case lca::ThpMode::never: return HugePageAllocator::ThpMode::never;
    case lca::ThpMode::unsupported: break;
  }
  return HugePageAllocator::ThpMode::unsupported;
}

}  // namespace

HugePageAllocator::HugePageAllocator() : MemoryAllocator(), huge_(lca::huge_state_create()) {
  // The base class's destructor releases its heap when this throws.
  if (!huge_) throw std::bad_alloc();
  // free, realloc, malloc_usable_size and every heap's deallocate, reallocate,
  // try_realloc_inplace and get_allocation_size route huge blocks to their
  // allocator (module.h++).
  lca::register_module(lca::ModuleHeap::huge, lca::huge_module());
}

HugePageAllocator::~HugePageAllocator() { lca::huge_state_destroy(huge_); }

void* HugePageAllocator::allocate_huge(std::size_t size, HugePageSize page_size) {
  return mmap_huge(size, page_size);
}

void* HugePageAllocator::mmap_huge(std::size_t size, HugePageSize page_size) {
  return lca::huge_alloc(huge_, size, static_cast<std::size_t>(page_size));
}

void HugePageAllocator::deallocate_huge(void* ptr) {
  if (!ptr) return;
  if (!lca::huge_free(huge_, ptr))
    lca::report_fatal("Invalid free", ptr,
                      "not a block of this HugePageAllocator (never returned by its allocate_huge, "
                      "or already freed)");
}

void HugePageAllocator::deallocate(void* ptr) {
  // Huge blocks start at least 2 MiB-aligned: other pointers skip the table's lock.
  bool may_be_huge = ptr && (reinterpret_cast<std::uintptr_t>(ptr) & (lca::kHugePage2M - 1)) == 0;
  if (may_be_huge && lca::huge_free(huge_, ptr)) return;
  MemoryAllocator::deallocate(ptr);
}

HugePageAllocator::Backing HugePageAllocator::backing_of(const void* ptr) const {
  lca::HugeBlock b;
  return lca::huge_lookup(huge_, ptr, &b) ? to_public(b.backing) : Backing::none;
}

std::size_t HugePageAllocator::huge_allocation_size(const void* ptr) const {
  lca::HugeBlock b;
  return lca::huge_lookup(huge_, ptr, &b) ? b.size : 0;
}

HugePageAllocator::HugeStats HugePageAllocator::huge_stats() const {
  lca::HugeCounters c = lca::huge_counters(huge_);
  HugeStats out{};
  for (int i = 0; i < 3; ++i) {
    out.live_blocks[i] = c.live_blocks[i];
    out.live_bytes[i] = c.live_bytes[i];
  }
  out.allocations = c.allocations;
  out.deallocations = c.deallocations;
  out.hugetlb_fallbacks = c.hugetlb_fallbacks;
  return out;
}

std::size_t HugePageAllocator::huge_backed_bytes() const {
  return lca::huge_resident_huge_bytes(huge_, lca::HugeBacking::none);
}

HugePageAllocator::HugePageInfo HugePageAllocator::huge_page_info(HugePageSize page_size) {
  HugePageInfo info{};
  auto bytes = static_cast<std::size_t>(page_size);
  lca::HugePool pool = lca::huge_pool(bytes);
  info.hugetlb_supported = pool.supported;
  info.hugetlb_total = pool.total;
  info.hugetlb_free = pool.free;
  info.thp_mode = to_public(lca::huge_thp_mode());
  // THP pages are PMD-sized: 2 MiB on x86-64; nothing offers 1 GiB transparently.
  info.thp_usable = bytes == lca::kHugePage2M && lca::huge_thp_usable();
  info.built_with_huge_pages = lca::huge_built();
  return info;
}

bool HugePageAllocator::huge_pages_available(HugePageSize page_size) {
  if (page_size != HugePageSize::Size_2MB && page_size != HugePageSize::Size_1GB) return false;
  HugePageInfo info = huge_page_info(page_size);
  return info.built_with_huge_pages && (info.hugetlb_free > 0 || info.thp_usable);
}

bool HugePageAllocator::huge_pages_available() { return huge_pages_available(HugePageSize::Size_2MB); }

void HugePageAllocator::enable_transparent_huge_pages() {
  g_thp_requested.store(true, std::memory_order_relaxed);
  if (lca::huge_built()) lca::huge_thp_enable_for_process();
}

std::size_t HugePageAllocator::heap_huge_backed_bytes() { return lca::huge_heap_anon_huge_bytes(); }

HugePageAllocator::ThpStatus HugePageAllocator::transparent_huge_page_status() {
  if (!g_thp_requested.load(std::memory_order_relaxed)) return ThpStatus::not_requested;
  if (!lca::huge_built()) return ThpStatus::not_built;
  lca::ThpMode mode = lca::huge_thp_mode();
  if (mode != lca::ThpMode::always && mode != lca::ThpMode::madvise) return ThpStatus::prevented_by_system;
  if (lca::huge_thp_disabled_for_process()) return ThpStatus::prevented_by_process;
  return ThpStatus::enabled;
}

}  // namespace custom_alloc
