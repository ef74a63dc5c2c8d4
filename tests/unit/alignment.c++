// tests/unit/alignment.c++ -- the "alignment" suite.
//
// The request's AlignmentBug.SIMDCrash (TURN 8) turned into the fix: an alignas(64)
// struct of AVX-512 vectors allocated with allocate(size, alignof) takes aligned
// stores and loads.  Then every power-of-two alignment from 16 B to 64 MiB through
// every aligned entry point (allocate, lca_aligned_alloc, lca_posix_memalign,
// lca_memalign, aligned_alloc, posix_memalign, memalign, aligned operator new),
// valloc and pvalloc, and the error cases: a non-power-of-two or absurd alignment.
#include <custom_alloc/memory_allocator.h++>
#include <libcalloc.h>

#include <immintrin.h>
#include <malloc.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "config.h"

#include "../test-util.h++"

using custom_alloc::MemoryAllocator;
using test_util::Failure;
using test_util::launder;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

#ifdef CALLOC_OVERRIDE
constexpr bool kOverride = true;
#else
constexpr bool kOverride = false;
#endif
// Without the override the plain names (aligned_alloc, posix_memalign, memalign,
// aligned operator new) are glibc's and libstdc++'s -- or ASan's in a sanitizer
// build, which reports requests C11 calls invalid (aligned_alloc(16, 1)) as errors
// -- so the tests of edge cases check them only when they are libcalloc's.
const char* const kPlainNotOurs =
    "built with --disable-override: aligned_alloc, posix_memalign, memalign and aligned operator new are not "
    "libcalloc's (glibc's, or the sanitizer's in a sanitizer build) and were not checked; the lca_* entry points and "
    "MemoryAllocator were";

bool aligned_to(const void* p, std::size_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }

struct alignas(64) SIMDData {
  __m512 vectors[4];  // AVX-512: aligned loads and stores need 64-byte alignment
};
static_assert(alignof(SIMDData) == 64);
static_assert(sizeof(SIMDData) == 256);

// Stores four vectors with _mm512_store_ps (faults unless 64-byte aligned), loads
// them back with _mm512_load_ps and compares.  True when every lane round-trips.
__attribute__((target("avx512f"))) bool simd_round_trip(SIMDData* data) {
  for (int i = 0; i < 4; i++) {
    __m512 vec = _mm512_set1_ps(1.0f + static_cast<float>(i));
    _mm512_store_ps(&data->vectors[i], vec);
  }
  for (int i = 0; i < 4; i++) {
    __m512 got = _mm512_load_ps(&data->vectors[i]);
    __m512 want = _mm512_set1_ps(1.0f + static_cast<float>(i));
    if (_mm512_cmp_ps_mask(got, want, _CMP_EQ_OQ) != 0xFFFF) return false;
  }
  return true;
}

// The entry points that take an alignment.
enum class Api {
  allocate,
  lca_aligned_alloc,
  lca_posix_memalign,
  lca_memalign,
  aligned_alloc,
  posix_memalign,
  memalign,
  operator_new,
  operator_new_array,
  operator_new_nothrow,
};
constexpr Api kApis[] = {Api::allocate,     Api::lca_aligned_alloc, Api::lca_posix_memalign, Api::lca_memalign,
                         Api::aligned_alloc, Api::posix_memalign,    Api::memalign,           Api::operator_new,
                         Api::operator_new_array, Api::operator_new_nothrow};

// The entry points that are libcalloc's whatever the build.
bool is_ours(Api api) {
  switch (api) {
    case Api::allocate:
    case Api::lca_aligned_alloc:
    case Api::lca_posix_memalign:
    case Api::lca_memalign: return true;
    default: return kOverride;
  }
}

const char* api_name(Api api) {
  switch (api) {
    case Api::allocate: return "MemoryAllocator::allocate";
    case Api::lca_aligned_alloc: return "lca_aligned_alloc";
    case Api::lca_posix_memalign: return "lca_posix_memalign";
    case Api::lca_memalign: return "lca_memalign";
    case Api::aligned_alloc: return "aligned_alloc";
    case Api::posix_memalign: return "posix_memalign";
    case Api::memalign: return "memalign";
    case Api::operator_new: return "operator new(size, align_val_t)";
    case Api::operator_new_array: return "operator new[](size, align_val_t)";
    case Api::operator_new_nothrow: return "operator new(size, align_val_t, nothrow)";
  }
  return "?";
}

