// bench/huge-bench.c++ -- the request's HugePageVsNormalPage benchmark (not a test).
//
// Fault-in: map a region (1 GiB by default) and write one byte per 4 KiB page, timed
// from the allocator's construction to the last write, the region released after
// each run.  Three backings side by side:
//   4 KiB pages   MemoryAllocator (an independent heap) allocate(): a dedicated
//                 mapping of normal pages (MADV_NOHUGEPAGE when the THP mode is
//                 `always`, so the row stays what it says);
//   THP           HugePageAllocator::allocate_huge with hugetlb skipped: a 2 MiB-
//                 aligned mapping advised MADV_HUGEPAGE;
//   hugetlb 2 MiB allocate_huge from the hugetlbfs pool -- only when the pool has the
//                 pages (--reserve, as root, reserves them and gives them back).
// TLB-bound: random dependent 8-byte reads over the faulted region (each load's
// address depends on the previous load), ns per read.
// Median, p99 (nearest rank) and max of the runs; ratios against the 4 KiB row.
// Writes the figures to huge-bench.csv too.
//
//   bench/huge-bench [--mib N] [--runs N] [--reads N] [--reserve]
//   (HUGE_BENCH_MIB sets the default region size.)
#include <custom_alloc/huge_page_allocator.h++>

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "huge.h++"

using custom_alloc::HugePageAllocator;
using custom_alloc::MemoryAllocator;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

struct Options {
  std::size_t mib = 1024;
  int runs = 5;
  std::size_t reads = 20'000'000;
  bool reserve = false;
};

enum class Kind { normal, thp, hugetlb };

struct Row {
  Row(const char* n, Kind k) : name(n), kind(k) {}
  const char* name;
  Kind kind;
  bool ran = false;
  std::string note;
  std::vector<double> fault_ms;
  std::vector<double> read_ns;
  std::size_t huge_bytes = 0;  // backed by huge pages after the fault-in
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p) {  // nearest rank
  std::sort(v.begin(), v.end());
  std::size_t rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size()) + 0.999999);
  if (rank < 1) rank = 1;
  return v[std::min(rank, v.size()) - 1];
}

double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

void touch_pages(void* p, std::size_t size) {
  volatile char* c = static_cast<volatile char*>(p);
  for (std::size_t i = 0; i < size; i += 4096) c[i] = 1;
}

// Dependent random reads: ns per read.
double random_reads(const void* p, std::size_t size, std::size_t reads) {
  const auto* words = static_cast<const volatile std::uint64_t*>(p);
  const std::size_t mask = size / 8 - 1;  // size is a power of two times 2 MiB
  std::uint64_t x = 0x9E3779B97F4A7C15ull;
  auto t0 = Clock::now();
  for (std::size_t i = 0; i < reads; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    x += words[(x >> 17) & mask];
  }
  auto t1 = Clock::now();
  asm volatile("" : : "r"(x));  // keep the chain
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(reads);
}

// One fault-in run; the last run also does the read runs on its region.
void run_once(Row& row, std::size_t size, const Options& o, bool with_reads) {
  auto t0 = Clock::now();
  if (row.kind == Kind::normal) {
    MemoryAllocator heap;
    void* p = heap.allocate(size);
    if (!p) {
      row.note = "allocate failed";
      return;
    }
    if (lca::huge_thp_mode() == lca::ThpMode::always) madvise(p, size, MADV_NOHUGEPAGE);
    touch_pages(p, size);
    row.fault_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    row.huge_bytes = lca::huge_smaps_anon_huge_bytes(p, size);
    if (with_reads)
      for (int r = 0; r < o.runs; ++r) row.read_ns.push_back(random_reads(p, size, o.reads));
    heap.deallocate(p);
    row.ran = true;
    return;
  }
  HugePageAllocator alloc;
  if (row.kind == Kind::thp) lca::huge_set_backings(alloc.huge_state(), lca::kHugeTryTransparent);
  void* p = alloc.allocate_huge(size);
  if (!p) {
    row.note = "allocate_huge failed";
    return;
  }
  HugePageAllocator::Backing want =
      row.kind == Kind::thp ? HugePageAllocator::Backing::transparent : HugePageAllocator::Backing::hugetlb;
  if (alloc.backing_of(p) != want) {
    row.note = "did not get this backing";
    alloc.deallocate_huge(p);
    return;
  }
  touch_pages(p, size);
  row.fault_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  row.huge_bytes = alloc.huge_backed_bytes();
  if (with_reads)
    for (int r = 0; r < o.runs; ++r) row.read_ns.push_back(random_reads(p, size, o.reads));
  alloc.deallocate_huge(p);
  row.ran = true;
}

bool write_long(const char* path, long v) {
  std::ofstream out(path);
  out << v << "\n";
  out.flush();
  return static_cast<bool>(out);
}

