// bench/numa-bench.c++ -- NUMA placement costs and locality (issue 15; not a test).
//
//  1. Local vs remote: a thread pinned to a CPU of node c allocates `--mib` MiB
//     on node m (NUMAAllocator::allocate_on_node), writes one byte per page
//     (first touch: ns/page) and then does dependent random 8-byte reads over it
//     (ns/read).  Every (c, m) pair, median of `--runs`.
//  2. migrate_to_node: MB/s moving the block from node 0 to each other node.
//  3. Locality of the process heap: rounds of short-lived threads, pinned to
//     nodes in turn, allocate mixed sizes (32 B .. 256 KiB), keep a quarter
//     until the round ends and free the rest; the kernel is asked where the
//     first page of every block lives.  First with first-touch thread heaps (a
//     heap a thread leaves is adopted by the next thread, on any node), then
//     with node-local thread heaps (LIBCALLOC_OPTIONS=numa=1).
//  4. A MODEL, not a measurement: the locality of (3) on a two-socket server
//     with a local load latency of 90 ns and a remote one of 150 ns (the
//     SLIT ratio 10:21 of common two-socket machines; set --local-ns/--remote-ns).
// In the QEMU guest of scripts/numa-vm the nodes are real to the kernel but the
// timings are emulated: they are not hardware timings, only (3) and (4) carry
// over.  On a one-node host only the node 0 rows exist.
//
//   bench/numa-bench [--mib N] [--runs N] [--rounds N] [--local-ns X] [--remote-ns Y]
#include <custom_alloc/numa_allocator.h++>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "numa.h++"

using custom_alloc::NUMAAllocator;
using Clock = std::chrono::steady_clock;