void* allocate_with(Api api, std::size_t align, std::size_t size) {
  void* p = nullptr;
  switch (api) {
    case Api::allocate: return MemoryAllocator::instance().allocate(size, align);
    case Api::lca_aligned_alloc: return lca_aligned_alloc(align, size);
    case Api::lca_posix_memalign: return lca_posix_memalign(&p, align, size) == 0 ? p : nullptr;
    case Api::lca_memalign: return lca_memalign(align, size);
    case Api::aligned_alloc: return launder(aligned_alloc(align, size));
    case Api::posix_memalign: return posix_memalign(&p, align, size) == 0 ? launder(p) : nullptr;
    case Api::memalign: return launder(memalign(align, size));
    case Api::operator_new:
      try {
        return launder(::operator new(size, std::align_val_t(align)));
      } catch (const std::bad_alloc&) {
        return nullptr;
      }
    case Api::operator_new_array:
      try {
        return launder(::operator new[](size, std::align_val_t(align)));
      } catch (const std::bad_alloc&) {
        return nullptr;
      }
    case Api::operator_new_nothrow: return launder(::operator new(size, std::align_val_t(align), std::nothrow));
  }
  return nullptr;
}

std::size_t usable_size_with(Api api, void* p) {
  switch (api) {
    case Api::allocate: return MemoryAllocator::instance().get_allocation_size(p);
    case Api::lca_aligned_alloc:
    case Api::lca_posix_memalign:
    case Api::lca_memalign: return lca_usable_size(p);
    default: return malloc_usable_size(p);
  }
}

void free_with(Api api, void* p, std::size_t align, std::size_t size) {
  switch (api) {
    case Api::allocate: MemoryAllocator::instance().deallocate(p); return;
    case Api::lca_aligned_alloc:
    case Api::lca_posix_memalign:
    case Api::lca_memalign: lca_free(p); return;
    case Api::aligned_alloc:
    case Api::posix_memalign:
    case Api::memalign: free(p); return;
    case Api::operator_new: ::operator delete(p, std::align_val_t(align)); return;
    case Api::operator_new_array: ::operator delete[](p, size, std::align_val_t(align)); return;  // sized
    case Api::operator_new_nothrow: ::operator delete(p, size, std::align_val_t(align)); return;  // sized
  }
}

// Allocates, checks alignment and usable size, writes across the whole size (a byte
// per page, see below, and the last byte), reads it back, frees.
void check_one(Failure& f, Api api, std::size_t align, std::size_t size) {
  void* p = allocate_with(api, align, size);
  if (p == nullptr) {
    f.note("%s(align %zu, size %zu) failed (errno %d)", api_name(api), align, size, errno);
    return;
  }
  if (!aligned_to(p, align)) f.note("%s(align %zu, size %zu) = %p is misaligned", api_name(api), align, size, p);
  std::size_t usable = usable_size_with(api, p);
  if (usable < size) f.note("%s(align %zu, size %zu): usable size %zu", api_name(api), align, size, usable);
  // every page up to 4 MiB; beyond, 1024 pages spread over the block (the 64 MiB
  // alignments would otherwise fault in gigabytes)
  unsigned char mark = static_cast<unsigned char>(align * 3 + size);
  test_util::touch_range(p, size, mark, 1024);
  if (!test_util::touched_range_ok(p, size, mark, 1024))
    f.note("%s(align %zu, size %zu): memory did not keep what was written", api_name(api), align, size);
  free_with(api, p, align, size);
}

}  // namespace

