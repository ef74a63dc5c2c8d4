// tests/stress/soak.c++ -- the soak (`make soak`; not in CI): a multi-threaded
// random workload for a long time, in phases, whose resident memory must come
// back to its baseline after each phase.
//
// Each phase runs 8 threads for CALLOC_SOAK_SECONDS / CALLOC_SOAK_PHASES
// seconds (default 600 s in 10 phases) on the process heap: sizes log-uniform
// from 32 B to 1 MiB (a few up to 8 MiB), random lifetimes, a working set that
// differs by phase (32 to 256 MiB in all), a share of the blocks up to 64 KiB freed
// by another thread.  Every block carries its size and a seed in a header and a pattern in
// its first and last words, checked before it is freed.  At the end of a phase
// the threads free what they hold and exit, lca_trim() returns cached memory,
// and the RSS is compared with the baseline taken before the first phase: the
// phase passes when it is back within max(8 MiB, 2 % of the phase's peak).
// Prints one row per phase (with the bytes libcalloc still maps); exits 1 if a phase fails or a block was corrupted.
#include <libcalloc.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <algorithm>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

constexpr int kThreads = 8;
constexpr std::size_t kMiB = 1 << 20;

double env_double(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  double d = std::strtod(v, &end);
  return end != v && d > 0 ? d : fallback;
}

std::size_t rss_bytes() {
  int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  unsigned long size = 0, resident = 0;
  if (std::sscanf(buf, "%lu %lu", &size, &resident) != 2) return 0;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
};

struct Block {
  std::uint64_t size;
  std::uint64_t seed;
};

std::uint64_t tail_word(std::uint64_t seed) { return seed * 0x9E3779B97F4A7C15ull ^ 0xABCDEFu; }

std::atomic<std::size_t> g_corrupt{0};
std::atomic<std::size_t> g_ops{0};
std::atomic<std::size_t> g_peak_rss{0};

void* make_block(std::size_t size, Rng& rng) {
  void* p = lca_malloc(size);
  if (p == nullptr) return nullptr;
  Block b{size, rng.next()};
  std::memcpy(p, &b, sizeof b);
  std::uint64_t t = tail_word(b.seed);
  std::memcpy(static_cast<char*>(p) + size - 8, &t, 8);
  return p;
}

void free_block(void* p) {
  Block b;
  std::memcpy(&b, p, sizeof b);
  std::uint64_t t;
  std::memcpy(&t, static_cast<char*>(p) + b.size - 8, 8);
  if (t != tail_word(b.seed)) g_corrupt.fetch_add(1);
  lca_free(p);
}

std::size_t pick_size(Rng& rng) {
  std::uint64_t r = rng.next();
  if (r % 1000 == 0) return 1 * kMiB + (r >> 12) % (7 * kMiB);  // rare big blocks
  unsigned shift = 5 + static_cast<unsigned>((r >> 8) % 16);      // 32 B .. 1 MiB, log-uniform
  std::size_t lo = std::size_t{1} << shift;
  return lo + (r >> 32) % lo;
}

constexpr std::size_t kMailbox = 512;  // at most 32 MiB in transit (blocks <= 64 KiB)
std::atomic<void*> g_mailbox[kMailbox];

void phase_worker(int id, int phase, std::size_t budget_bytes, std::atomic<bool>* stop) {
  Rng rng{0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(id + 1 + 131 * phase)};
  std::vector<void*> held;
  held.reserve(65536);
  std::size_t held_bytes = 0, ops = 0;
  while (!stop->load(std::memory_order_relaxed)) {
    bool grow = held_bytes < budget_bytes && (rng.next() % 3 != 0 || held.empty());
    if (grow) {
      std::size_t size = pick_size(rng);
      if (void* p = make_block(size, rng)) {
        held.push_back(p);
        held_bytes += size;
      }
    } else if (!held.empty()) {
      std::size_t i = rng.next() % held.size();
      void* p = held[i];
      held[i] = held.back();
      held.pop_back();
      Block b;
      std::memcpy(&b, p, sizeof b);
      held_bytes -= b.size;
      if (b.size <= 64 * 1024 && rng.next() % 4 == 0) {  // cross-thread: leave it for another thread
        void* old = g_mailbox[rng.next() % kMailbox].exchange(p);
        if (old) free_block(old);
      } else {
        free_block(p);
      }
    }
    if ((++ops & 4095) == 0) {
      std::size_t rss = rss_bytes(), peak = g_peak_rss.load();
      while (rss > peak && !g_peak_rss.compare_exchange_weak(peak, rss)) {
      }
    }
  }
  for (void* p : held) free_block(p);
  g_ops.fetch_add(ops);
}

}  // namespace

int main() {
  const double total = env_double("CALLOC_SOAK_SECONDS", 600);
  const int phases = static_cast<int>(env_double("CALLOC_SOAK_PHASES", 10));
  const double phase_seconds = total / phases;

  // Baseline: after the threads' runtime state exists (a first short phase's
  // thread stacks are cached by glibc) and cached memory is trimmed.
  {
    std::atomic<bool> stop{true};
    std::vector<std::thread> warm;
    for (int t = 0; t < kThreads; t++) warm.emplace_back(phase_worker, t, -1, 0, &stop);
    for (auto& th : warm) th.join();
  }
  lca_trim();
  const std::size_t baseline = rss_bytes();
  std::printf("soak: %d phases of %.0f s, %d threads, baseline RSS %.1f MiB\n", phases, phase_seconds, kThreads,
              static_cast<double>(baseline) / kMiB);
  std::printf("%-6s %-10s %-10s %-10s %-10s %-10s %-12s %-8s\n", "phase", "budget", "M ops/s", "peak RSS",
              "RSS after", "allowed", "mapped after", "result");
  int failures = 0;
  for (int phase = 0; phase < phases; phase++) {
    const std::size_t budget = (std::size_t{4} << (phase % 4)) * kMiB;  // per thread: 4..32 MiB
    std::atomic<bool> stop{false};
    g_ops = 0;
    g_peak_rss = 0;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; t++) pool.emplace_back(phase_worker, t, phase, budget, &stop);
    std::this_thread::sleep_for(std::chrono::duration<double>(phase_seconds));
    stop = true;
    for (auto& th : pool) th.join();
    std::vector<std::thread>().swap(pool);
    for (auto& m : g_mailbox)
      if (void* p = m.exchange(nullptr)) free_block(p);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lca_trim();
    const std::size_t after = rss_bytes();
    const std::size_t peak = g_peak_rss.load();
    std::size_t allowed = std::max<std::size_t>(8 * kMiB, peak / 50);
    bool ok = after <= baseline + allowed;
    failures += !ok;
    lca_stats now;
    lca_get_stats(&now);
    std::printf("%-6d %-10s %-10.2f %-10.1f %-10.1f %-10.1f %-12.1f %-8s\n", phase + 1,
                (std::to_string(budget * kThreads / kMiB) + " MiB").c_str(),
                static_cast<double>(g_ops.load()) / elapsed / 1e6, static_cast<double>(peak) / kMiB,
                static_cast<double>(after) / kMiB, static_cast<double>(baseline + allowed) / kMiB,
                static_cast<double>(now.os_memory_mapped) / kMiB, ok ? "ok" : "FAIL");
    std::fflush(stdout);
  }
  lca_stats st;
  lca_get_stats(&st);
  std::printf("soak: %zu corrupted blocks; %d of %d phases over their RSS bound; %zu blocks live at the end\n",
              g_corrupt.load(), failures, phases, st.active_allocations);
  return failures == 0 && g_corrupt.load() == 0 ? 0 : 1;
}