namespace {

std::size_t g_mib = 16;
int g_runs = 5;
int g_rounds = 12;
double g_local_ns = 90, g_remote_ns = 150;
volatile std::uint64_t g_sink;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int first_cpu_of_node(int node) {
  char path[96];
  std::snprintf(path, sizeof path, "/sys/devices/system/node/node%d/cpulist", node);
  FILE* f = std::fopen(path, "r");
  if (!f) return node == 0 ? 0 : -1;
  int cpu = -1;
  if (std::fscanf(f, "%d", &cpu) != 1) cpu = -1;
  std::fclose(f);
  return cpu;
}

bool pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<int> usable_nodes() {
  std::vector<int> v;
  for (int n = 0; n < NUMAAllocator::node_count(); ++n)
    if (NUMAAllocator::node_usable(n) && first_cpu_of_node(n) >= 0) v.push_back(n);
  return v;
}

// --- 1 and 2 ---------------------------------------------------------------------
void local_vs_remote(const std::vector<int>& nodes) {
  std::size_t bytes = g_mib << 20, pages = bytes / 4096;
  std::printf("\n1. first touch and random reads, %zu MiB, median of %d\n", g_mib, g_runs);
  std::printf("%-9s %-9s %9s %12s %12s %10s\n", "cpu node", "mem node", "distance", "touch ns/pg", "read ns", "ratio");
  for (int c : nodes) {
    struct Row {
      int m;
      double touch, read;
    };
    std::vector<Row> rows;
    double local_read = 0;
    for (int m : nodes) {
      std::vector<double> touch, read;
      for (int r = 0; r < g_runs; ++r) {
        pin(first_cpu_of_node(c));
        NUMAAllocator alloc;
        auto* p = static_cast<std::uint64_t*>(alloc.allocate_on_node(bytes, m));
        if (!p) return;
        Clock::time_point t = Clock::now();
        for (std::size_t i = 0; i < pages; ++i) p[i * 512] = i;
        touch.push_back(seconds_since(t) * 1e9 / static_cast<double>(pages));
        // A random cycle through one word per cache line, then dependent loads.
        std::size_t lines = bytes / 64;
        std::vector<std::uint32_t> order(lines);
        for (std::size_t i = 0; i < lines; ++i) order[i] = static_cast<std::uint32_t>(i);
        std::uint64_t seed = 88172645463325252ull;
        for (std::size_t i = lines - 1; i > 0; --i) {
          seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
          std::swap(order[i], order[seed % (i + 1)]);
        }
        for (std::size_t i = 0; i < lines; ++i) p[order[i] * 8] = order[(i + 1) % lines] * 8;
        std::size_t reads = std::min<std::size_t>(lines, 1 << 20);
        std::uint64_t at = order[0] * 8;
        t = Clock::now();
        for (std::size_t i = 0; i < reads; ++i) at = p[at];
        read.push_back(seconds_since(t) * 1e9 / static_cast<double>(reads));
        g_sink = at;
        alloc.deallocate(p);
      }
      rows.push_back(Row{m, median(touch), median(read)});
      if (c == m) local_read = rows.back().read;
    }
    for (const Row& r : rows)
      std::printf("%-9d %-9d %9d %12.1f %12.1f %9.2fx\n", c, r.m, NUMAAllocator::node_distance(c, r.m), r.touch,
                  r.read, local_read > 0 ? r.read / local_read : 0.0);
  }
  std::printf("\n2. migrate_to_node, %zu MiB, median of %d\n", g_mib, g_runs);
  for (int m : nodes) {
    if (m == nodes.front()) continue;
    std::vector<double> rate;
    std::size_t pages_moved = 0;
    for (int r = 0; r < g_runs; ++r) {
      NUMAAllocator alloc;
      void* p = alloc.allocate_on_node(bytes, nodes.front());
      std::memset(p, 1, bytes);
      Clock::time_point t = Clock::now();
      alloc.migrate_to_node(p, bytes, m);
      rate.push_back(static_cast<double>(g_mib) / seconds_since(t));
      pages_moved = alloc.get_numa_stats().migrated_pages;
      alloc.deallocate(p);
    }
    std::printf("node %d -> %d: %8.0f MB/s (%zu pages moved per run)\n", nodes.front(), m, median(rate), pages_moved);
  }
  if (nodes.size() == 1) std::printf("(one node: no migration to measure)\n");
}

// --- 3 -----------------------------------------------------------------------------
struct Locality {
  std::atomic<std::size_t> local_bytes{0}, remote_bytes{0};
};

struct Worker {
  int node;
  Locality* out;
  std::vector<void*>* kept;
};

void* worker(void* arg) {
  auto* w = static_cast<Worker*>(arg);
  pin(first_cpu_of_node(w->node));
  std::uint64_t seed = 0x9E3779B97F4A7C15ull ^ static_cast<std::uint64_t>(w->node);
  std::vector<void*> mine;
  std::size_t local = 0, remote = 0;
  for (int i = 0; i < 2000; ++i) {
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    std::size_t size = (seed % 8 == 0) ? 4096 + seed % (256 * 1024) : 32 + seed % 2000;
    void* p = std::malloc(size);
    std::memset(p, 1, size);
    int where = NUMAAllocator::node_of_address(p);
    (where == w->node ? local : remote) += size;
    mine.push_back(p);
  }
  for (std::size_t i = 0; i < mine.size(); ++i) {
    if (i % 4 == 0)
      w->kept->push_back(mine[i]);
    else
      std::free(mine[i]);
  }
  w->out->local_bytes += local;
  w->out->remote_bytes += remote;
  return nullptr;
}

double run_rounds(const std::vector<int>& nodes) {
  Locality loc;
  std::vector<void*> kept[64];
  for (int round = 0; round < g_rounds; ++round) {
    std::size_t threads = nodes.size();
    std::vector<pthread_t> ids(threads);
    std::vector<Worker> ws(threads);
    for (std::size_t t = 0; t < threads; ++t) {
      // The node of thread t shifts every round: heaps left by the last round
      // meet threads of other nodes.
      ws[t] = Worker{nodes[(t + static_cast<std::size_t>(round)) % nodes.size()], &loc, &kept[t]};
      pthread_create(&ids[t], nullptr, worker, &ws[t]);
    }
    for (pthread_t id : ids) pthread_join(id, nullptr);
    // The kept quarter is freed by the main thread (remote frees into heaps
    // whose threads have exited: those heaps wait for adoption).
    for (std::size_t t = 0; t < threads; ++t) {
      for (void* p : kept[t]) std::free(p);
      kept[t].clear();
    }
  }
  double total = static_cast<double>(loc.local_bytes + loc.remote_bytes);
  return total > 0 ? static_cast<double>(loc.local_bytes) / total : 1.0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--mib") g_mib = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--runs") g_runs = std::atoi(argv[i + 1]);
    else if (a == "--rounds") g_rounds = std::atoi(argv[i + 1]);
    else if (a == "--local-ns") g_local_ns = std::atof(argv[i + 1]);
    else if (a == "--remote-ns") g_remote_ns = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: numa-bench [--mib N] [--runs N] [--rounds N] [--local-ns X] [--remote-ns Y]\n");
      return 2;
    }
  }
  std::vector<int> nodes = usable_nodes();
  std::printf("numa-bench: %d node(s) with CPUs and memory:", static_cast<int>(nodes.size()));
  for (int n : nodes) std::printf(" %d", n);
  std::printf("%s\n", NUMAAllocator::numa_supported() ? "" : " (built without libnuma or NUMA unavailable)");
  local_vs_remote(nodes);

  std::printf("\n3. process-heap locality: %d rounds of %zu short-lived threads, bytes on the thread's node\n",
              g_rounds, nodes.size());
  double first_touch = run_rounds(nodes);
  lca::numa_enable_thread_heaps();
  bool on = lca::numa_thread_heaps();
  double node_local = on ? run_rounds(nodes) : first_touch;
  std::printf("first-touch thread heaps:       %5.1f %% local\n", first_touch * 100);
  std::printf("node-local heaps (numa=1):      %5.1f %% local%s\n", node_local * 100,
              on ? "" : " (one node: numa=1 changes nothing)");

  std::printf("\n4. MODEL (not a measurement): a two-socket server, loads %.0f ns local, %.0f ns remote\n",
              g_local_ns, g_remote_ns);
  auto cost = [](double f) { return f * g_local_ns + (1 - f) * g_remote_ns; };
  std::printf("first-touch: %.1f ns per heap load; numa=1: %.1f ns; ratio %.2f\n", cost(first_touch),
              cost(node_local), cost(first_touch) / cost(node_local));
  return 0;
}