// AlignmentBug.SIMDCrash, rewritten as the fix: the request showed the crash of an
// aligned AVX-512 store into a 16-byte-aligned block; allocate(size, alignof(T))
// returns a 64-byte-aligned block and the stores and loads work.
START_TEST(test_simd_crash) {
  const bool have_avx512 = __builtin_cpu_supports("avx512f");
  MemoryAllocator alloc;
  Failure f;
  for (int i = 0; i < 1000; i++) {
    void* ptr = alloc.allocate(sizeof(SIMDData), alignof(SIMDData));
    void* ptr2 = lca_aligned_alloc(alignof(SIMDData), sizeof(SIMDData));
    SIMDData* ptr3 = new SIMDData;  // C++17 aligned operator new
    if (ptr == nullptr || ptr2 == nullptr) {
      f.note("aligned allocation failed at round %d", i);
      break;
    }
    if (!aligned_to(ptr, 64)) f.note("allocate(%zu, 64) = %p is not 64-byte aligned", sizeof(SIMDData), ptr);
    if (!aligned_to(ptr2, 64)) f.note("lca_aligned_alloc(64, %zu) = %p is not 64-byte aligned", sizeof(SIMDData), ptr2);
    if (!aligned_to(ptr3, 64)) f.note("new SIMDData = %p is not 64-byte aligned", static_cast<void*>(ptr3));
    SIMDData* data = new (ptr) SIMDData;
    SIMDData* data2 = new (ptr2) SIMDData;
    if (have_avx512 && f.count() == 0) {
      if (!simd_round_trip(data) || !simd_round_trip(data2) || !simd_round_trip(ptr3))
        f.note("AVX-512 store/load round trip gave wrong data at round %d", i);
    }
    delete ptr3;
    alloc.deallocate(ptr);
    lca_free(ptr2);
  }
  ASSERT_NO_FAILURE(f);
  ck_assert_uint_eq(alloc.get_stats().active_allocations.load(), 0);
  if (!have_avx512)
    TEST_SKIP("no AVX-512F on this CPU (or in Valgrind's emulation of it): the 64-byte alignment was checked, the AVX-512 stores were not run");
}
END_TEST

// Every power-of-two alignment from 16 B to 64 MiB, sizes 1, align-1, align, align+1
// and 3*align, through every aligned entry point.
START_TEST(test_every_alignment) {
  Failure f;
  for (std::size_t align = 16; align <= 64 * MiB; align *= 2) {
    const std::size_t sizes[] = {1, align - 1, align, align + 1, 3 * align};
    for (Api api : kApis)
      if (is_ours(api))
        for (std::size_t size : sizes) check_one(f, api, align, size);
  }
  ASSERT_NO_FAILURE(f);
  if (!kOverride) TEST_SKIP("%s", kPlainNotOurs);
}
END_TEST

// valloc: page-aligned; pvalloc: page-aligned and the size rounded up to pages.
START_TEST(test_valloc_pvalloc) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Failure f;
  for (std::size_t size : {1ul, page - 1, page, page + 1, 3 * page, 100 * KiB, 5 * MiB + 3}) {
    void* p = launder(valloc(size));
    void* q = launder(pvalloc(size));
    if (p == nullptr || q == nullptr) {
      f.note("valloc/pvalloc(%zu) failed", size);
      free(p);
      free(q);
      continue;
    }
    if (!aligned_to(p, page)) f.note("valloc(%zu) = %p not page-aligned", size, p);
    if (!aligned_to(q, page)) f.note("pvalloc(%zu) = %p not page-aligned", size, q);
    if (malloc_usable_size(p) < size) f.note("valloc(%zu): usable %zu", size, malloc_usable_size(p));
    std::size_t rounded = (size + page - 1) / page * page;
    if (malloc_usable_size(q) < rounded)
      f.note("pvalloc(%zu): usable %zu < %zu (size rounded to pages)", size, malloc_usable_size(q), rounded);
    test_util::touch_range(p, size, 0x11);
    test_util::touch_range(q, rounded, 0x22);  // pvalloc's whole rounded size is the caller's
    if (!test_util::touched_range_ok(p, size, 0x11) || !test_util::touched_range_ok(q, rounded, 0x22))
      f.note("valloc/pvalloc(%zu): memory did not keep what was written", size);
    free(p);
    free(q);
  }
  ASSERT_NO_FAILURE(f);
}
END_TEST

