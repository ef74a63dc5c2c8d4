// bench/defrag-bench.c++ -- defragmentation figures (issue 12); not a test.
//
//   defrag-bench pauses [MiB]       pass pauses with 100 us and 1 ms budgets (p50/p99/p99.9/max,
//                                   wall and the pass's CPU time),
//                                   mover throughput of a full pass (MB/s)
//   defrag-bench resolve            resolve() against a raw pointer dereference; pin/unpin
//   defrag-bench rss-libcalloc MiB  RSS of a heap of MiB (48..4096-byte blocks), 90 % freed at
//                                   random, before and after one full pass
//   defrag-bench rss-malloc MiB     the same pattern through malloc/free: run it under
//                                   LD_PRELOAD of glibc, jemalloc, tcmalloc, mimalloc
//                                   (bench/defrag-compare.sh does, side by side)
// Every line is "key value" so the script can tabulate them.
#include <custom_alloc/defrag.h++>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <time.h>

#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

std::size_t rss_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  if (std::fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
  std::fclose(f);
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// The blocks of the fragmented heap: sizes 48..4096, 90 % freed at random.
template <class Alloc, class Free>
std::vector<void*> fragment(std::size_t mib, Alloc alloc, Free release) {
  std::mt19937_64 rng(12345);
  const std::size_t sizes[] = {48, 64, 96, 128, 256, 512, 1024, 4096};
  std::vector<void*> all;
  std::size_t bytes = 0;
  while (bytes < mib << 20) {
    std::size_t size = sizes[rng() % 8];
    void* p = alloc(size);
    if (!p) break;
    std::memset(p, 1, size);
    all.push_back(p);
    bytes += size;
  }
  std::vector<void*> kept;
  for (void* p : all)
    if (rng() % 10 == 0)
      kept.push_back(p);
    else
      release(p);
  return kept;
}

// This thread's CPU time, microseconds.
double thread_cpu_us() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

double pct(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t i = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  return v[i];
}

int pauses(std::size_t mib) {
  for (long budget_us : {100L, 1000L}) {
    custom_alloc::MemoryAllocator heap;
    auto kept = fragment(mib, [&](std::size_t n) { return heap.allocate(n); }, [&](void* p) { heap.deallocate(p); });
    custom_alloc::DefragmentationEngine engine;
    custom_alloc::DefragBudget b;
    b.max_time = std::chrono::microseconds(budget_us);
    b.measure = false;
    std::vector<double> pass_us, cpu_us;
    std::size_t moved = 0, objects = 0;
    for (;;) {
      double cpu0 = thread_cpu_us();
      auto s = engine.defragment(heap, nullptr, b);
      cpu_us.push_back(thread_cpu_us() - cpu0);
      // The pause is what the pass held the heap for: its budgeted part.
      pass_us.push_back(static_cast<double>(s.duration.count()));
      moved += s.bytes_moved;
      objects += s.objects_relocated;
      if (!s.work_remaining) break;
    }
    std::size_t passes = pass_us.size();
    // Wall time is the pause; the pass's CPU time leaves out what other
    // programs took of the CPU meanwhile (on a shared machine, most of the tail).
    std::printf("budget_us %ld passes %zu objects %zu moved_mib %.1f pass_p50_us %.0f pass_p99_us %.0f "
                "pass_p999_us %.0f pass_max_us %.0f cpu_p50_us %.0f cpu_p99_us %.0f cpu_p999_us %.0f "
                "cpu_max_us %.0f\n",
                budget_us, passes, objects, static_cast<double>(moved) / (1 << 20), pct(pass_us, 0.5),
                pct(pass_us, 0.99), pct(pass_us, 0.999), pct(pass_us, 1.0), pct(cpu_us, 0.5), pct(cpu_us, 0.99),
                pct(cpu_us, 0.999), pct(cpu_us, 1.0));
  }
  custom_alloc::MemoryAllocator heap;
  fragment(mib, [&](std::size_t n) { return heap.allocate(n); }, [&](void* p) { heap.deallocate(p); });
  custom_alloc::DefragmentationEngine engine;
  auto s = engine.defragment(heap, nullptr);
  double secs = static_cast<double>(s.duration.count()) / 1e6;
  std::printf("full_pass_ms %.1f moved_mib %.1f throughput_mb_s %.0f per_move_ns %.0f\n", secs * 1e3,
              static_cast<double>(s.bytes_moved) / (1 << 20), static_cast<double>(s.bytes_moved) / 1e6 / secs,
              secs * 1e9 / static_cast<double>(s.objects_relocated ? s.objects_relocated : 1));
  return 0;
}

int resolve_cost() {
  custom_alloc::HandleAllocator heap;
  constexpr std::size_t kObjects = 4096, kRounds = 2000;
  std::vector<custom_alloc::Handle> hs;
  std::vector<std::uint64_t*> raw;
  for (std::size_t i = 0; i < kObjects; ++i) {
    hs.push_back(heap.allocate_handle(64));
    raw.push_back(static_cast<std::uint64_t*>(heap.resolve(hs.back())));
    *raw.back() = i;
  }
  std::uint64_t sum = 0;
  auto t0 = Clock::now();
  for (std::size_t r = 0; r < kRounds; ++r)
    for (std::size_t i = 0; i < kObjects; ++i) sum += *static_cast<volatile std::uint64_t*>(raw[i]);
  auto t1 = Clock::now();
  for (std::size_t r = 0; r < kRounds; ++r)
    for (std::size_t i = 0; i < kObjects; ++i) sum += *static_cast<volatile std::uint64_t*>(heap.resolve(hs[i]));
  auto t2 = Clock::now();
  for (std::size_t r = 0; r < kRounds / 10; ++r)
    for (std::size_t i = 0; i < kObjects; ++i) {
      auto g = heap.pin(hs[i]);
      sum += *g.as<volatile std::uint64_t>();
    }
  auto t3 = Clock::now();
  double n = static_cast<double>(kObjects * kRounds);
  auto ns = [](auto d) { return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); };
  std::printf("raw_deref_ns %.2f resolve_ns %.2f pin_unpin_ns %.2f checksum %llu\n", ns(t1 - t0) / n, ns(t2 - t1) / n,
              ns(t3 - t2) / (n / 10), static_cast<unsigned long long>(sum & 1));
  for (auto h : hs) heap.deallocate_handle(h);
  return 0;
}