long read_long(const char* path) {
  std::ifstream in(path);
  long v = -1;
  in >> v;
  return in ? v : -1;
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--mib N] [--runs N] [--reads N] [--reserve]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const char* env = std::getenv("HUGE_BENCH_MIB")) o.mib = std::strtoull(env, nullptr, 10);
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--mib" && i + 1 < argc) o.mib = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--runs" && i + 1 < argc) o.runs = std::atoi(argv[++i]);
    else if (a == "--reads" && i + 1 < argc) o.reads = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--reserve") o.reserve = true;
    else return usage(argv[0]);
  }
  // A power of two of at least 2 MiB keeps the random-read mask exact.
  std::size_t mib = 2;
  while (mib * 2 <= o.mib) mib *= 2;
  if (mib != o.mib) std::fprintf(stderr, "huge-bench: region rounded down to %zu MiB (a power of two)\n", mib);
  o.mib = mib;
  if (o.runs < 1 || o.reads < 1) return usage(argv[0]);
  const std::size_t size = o.mib * MiB;

  const char* nr_path = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
  long pages_needed = static_cast<long>(size / (2 * MiB));
  long original_nr = read_long(nr_path);
  bool reserved = false;
  lca::HugePool pool = lca::huge_pool(2 * MiB);
  if (o.reserve && pool.supported && static_cast<long>(pool.free) < pages_needed) {
    reserved = write_long(nr_path, original_nr + pages_needed - static_cast<long>(pool.free));
    pool = lca::huge_pool(2 * MiB);
  }

  Row rows[] = {Row("4 KiB pages", Kind::normal), Row("THP (MADV_HUGEPAGE)", Kind::thp),
                Row("hugetlb 2 MiB", Kind::hugetlb)};
  for (Row& row : rows) {
    if (row.kind == Kind::hugetlb && static_cast<long>(pool.free) < pages_needed) {
      row.note = "skipped: the pool has " + std::to_string(pool.free) + " free pages, " +
                 std::to_string(pages_needed) + " needed (--reserve as root)";
      continue;
    }
    if (row.kind == Kind::thp && !lca::huge_thp_usable()) {
      row.note = "skipped: THP not usable (mode never, or disabled for the process)";
      continue;
    }
    // Interleaving would be fairer against noise, but each run maps and frees the
    // whole region: runs of one row follow each other, rows one after the other.
    for (int r = 0; r < o.runs && row.note.empty(); ++r) run_once(row, size, o, r == o.runs - 1);
  }
  if (reserved) write_long(nr_path, original_nr);

  const Row& base = rows[0];
  std::printf("HugePageVsNormalPage: %zu MiB region, %d runs, %zu random reads per run; THP mode %s\n\n", o.mib,
              o.runs, o.reads,
              lca::huge_thp_mode() == lca::ThpMode::always    ? "always"
              : lca::huge_thp_mode() == lca::ThpMode::madvise ? "madvise"
              : lca::huge_thp_mode() == lca::ThpMode::never   ? "never"
                                                              : "unsupported");
  std::printf("| backing | fault-in median ms | p99 ms | max ms | speed-up (median) | huge-page backed | random read ns (median) | speed-up |\n");
  std::printf("|---|--:|--:|--:|--:|--:|--:|--:|\n");
  std::FILE* csv = std::fopen("huge-bench.csv", "w");
  if (csv) std::fprintf(csv, "backing,mib,runs,fault_median_ms,fault_p99_ms,fault_max_ms,huge_backed_mib,read_median_ns\n");
  for (const Row& row : rows) {
    if (!row.ran) {
      std::printf("| %s | %s | | | | | | |\n", row.name, row.note.c_str());
      continue;
    }
    double fm = median(row.fault_ms), rm = median(row.read_ns);
    double fault_ratio = base.ran ? median(base.fault_ms) / fm : 0;
    double read_ratio = base.ran ? median(base.read_ns) / rm : 0;
    std::printf("| %s | %.1f | %.1f | %.1f | %.2fx | %zu MiB | %.1f | %.2fx |\n", row.name, fm,
                percentile(row.fault_ms, 99), max_of(row.fault_ms), fault_ratio, row.huge_bytes / MiB, rm, read_ratio);
    if (csv)
      std::fprintf(csv, "%s,%zu,%d,%.3f,%.3f,%.3f,%zu,%.3f\n", row.name, o.mib, o.runs, fm,
                   percentile(row.fault_ms, 99), max_of(row.fault_ms), row.huge_bytes / MiB, rm);
  }
  if (csv) std::fclose(csv);
  // The runs in order: a first run much slower than the others is the cost of
  // memory the machine touches for the first time (compaction, or a VM host
  // backing the guest's pages), not the steady state.
  std::printf("\nfault-in runs in order (ms):\n");
  for (const Row& row : rows) {
    if (!row.ran) continue;
    std::printf("  %-20s", row.name);
    for (double ms : row.fault_ms) std::printf(" %.1f", ms);
    std::printf("\n");
  }
  return 0;
}