// A non-power-of-two alignment is an error: EINVAL from posix_memalign (and *result
// untouched), NULL with errno EINVAL from aligned_alloc, memalign and allocate().
START_TEST(test_alignment_not_power_of_two) {
  int sentinel_storage = 0;
  void* const sentinel = &sentinel_storage;
  for (std::size_t align : {24ul, 48ul, 96ul, 3ul * 4096, 1000ul, 65536ul + 16}) {
    void* r = sentinel;
    ck_assert_int_eq(lca_posix_memalign(&r, align, 100), EINVAL);
    ck_assert_ptr_eq(r, sentinel);
    if (kOverride) {
      r = sentinel;
      ck_assert_int_eq(posix_memalign(&r, align, 100), EINVAL);
      ck_assert_ptr_eq(r, sentinel);
    }

    errno = 0;
    ck_assert_ptr_null(lca_aligned_alloc(align, 100));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(lca_memalign(align, 100));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(MemoryAllocator::instance().allocate(100, align));
    ck_assert_int_eq(errno, EINVAL);
    MemoryAllocator own;
    errno = 0;
    ck_assert_ptr_null(own.allocate(100, align));
    ck_assert_int_eq(errno, EINVAL);
  }
  // posix_memalign also wants a multiple of sizeof(void*)
  void* r = sentinel;
  ck_assert_int_eq(lca_posix_memalign(&r, 4, 100), EINVAL);
  ck_assert_ptr_eq(r, sentinel);
  ck_assert_int_eq(lca_posix_memalign(&r, 0, 100), EINVAL);
  ck_assert_ptr_eq(r, sentinel);
#ifdef CALLOC_OVERRIDE
  ck_assert_int_eq(posix_memalign(&r, 4, 100), EINVAL);
  ck_assert_ptr_eq(r, sentinel);
  // glibc's own aligned_alloc (2.36) rounds a bad alignment up; ours refuses it.
  errno = 0;
  ck_assert_ptr_null(launder(aligned_alloc(24, 100)));
  ck_assert_int_eq(errno, EINVAL);
#else
  TEST_SKIP("built with --disable-override: posix_memalign and aligned_alloc are not libcalloc's (glibc's "
            "aligned_alloc accepts a non-power-of-two alignment; ASan's reports it as an error) and were not "
            "checked; the lca_* entry points and MemoryAllocator were");
#endif
}
END_TEST

// Small power-of-two alignments (1..8) are valid for aligned_alloc (and 8 for
// posix_memalign): they succeed, and the block is 16-byte aligned as always.
START_TEST(test_small_alignment) {
  for (std::size_t align : {1ul, 2ul, 4ul, 8ul}) {
    void* p = lca_aligned_alloc(align, 40);
    ck_assert_msg(p != nullptr, "lca_aligned_alloc(%zu, 40) failed", align);
    ck_assert_msg(aligned_to(p, 16), "lca_aligned_alloc(%zu, 40) = %p not 16-byte aligned", align, p);
    lca_free(p);
    void* q = launder(aligned_alloc(align, 40));
    ck_assert_msg(q != nullptr, "aligned_alloc(%zu, 40) failed", align);
    ck_assert_msg(aligned_to(q, 16), "aligned_alloc(%zu, 40) = %p not 16-byte aligned", align, q);
    free(q);
  }
  void* r = nullptr;
  ck_assert_int_eq(lca_posix_memalign(&r, 8, 40), 0);
  ck_assert_ptr_nonnull(r);
  ck_assert(aligned_to(r, 16));
  lca_free(r);
  ck_assert_int_eq(posix_memalign(&r, 8, 40), 0);
  ck_assert_ptr_nonnull(r);
  ck_assert(aligned_to(r, 16));
  free(r);
}
END_TEST