int rss_libcalloc(std::size_t mib) {
  std::size_t base = rss_bytes();
  custom_alloc::MemoryAllocator heap;
  fragment(mib, [&](std::size_t n) { return heap.allocate(n); }, [&](void* p) { heap.deallocate(p); });
  heap.trim();
  std::size_t before = rss_bytes() - base;
  custom_alloc::DefragmentationEngine engine;
  auto s = engine.defragment(heap, nullptr);
  std::size_t after = rss_bytes() - base;
  std::printf("rss_fragmented_mib %.1f rss_after_mib %.1f moved_mib %.1f pass_ms %.0f\n",
              static_cast<double>(before) / (1 << 20), static_cast<double>(after) / (1 << 20),
              static_cast<double>(s.bytes_moved) / (1 << 20), static_cast<double>(s.duration.count()) / 1e3);
  return 0;
}

int rss_malloc(std::size_t mib) {
  std::size_t base = rss_bytes();
  auto kept = fragment(mib, [](std::size_t n) { return std::malloc(n); }, [](void* p) { std::free(p); });
  std::size_t before = rss_bytes() - base;
  std::printf("rss_fragmented_mib %.1f rss_after_mib %.1f moved_mib 0 pass_ms 0\n",
              static_cast<double>(before) / (1 << 20), static_cast<double>(before) / (1 << 20));
  for (void* p : kept) std::free(p);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "pauses";
  std::size_t mib = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 64;
  if (mode == "pauses") return pauses(mib);
  if (mode == "resolve") return resolve_cost();
  if (mode == "rss-libcalloc") return rss_libcalloc(mib);
  if (mode == "rss-malloc") return rss_malloc(mib);
  std::fprintf(stderr, "usage: defrag-bench pauses|resolve|rss-libcalloc|rss-malloc [MiB]\n");
  return 2;
}