// A power-of-two alignment too large to satisfy fails cleanly with ENOMEM.
START_TEST(test_alignment_too_large) {
  volatile std::size_t huge = std::size_t{1} << 62;
  void* r = nullptr;
  errno = 0;
  ck_assert_ptr_null(lca_aligned_alloc(huge, 16));
  ck_assert_int_eq(errno, ENOMEM);
  ck_assert_int_eq(lca_posix_memalign(&r, huge, 16), ENOMEM);
  errno = 0;
  ck_assert_ptr_null(MemoryAllocator::instance().allocate(16, huge));
  ck_assert_int_eq(errno, ENOMEM);
  // and a huge size with a modest alignment
  errno = 0;
  ck_assert_ptr_null(lca_aligned_alloc(4096, SIZE_MAX - 4096));
  ck_assert_int_eq(errno, ENOMEM);
  if (!kOverride) TEST_SKIP("%s", kPlainNotOurs);
  ck_assert_ptr_null(launder(aligned_alloc(huge, 16)));
  ck_assert_int_ne(posix_memalign(&r, huge, 16), 0);
  bool threw = false;
  try {
    void* p = ::operator new(16, std::align_val_t(huge));
    ::operator delete(p, std::align_val_t(huge));
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  ck_assert_msg(threw, "operator new(16, align_val_t(2^62)) did not throw std::bad_alloc");
}
END_TEST

// aligned_alloc(alignment, 0) with an alignment above a span (64 KiB) takes the
// large path.  The fuzzer (tests/fuzz) found that it mapped 0 bytes there
// (mapping_size_for(0): __builtin_clzll(0), undefined): every such block had
// the same address, one inside the next mapping -- here the 3 MiB block's --
// and its free freed that address again.  Each must be a distinct block of its
// own, not inside another live block.
START_TEST(test_zero_size_large_alignment) {
  constexpr int kBlocks = 6;
  MemoryAllocator heap;
  for (std::size_t align : {128 * KiB, MiB, 4 * MiB}) {
    void* zero[2 * kBlocks];
    for (int i = 0; i < kBlocks; i++) {
      zero[i] = lca_aligned_alloc(align, 0);
      zero[kBlocks + i] = heap.allocate(0, align);
    }
    auto* big = static_cast<unsigned char*>(lca_malloc(3 * MiB));
    auto* heap_big = static_cast<unsigned char*>(heap.allocate(3 * MiB));
    ck_assert_ptr_nonnull(big);
    ck_assert_ptr_nonnull(heap_big);
    std::memset(big, 0xa5, 3 * MiB);
    std::memset(heap_big, 0x5a, 3 * MiB);
    for (int i = 0; i < 2 * kBlocks; i++) {
      ck_assert_msg(zero[i] != nullptr, "a zero-size block aligned to %zu failed", align);
      ck_assert_msg(aligned_to(zero[i], align), "%p not aligned to %zu", zero[i], align);
      for (int j = 0; j < i; j++)
        ck_assert_msg(zero[i] != zero[j], "two live zero-size blocks aligned to %zu share %p", align, zero[i]);
      for (unsigned char* b : {big, heap_big}) {
        auto* z = static_cast<unsigned char*>(zero[i]);
        ck_assert_msg(z < b || z >= b + 3 * MiB, "the zero-size block %p lies inside the 3 MiB block %p", z, b);
      }
    }
    for (int i = 0; i < kBlocks; i++) {
      lca_free(zero[i]);
      heap.deallocate(zero[kBlocks + i]);
    }
    for (std::size_t i = 0; i < 3 * MiB; i += 4096) {
      ck_assert_uint_eq(big[i], 0xa5);
      ck_assert_uint_eq(heap_big[i], 0x5a);
    }
    lca_free(big);
    heap.deallocate(heap_big);
  }
}
END_TEST

int main() {
  TCase* tc;
  Suite* s = test_util::make_suite("alignment", &tc);
  tcase_add_test(tc, test_simd_crash);
  tcase_add_test(tc, test_every_alignment);
  tcase_add_test(tc, test_valloc_pvalloc);
  tcase_add_test(tc, test_alignment_not_power_of_two);
  tcase_add_test(tc, test_small_alignment);
  tcase_add_test(tc, test_alignment_too_large);
  tcase_add_test(tc, test_zero_size_large_alignment);
  return test_util::run_suite(s);
}
