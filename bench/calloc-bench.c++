// calloc-bench — an allocator micro-benchmark that calls only the plain C malloc and free.
//
// It includes no libcalloc header on purpose: any allocator can be put under it with LD_PRELOAD
// (glibc with none, jemalloc, tcmalloc, mimalloc, libcalloc), and scripts/bench-compare runs it under
// each of them in one invocation, so that every figure becomes a ratio against the rivals.
//
// The harness keeps its own memory (random sequences, slot tables, the hand-over ring) out of the
// allocator under test: it comes from mmap with MAP_POPULATE and is prepared before the clock starts,
// so the only malloc/free calls in a timed section are the measured ones and the only page faults in
// it are the allocator's. Every block has its first and last byte written with a pattern that is
// checked just before the block is freed (producer-consumer checks the last byte of one block in
// eight), so an allocator that hands out overlapping or too-small blocks ends with verify=FAIL and
// exit status 2 instead of winning.
//
// Each run prints one line of key=value fields:
//   workload=NAME [alloc=$BENCH_ALLOCATOR] ns_per_op=X ops=N peak_rss_kb=K ... cpu_ns_per_op=Y ...
// ns_per_op is wall time; cpu_ns_per_op is the CPU time of the timed threads, which leaves out the
// time they sat descheduled while other tenants used the machine (see bench/README.md).
//
// Workloads; one op is always one malloc plus one free:
//   pairs64            one thread, malloc(64)/free pairs
//   random-window      one thread, 1 000 live blocks of 16 B..1 KiB; each op replaces a random one
//   threads-own        two threads doing random-window on their own blocks at once; ns_per_op is
//                      wall time / ops per thread, the per-op time each thread sees
//   producer-consumer  two threads: one allocates and hands the blocks over in batches of 256
//                      through a lock-free ring, the other frees them, so every free is remote;
//                      ns_per_op is wall time / blocks
//   peak-rss           allocate N (default 1 M) blocks of 16 B..1 KiB, then free them in random
//                      order; peak_rss_kb (VmHWM) is the figure that matters, ns_per_op is per block
//   large-churn        one thread, blocks of 5..25 MB (uniform): allocate one, write a byte in every
//                      4 KiB page of it, check its ends, free it, over and over -- the big-buffer
//                      pattern of image, ML and parser code; minor_faults shows what the allocator
//                      made the kernel fault in again
//   heavy-tail         random-window with heavy-tailed sizes: 90 % 16 B..1 KiB uniform, 10 %
//                      log-uniform 1..64 KiB (so 5 % of the requests are 8..64 KiB blocks)
//   heavy-tail-2t      two threads doing heavy-tail on their own blocks at once (as threads-own)
//   server-sim         4 lanes of 1 000 slots of 8..1000 B, each worked by a chain of threads: a thread
//                      replaces random slots' blocks 10 000 times, then starts its successor, hands it
//                      the slots and exits (blocks outlive their thread; "larson"); cpu = process CPU
//   producer-consumers one producer, 3 consumers freeing, batches of 16 handed over continuously;
//                      cpu = all threads' CPU time minus their spin-waits, per block

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

namespace {

using clock_type = std::chrono::steady_clock;

constexpr std::uint32_t min_block_size = 16;
constexpr std::uint32_t max_block_size = 1024;
constexpr std::uint32_t window_slots = 1000;
constexpr std::uint32_t heavy_tail_max = 65536;
constexpr std::uint32_t handover_batch = 256;
constexpr std::uint32_t handover_ring_batches = 16;
constexpr unsigned worker_threads = 2;

[[noreturn]] void die(const char* message) {
    std::fprintf(stderr, "calloc-bench: %s\n", message);
    std::exit(3);
}

// Harness memory: straight from the kernel, populated up front, never from the allocator measured.
void* harness_map(std::size_t bytes) {
    if (bytes == 0) bytes = 1;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    if (p == MAP_FAILED) die("mmap of harness memory failed");
    return p;
}

template <typename T> T* harness_array(std::size_t count) {
    return static_cast<T*>(harness_map(count * sizeof(T)));
}

// Tells the compiler that p escapes and that memory may have changed, so malloc/free pairs and the
// pattern stores and loads can be neither elided nor folded.
inline void escape(void* p) { asm volatile("" : : "r"(p) : "memory"); }

// xorshift64*: deterministic, the same stream for every allocator; used only before the clock starts.
struct xorshift64star {
    std::uint64_t state;
    explicit xorshift64star(std::uint64_t seed) : state(seed ? seed : 0x9E3779B97F4A7C15ull) {}
    std::uint64_t next() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        return state * 0x2545F4914F6CDD1Dull;
    }
    // Uniform in [0, bound) by multiply-shift; its bias is far too small to matter here.
    std::uint32_t below(std::uint32_t bound) {
        return static_cast<std::uint32_t>(((next() >> 32) * static_cast<std::uint64_t>(bound)) >> 32);
    }
    std::uint32_t block_size() { return min_block_size + below(max_block_size - min_block_size + 1); }
    // heavy-tail's sizes: 90 % as block_size() (16 B..1 KiB uniform), 10 % log-uniform over
    // 1 KiB..64 KiB (density ~ 1/size, a Pareto tail of index 0 cut at 64 KiB), so 5 % of the requests
    // fall in 8..64 KiB: few in number, but they hold most of the live bytes (about two thirds of
    // the window's), as in a server's or parser's mix of small objects and buffers.
    std::uint32_t heavy_tail_size() {
        if (below(10) != 0) return block_size();
        // 2^(10 + 6u) for u uniform in [0, 1), from 24 random bits: 1024 .. 65535, log-uniform.
        double u = static_cast<double>(next() >> 40) / static_cast<double>(1u << 24);
        auto size = static_cast<std::uint32_t>(std::exp2(10.0 + 6.0 * u));
        return size < heavy_tail_max ? size : heavy_tail_max;
    }
};

// A block's pattern byte: follows from the allocation's sequence number, never zero.
inline unsigned char pattern_for(std::uint64_t serial) {
    return static_cast<unsigned char>((serial * 0x9Du) % 255u + 1u);
}

struct check_counters {
    std::uint64_t pattern_errors = 0;
    std::uint64_t misaligned = 0;  // pointers not 16-byte aligned (reported, not fatal)
};

inline unsigned char* checked_malloc(std::size_t size) {
    auto* p = static_cast<unsigned char*>(std::malloc(size));
    if (p == nullptr) die("malloc returned NULL");
    return p;
}

inline void stamp(unsigned char* p, std::uint32_t size, unsigned char pattern, check_counters& c) {
    c.misaligned += (reinterpret_cast<std::uintptr_t>(p) & 15u) != 0;
    p[0] = pattern;
    p[size - 1] = pattern;
    escape(p);
}

inline void verify(const unsigned char* p, std::uint32_t size, unsigned char pattern, check_counters& c) {
    c.pattern_errors += (p[0] != pattern) | (p[size - 1] != pattern);
}

inline void verify_first_byte(const unsigned char* p, unsigned char pattern, check_counters& c) {
    c.pattern_errors += p[0] != pattern;
}

// ---------------------------------------------------------------------------------------------------
// Memory and time figures, read without calling malloc (no stdio FILE, no std::string).

struct memory_figures {
    long peak_rss_kb = -1;     // VmHWM, else getrusage's ru_maxrss
    long current_rss_kb = -1;  // VmRSS
};

long status_field_kb(const char* text, const char* key) {
    const char* at = std::strstr(text, key);
    if (at == nullptr) return -1;
    at += std::strlen(key);
    while (*at == ' ' || *at == '\t') ++at;
    return std::strtol(at, nullptr, 10);
}

memory_figures read_memory_figures() {
    memory_figures figures;
    char text[8192];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        std::size_t total = 0;
        for (;;) {
            ssize_t got = read(fd, text + total, sizeof text - 1 - total);
            if (got <= 0) break;
            total += static_cast<std::size_t>(got);
            if (total >= sizeof text - 1) break;
        }
        close(fd);
        text[total] = '\0';
        figures.peak_rss_kb = status_field_kb(text, "VmHWM:");
        figures.current_rss_kb = status_field_kb(text, "VmRSS:");
    }
    if (figures.peak_rss_kb < 0) {
        rusage usage{};
        if (getrusage(RUSAGE_SELF, &usage) == 0) figures.peak_rss_kb = usage.ru_maxrss;
    }
    return figures;
}

double seconds_between(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

long minor_faults_now() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
}

// What one thread spent in a timed section besides wall time: its CPU time (user and system, which
// leaves out the time it sat descheduled on this shared machine), how often the kernel took the CPU
// away from it (preemptions) and how often it went to sleep on its own (sleeps: a lock, a futex).
struct thread_meter {
    clock_type::time_point wall_start, wall_end;
    double cpu_start = 0, cpu_seconds = 0;
    long preemptions = 0, sleeps = 0;

    static rusage thread_usage() {
        rusage usage{};
        getrusage(RUSAGE_THREAD, &usage);
        return usage;
    }
    void start() {
        rusage usage = thread_usage();
        preemptions = -usage.ru_nivcsw;
        sleeps = -usage.ru_nvcsw;
        cpu_start = thread_cpu_seconds();
        wall_start = clock_type::now();
    }
    void stop() {
        wall_end = clock_type::now();
        cpu_seconds = thread_cpu_seconds() - cpu_start;
        rusage usage = thread_usage();
        preemptions += usage.ru_nivcsw;
        sleeps += usage.ru_nvcsw;
    }
};

struct result {
    double ns_per_op = 0;      // wall time per op (per thread in threads-own)
    double cpu_ns_per_op = 0;  // CPU time per op of the timed threads (see each workload)
    std::uint64_t ops = 0;
    unsigned threads = 1;
    bool unpinned = false;     // a workload with more threads than cores: never pinned
    double wall_seconds = 0;
    long baseline_rss_kb = -1;  // RSS just before the timed section
    long preemptions = 0;       // involuntary context switches of the timed threads
    long sleeps = 0;            // voluntary context switches of the timed threads
    long minor_faults = 0;      // page faults of the whole process during the timed section
    long requested_kb = -1;     // peak-rss: the bytes the program asked for, all blocks live at once
    check_counters checks;
};

void finish_single_thread(result& r, std::uint64_t ops, const thread_meter& meter, long faults_before) {
    r.ops = ops;
    r.wall_seconds = seconds_between(meter.wall_start, meter.wall_end);
    r.ns_per_op = r.wall_seconds * 1e9 / static_cast<double>(ops);
    r.cpu_ns_per_op = meter.cpu_seconds * 1e9 / static_cast<double>(ops);
    r.preemptions = meter.preemptions;
    r.sleeps = meter.sleeps;
    r.minor_faults = minor_faults_now() - faults_before;
}

// ---------------------------------------------------------------------------------------------------
// Threads: placement, a barrier, waiting.

// The two-thread workloads put their threads on two different CPUs (when two are allowed), so that
// they always measure two cores working at once: left alone, the scheduler of a 2-core machine
// sometimes runs both on one core, which turns the cross-core traffic into cache hits and makes the
// figure bimodal (30 ns or 250 ns per op for the same allocator). --no-pin turns this off.
bool pin_threads = true;
int thread_cpus[worker_threads] = {-1, -1};

void choose_cpus_for_threads() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (!pin_threads || sched_getaffinity(0, sizeof set, &set) != 0) return;
    unsigned found = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && found < worker_threads; ++cpu)
        if (CPU_ISSET(cpu, &set)) thread_cpus[found++] = cpu;
    if (found < worker_threads)
        for (int& cpu : thread_cpus) cpu = -1;
}

bool threads_are_pinned() { return thread_cpus[0] >= 0; }

void pin_this_thread(unsigned index) {
    if (index >= worker_threads || thread_cpus[index] < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(thread_cpus[index], &set);
    sched_setaffinity(0, sizeof set, &set);  // best effort: an unpinned run is still a valid run
}

inline void wait_a_little(unsigned& spins) {
    if (++spins < 256) __builtin_ia32_pause();
    else sched_yield();  // a noisy 2-core machine: let whoever holds this core run
}

struct spin_barrier {
    alignas(64) std::atomic<unsigned> arrived{0};
    alignas(64) std::atomic<unsigned> generation{0};
    unsigned parties;
    explicit spin_barrier(unsigned n) : parties(n) {}
    void wait() {
        unsigned gen = generation.load(std::memory_order_acquire);
        if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == parties) {
            arrived.store(0, std::memory_order_relaxed);
            generation.fetch_add(1, std::memory_order_release);
            return;
        }
        unsigned spins = 0;
        while (generation.load(std::memory_order_acquire) == gen) wait_a_little(spins);
    }
};

// ---------------------------------------------------------------------------------------------------
// pairs64

__attribute__((noinline)) void pairs64_loop(std::uint64_t first, std::uint64_t count, check_counters& c) {
    for (std::uint64_t i = first; i < first + count; ++i) {
        unsigned char* p = checked_malloc(64);
        unsigned char pattern = pattern_for(i);
        stamp(p, 64, pattern, c);
        verify(p, 64, pattern, c);
        std::free(p);
    }
}

result run_pairs64(std::uint64_t ops, std::uint64_t /*seed*/) {
    result r;
    std::uint64_t warmup = ops / 10 < 100000 ? ops / 10 : 100000;
    pairs64_loop(0, warmup, r.checks);
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    thread_meter meter;
    long faults_before = minor_faults_now();
    meter.start();
    pairs64_loop(warmup, ops, r.checks);
    meter.stop();
    finish_single_thread(r, ops, meter, faults_before);
    return r;
}

// ---------------------------------------------------------------------------------------------------
// random-window (also the body of each thread of threads-own)

struct window_state {
    unsigned char* block[window_slots];
    std::uint32_t size[window_slots];
    unsigned char pattern[window_slots];
    std::uint32_t* steps = nullptr;  // warmup + timed ops: slot in the low 10 bits, size above
    bool heavy_tail = false;         // sizes from heavy_tail_size() instead of block_size()
    std::uint64_t warmup = 0;
    std::uint64_t ops = 0;
    std::uint64_t serial = 0;
    check_counters checks;
};

void window_prepare(window_state& w, std::uint64_t ops, std::uint64_t seed) {
    xorshift64star rng(seed);
    w.ops = ops;
    w.warmup = ops / 10 < 200000 ? ops / 10 : 200000;
    w.steps = harness_array<std::uint32_t>(w.warmup + ops);
    for (std::uint64_t i = 0; i < w.warmup + ops; ++i) {
        std::uint32_t slot = rng.below(window_slots);
        w.steps[i] = slot | ((w.heavy_tail ? rng.heavy_tail_size() : rng.block_size()) << 10);
    }
    for (std::uint32_t s = 0; s < window_slots; ++s) {
        w.size[s] = w.heavy_tail ? rng.heavy_tail_size() : rng.block_size();
        w.pattern[s] = pattern_for(w.serial++);
        w.block[s] = checked_malloc(w.size[s]);
        stamp(w.block[s], w.size[s], w.pattern[s], w.checks);
    }
}

__attribute__((noinline)) void window_steps(window_state& w, std::uint64_t first, std::uint64_t count) {
    for (std::uint64_t i = first; i < first + count; ++i) {
        std::uint32_t step = w.steps[i];
        std::uint32_t slot = step & 1023u;
        std::uint32_t size = step >> 10;
        verify(w.block[slot], w.size[slot], w.pattern[slot], w.checks);
        std::free(w.block[slot]);
        unsigned char pattern = pattern_for(w.serial++);
        unsigned char* p = checked_malloc(size);
        stamp(p, size, pattern, w.checks);
        w.block[slot] = p;
        w.size[slot] = size;
        w.pattern[slot] = pattern;
    }
}

void window_release(window_state& w) {
    for (std::uint32_t s = 0; s < window_slots; ++s) {
        verify(w.block[s], w.size[s], w.pattern[s], w.checks);
        std::free(w.block[s]);
    }
    munmap(w.steps, (w.warmup + w.ops) * sizeof(std::uint32_t));
}

result run_window_one_thread(std::uint64_t ops, std::uint64_t seed, bool heavy_tail) {
    result r;
    auto* w = harness_array<window_state>(1);
    w->heavy_tail = heavy_tail;
    window_prepare(*w, ops, seed);
    window_steps(*w, 0, w->warmup);
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    thread_meter meter;
    long faults_before = minor_faults_now();
    meter.start();
    window_steps(*w, w->warmup, ops);
    meter.stop();
    finish_single_thread(r, ops, meter, faults_before);
    window_release(*w);
    r.checks = w->checks;
    return r;
}

result run_random_window(std::uint64_t ops, std::uint64_t seed) { return run_window_one_thread(ops, seed, false); }

// heavy-tail: random-window with heavy_tail_size()'s sizes (mostly small, 5 % of 8..64 KiB).
result run_heavy_tail(std::uint64_t ops, std::uint64_t seed) { return run_window_one_thread(ops, seed, true); }

// ---------------------------------------------------------------------------------------------------
// threads-own (and heavy-tail-2t): wall = first start to last end; cpu = mean of the two threads' CPU time.

result run_window_two_threads(std::uint64_t ops, std::uint64_t seed, bool heavy_tail) {
    result r;
    r.threads = worker_threads;
    window_state* w[worker_threads];
    for (auto& state : w) {
        state = harness_array<window_state>(1);
        state->heavy_tail = heavy_tail;
    }
    thread_meter meter[worker_threads];
    long faults = 0;
    spin_barrier barrier(worker_threads);

    auto body = [&](unsigned t) {
        pin_this_thread(t);
        // Each thread fills its own window, so the blocks belong to its own heap.
        window_prepare(*w[t], ops, seed + 0x1000193ull * (t + 1));
        window_steps(*w[t], 0, w[t]->warmup);
        barrier.wait();
        if (t == 0) faults = minor_faults_now();
        meter[t].start();
        window_steps(*w[t], w[t]->warmup, ops);
        meter[t].stop();
        barrier.wait();  // nothing is freed and no thread exits while the other is still measured
        if (t == 0) faults = minor_faults_now() - faults;
        window_release(*w[t]);
    };
    std::thread workers[worker_threads];
    for (unsigned t = 0; t < worker_threads; ++t) workers[t] = std::thread(body, t);
    for (auto& worker : workers) worker.join();

    clock_type::time_point first_start = meter[0].wall_start, last_end = meter[0].wall_end;
    double cpu_seconds = 0;
    for (unsigned t = 0; t < worker_threads; ++t) {
        if (meter[t].wall_start < first_start) first_start = meter[t].wall_start;
        if (meter[t].wall_end > last_end) last_end = meter[t].wall_end;
        cpu_seconds += meter[t].cpu_seconds;
        r.preemptions += meter[t].preemptions;
        r.sleeps += meter[t].sleeps;
        r.checks.pattern_errors += w[t]->checks.pattern_errors;
        r.checks.misaligned += w[t]->checks.misaligned;
    }
    r.ops = ops;
    r.wall_seconds = seconds_between(first_start, last_end);
    r.ns_per_op = r.wall_seconds * 1e9 / static_cast<double>(ops);
    r.cpu_ns_per_op = cpu_seconds / worker_threads * 1e9 / static_cast<double>(ops);
    r.minor_faults = faults;
    return r;
}

result run_threads_own(std::uint64_t ops, std::uint64_t seed) { return run_window_two_threads(ops, seed, false); }

// heavy-tail-2t: two threads, each doing heavy-tail on its own blocks (as threads-own).
result run_heavy_tail_2t(std::uint64_t ops, std::uint64_t seed) { return run_window_two_threads(ops, seed, true); }

// ---------------------------------------------------------------------------------------------------
// producer-consumer: wall = first start to the consumer's end, per block; cpu = the busier thread's
// CPU time per block, leaving out the CPU time it spent waiting for the other (it spins), so that the
// figure is the pipeline's bottleneck stage and not the scheduler's luck.

struct handover_ring {
    alignas(64) std::atomic<std::uint64_t> produced{0};  // batches published
    alignas(64) std::atomic<std::uint64_t> consumed{0};  // batches freed
    alignas(64) unsigned char* blocks[handover_ring_batches][handover_batch];
};

struct producer_consumer_plan {
    std::uint32_t* sizes = nullptr;  // one per block, the warmup blocks first
    std::uint64_t warmup_batches = 0;
    std::uint64_t timed_batches = 0;
};

// Blocks are numbered globally; the consumer recomputes each block's size and pattern from its number.
void produce(handover_ring& ring, const producer_consumer_plan& plan, std::uint64_t first_batch,
             std::uint64_t batches, check_counters& c, double& waited_cpu) {
    for (std::uint64_t b = first_batch; b < first_batch + batches; ++b) {
        if (b - ring.consumed.load(std::memory_order_acquire) >= handover_ring_batches) {
            double since = thread_cpu_seconds();
            unsigned spins = 0;
            while (b - ring.consumed.load(std::memory_order_acquire) >= handover_ring_batches)
                wait_a_little(spins);
            waited_cpu += thread_cpu_seconds() - since;
        }
        unsigned char** slot = ring.blocks[b % handover_ring_batches];
        for (std::uint32_t i = 0; i < handover_batch; ++i) {
            std::uint64_t n = b * handover_batch + i;
            std::uint32_t size = plan.sizes[n];
            unsigned char* p = checked_malloc(size);
            stamp(p, size, pattern_for(n), c);
            slot[i] = p;
        }
        ring.produced.store(b + 1, std::memory_order_release);
    }
}

void consume(handover_ring& ring, const producer_consumer_plan& plan, std::uint64_t first_batch,
             std::uint64_t batches, check_counters& c, double& waited_cpu) {
    for (std::uint64_t b = first_batch; b < first_batch + batches; ++b) {
        if (ring.produced.load(std::memory_order_acquire) <= b) {
            double since = thread_cpu_seconds();
            unsigned spins = 0;
            while (ring.produced.load(std::memory_order_acquire) <= b) wait_a_little(spins);
            waited_cpu += thread_cpu_seconds() - since;
        }
        unsigned char** slot = ring.blocks[b % handover_ring_batches];
        for (std::uint32_t i = 0; i < handover_batch; ++i) {
            std::uint64_t n = b * handover_batch + i;
            // The first byte of every block, the last byte of one in eight: each extra line read
            // here is a cross-core transfer that every allocator pays alike, diluting the ratios.
            if (n % 8 == 0) verify(slot[i], plan.sizes[n], pattern_for(n), c);
            else verify_first_byte(slot[i], pattern_for(n), c);
            std::free(slot[i]);
        }
        ring.consumed.store(b + 1, std::memory_order_release);
    }
}

result run_producer_consumer(std::uint64_t ops, std::uint64_t seed) {
    result r;
    r.threads = 2;
    producer_consumer_plan plan;
    plan.timed_batches = (ops + handover_batch - 1) / handover_batch;
    plan.warmup_batches = plan.timed_batches / 10 < 400 ? plan.timed_batches / 10 : 400;
    std::uint64_t total_blocks = (plan.warmup_batches + plan.timed_batches) * handover_batch;
    plan.sizes = harness_array<std::uint32_t>(total_blocks);
    xorshift64star rng(seed);
    for (std::uint64_t n = 0; n < total_blocks; ++n) plan.sizes[n] = rng.block_size();
    auto* ring = new (harness_array<handover_ring>(1)) handover_ring;

    spin_barrier barrier(2);
    check_counters producer_checks, consumer_checks;
    thread_meter producer_meter, consumer_meter;
    double producer_waited = 0, consumer_waited = 0, unused_wait = 0;
    long faults = 0;
    std::thread producer([&] {
        pin_this_thread(0);
        produce(*ring, plan, 0, plan.warmup_batches, producer_checks, unused_wait);
        barrier.wait();
        producer_meter.start();
        produce(*ring, plan, plan.warmup_batches, plan.timed_batches, producer_checks, producer_waited);
        producer_meter.stop();
    });
    std::thread consumer([&] {
        double warmup_wait = 0;
        pin_this_thread(1);
        consume(*ring, plan, 0, plan.warmup_batches, consumer_checks, warmup_wait);
        barrier.wait();
        faults = minor_faults_now();
        consumer_meter.start();
        consume(*ring, plan, plan.warmup_batches, plan.timed_batches, consumer_checks, consumer_waited);
        consumer_meter.stop();
        faults = minor_faults_now() - faults;
    });
    producer.join();
    consumer.join();

    r.checks.pattern_errors = producer_checks.pattern_errors + consumer_checks.pattern_errors;
    r.checks.misaligned = producer_checks.misaligned + consumer_checks.misaligned;
    r.ops = plan.timed_batches * handover_batch;
    auto start = producer_meter.wall_start < consumer_meter.wall_start ? producer_meter.wall_start
                                                                       : consumer_meter.wall_start;
    r.wall_seconds = seconds_between(start, consumer_meter.wall_end);
    r.ns_per_op = r.wall_seconds * 1e9 / static_cast<double>(r.ops);
    double producer_busy = producer_meter.cpu_seconds - producer_waited;
    double consumer_busy = consumer_meter.cpu_seconds - consumer_waited;
    double bottleneck = producer_busy > consumer_busy ? producer_busy : consumer_busy;
    r.cpu_ns_per_op = bottleneck * 1e9 / static_cast<double>(r.ops);
    r.preemptions = producer_meter.preemptions + consumer_meter.preemptions;
    r.sleeps = producer_meter.sleeps + consumer_meter.sleeps;
    r.minor_faults = faults;
    munmap(plan.sizes, total_blocks * sizeof(std::uint32_t));
    return r;
}

// ---------------------------------------------------------------------------------------------------
// peak-rss

result run_peak_rss(std::uint64_t ops, std::uint64_t seed) {
    result r;
    xorshift64star rng(seed);
    auto* sizes = harness_array<std::uint16_t>(ops);
    auto* order = harness_array<std::uint32_t>(ops);
    auto* blocks = harness_array<unsigned char*>(ops);
    std::uint64_t requested = 0;
    for (std::uint64_t i = 0; i < ops; ++i) {
        sizes[i] = static_cast<std::uint16_t>(rng.block_size());
        requested += sizes[i];
        order[i] = static_cast<std::uint32_t>(i);
    }
    r.requested_kb = static_cast<long>(requested / 1024);
    for (std::uint64_t i = ops; i > 1; --i) {  // Fisher-Yates: the order of the frees
        std::uint64_t j = rng.next() % i;
        std::uint32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    thread_meter meter;
    long faults_before = minor_faults_now();
    meter.start();
    for (std::uint64_t i = 0; i < ops; ++i) {
        unsigned char* p = checked_malloc(sizes[i]);
        stamp(p, sizes[i], pattern_for(i), r.checks);
        blocks[i] = p;
    }
    for (std::uint64_t k = 0; k < ops; ++k) {
        std::uint32_t i = order[k];
        verify(blocks[i], sizes[i], pattern_for(i), r.checks);
        std::free(blocks[i]);
    }
    meter.stop();
    finish_single_thread(r, ops, meter, faults_before);
    return r;
}

// ---------------------------------------------------------------------------------------------------
// large-churn

constexpr std::uint32_t large_churn_min = 5'000'000;
constexpr std::uint32_t large_churn_max = 25'000'000;

result run_large_churn(std::uint64_t ops, std::uint64_t seed) {
    result r;
    xorshift64star rng(seed);
    auto* sizes = harness_array<std::uint32_t>(ops);
    for (std::uint64_t i = 0; i < ops; ++i) sizes[i] = large_churn_min + rng.below(large_churn_max - large_churn_min + 1);
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    thread_meter meter;
    long faults_before = minor_faults_now();
    meter.start();
    for (std::uint64_t i = 0; i < ops; ++i) {
        unsigned char* p = checked_malloc(sizes[i]);
        for (std::uint32_t off = 0; off < sizes[i]; off += 4096) p[off] = static_cast<unsigned char>(off >> 12);
        stamp(p, sizes[i], pattern_for(i), r.checks);
        escape(p);
        verify(p, sizes[i], pattern_for(i), r.checks);
        std::free(p);
    }
    meter.stop();
    finish_single_thread(r, ops, meter, faults_before);
    return r;
}


// ---------------------------------------------------------------------------------------------------
// Cross-thread workloads with more threads than cores (issue 17). Their threads are not pinned, and
// their CPU figure is the CPU time of the whole process over the timed section (every thread's,
// thread creation and exit included: what an allocator does when a thread starts or leaves is part
// of the pattern) minus the CPU time the harness's threads spent spinning while waiting for another,
// per op. The main thread sleeps in pthread_join meanwhile.

double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

long process_context_switches(bool voluntary) {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return voluntary ? usage.ru_nvcsw : usage.ru_nivcsw;
}

// ---------------------------------------------------------------------------------------------------
// server-sim: the pattern of a server whose worker threads come and go (that of the classic "larson"
// benchmark). server_lanes lanes run at once, more than this machine's cores; each owns
// server_slots slots holding blocks of 8..1000 B. A lane's thread does server_ops_per_thread ops --
// free a random slot's block, allocate a random size into it -- then starts its successor, hands it
// the slots and exits: every block outlives the thread that allocated it and is freed by another.

constexpr unsigned server_lanes = 4;
constexpr std::uint32_t server_slots = 1000;
constexpr std::uint32_t server_min_size = 8;
constexpr std::uint32_t server_max_size = 1000;
constexpr std::uint64_t server_ops_per_thread = 10000;
// The random steps (and producer-consumers' sizes) are a precomputed table of this many entries used
// cyclically: a table as long as the run (16 MiB at the default ops) would be most of the process's
// RSS and drown the allocators' differences in peak RSS, the other figure these workloads are for.
constexpr std::uint64_t cyclic_table = 1u << 16;

struct server_lane {
    unsigned char* block[server_slots];
    std::uint32_t size[server_slots];
    unsigned char pattern[server_slots];
    std::uint32_t* steps = nullptr;  // step i is steps[i % cyclic_table]: slot in the low 10 bits, size above
    std::uint64_t next_step = 0;
    std::uint64_t end_step = 0;      // of the current phase
    std::uint64_t serial = 0;
    // Thread g of the lane (counted over both phases) is ids[g]; it creates ids[g + 1]. Only the
    // running thread touches the rest of the lane, and it touches nothing once it started the next.
    pthread_t* ids = nullptr;
    std::uint64_t gen = 0;
    check_counters checks;
};

std::uint64_t server_threads_for(std::uint64_t steps) {
    return (steps + server_ops_per_thread - 1) / server_ops_per_thread;
}

void server_steps(server_lane& lane, std::uint64_t count) {
    for (std::uint64_t i = lane.next_step; i < lane.next_step + count; ++i) {
        std::uint32_t step = lane.steps[i % cyclic_table];
        std::uint32_t slot = step & 1023u;
        std::uint32_t size = step >> 10;
        verify(lane.block[slot], lane.size[slot], lane.pattern[slot], lane.checks);
        std::free(lane.block[slot]);
        unsigned char pattern = pattern_for(lane.serial++);
        unsigned char* p = checked_malloc(size);
        stamp(p, size, pattern, lane.checks);
        lane.block[slot] = p;
        lane.size[slot] = size;
        lane.pattern[slot] = pattern;
    }
    lane.next_step += count;
}

void* server_thread(void* arg) {
    auto& lane = *static_cast<server_lane*>(arg);
    std::uint64_t g = lane.gen++;
    std::uint64_t left = lane.end_step - lane.next_step;
    server_steps(lane, left < server_ops_per_thread ? left : server_ops_per_thread);
    if (lane.next_step < lane.end_step && pthread_create(&lane.ids[g + 1], nullptr, server_thread, &lane) != 0)
        die("pthread_create failed");
    return nullptr;
}

// Runs each lane's chain of threads to its end_step and waits for every thread of it.
void server_run_chains(server_lane* lanes) {
    std::uint64_t first[server_lanes], count[server_lanes];
    for (unsigned l = 0; l < server_lanes; ++l) {
        first[l] = lanes[l].gen;
        count[l] = server_threads_for(lanes[l].end_step - lanes[l].next_step);
        if (pthread_create(&lanes[l].ids[first[l]], nullptr, server_thread, &lanes[l]) != 0)
            die("pthread_create failed");
    }
    for (unsigned l = 0; l < server_lanes; ++l)
        for (std::uint64_t g = first[l]; g < first[l] + count[l]; ++g)
            pthread_join(lanes[l].ids[g], nullptr);  // thread g started g + 1 before it returned
}

void* server_fill(void* arg) {  // the first thread of a lane: fills its slots (untimed)
    auto& lane = *static_cast<server_lane*>(arg);
    for (std::uint32_t s = 0; s < server_slots; ++s) {
        lane.pattern[s] = pattern_for(lane.serial++);
        lane.block[s] = checked_malloc(lane.size[s]);
        stamp(lane.block[s], lane.size[s], lane.pattern[s], lane.checks);
    }
    return nullptr;
}

result run_server_sim(std::uint64_t ops, std::uint64_t seed) {
    result r;
    r.threads = server_lanes;
    r.unpinned = true;
    std::uint64_t per_lane = (ops + server_lanes - 1) / server_lanes;
    std::uint64_t warmup = per_lane / 10 < 2 * server_ops_per_thread ? per_lane / 10 : 2 * server_ops_per_thread;
    auto* lanes = harness_array<server_lane>(server_lanes);
    for (unsigned l = 0; l < server_lanes; ++l) {
        xorshift64star rng(seed + 0x9E3779B9ull * (l + 1));
        server_lane& lane = *new (&lanes[l]) server_lane;
        lane.ids = harness_array<pthread_t>(server_threads_for(warmup) + server_threads_for(per_lane));
        lane.steps = harness_array<std::uint32_t>(cyclic_table);
        for (std::uint64_t i = 0; i < cyclic_table; ++i)
            lane.steps[i] = rng.below(server_slots) |
                            (server_min_size + rng.below(server_max_size - server_min_size + 1)) << 10;
        for (std::uint32_t s = 0; s < server_slots; ++s)
            lane.size[s] = server_min_size + rng.below(server_max_size - server_min_size + 1);
    }
    // Warm-up, untimed: a first thread per lane fills the slots, then a chain runs the warm-up steps.
    pthread_t fill[server_lanes];
    for (unsigned l = 0; l < server_lanes; ++l)
        if (pthread_create(&fill[l], nullptr, server_fill, &lanes[l]) != 0) die("pthread_create failed");
    for (pthread_t t : fill) pthread_join(t, nullptr);
    for (unsigned l = 0; l < server_lanes; ++l) lanes[l].end_step = warmup;
    if (warmup) server_run_chains(lanes);

    for (unsigned l = 0; l < server_lanes; ++l) lanes[l].end_step = warmup + per_lane;
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    long faults_before = minor_faults_now();
    long preempt_before = process_context_switches(false), sleeps_before = process_context_switches(true);
    double cpu_before = process_cpu_seconds();
    auto wall_start = clock_type::now();
    server_run_chains(lanes);
    auto wall_end = clock_type::now();
    double cpu = process_cpu_seconds() - cpu_before;
    r.minor_faults = minor_faults_now() - faults_before;
    r.preemptions = process_context_switches(false) - preempt_before;
    // The joins of the main thread and every thread exit sleep once by design: counted only above that.
    r.sleeps = process_context_switches(true) - sleeps_before;

    r.ops = per_lane * server_lanes;
    r.wall_seconds = seconds_between(wall_start, wall_end);
    r.ns_per_op = r.wall_seconds * 1e9 / static_cast<double>(r.ops);
    r.cpu_ns_per_op = cpu * 1e9 / static_cast<double>(r.ops);
    for (unsigned l = 0; l < server_lanes; ++l) {
        server_lane& lane = lanes[l];
        for (std::uint32_t s = 0; s < server_slots; ++s) {
            verify(lane.block[s], lane.size[s], lane.pattern[s], lane.checks);
            std::free(lane.block[s]);
        }
        r.checks.pattern_errors += lane.checks.pattern_errors;
        r.checks.misaligned += lane.checks.misaligned;
        munmap(lane.steps, cyclic_table * sizeof(std::uint32_t));
        munmap(lane.ids, (server_threads_for(warmup) + server_threads_for(per_lane)) * sizeof(pthread_t));
    }
    return r;
}

// ---------------------------------------------------------------------------------------------------
// producer-consumers: one producer allocates blocks of 16 B..1 KiB and hands them over in batches of
// pc_batch, round robin, to pc_consumers consumers (each through a lock-free ring of its own), which
// free them: continuous traffic, every free remote and spread over several freeing threads, with more
// threads than cores. ns per op = wall time / blocks; cpu = the CPU time of all the threads minus
// what they spent spinning while waiting for each other, per block.

constexpr unsigned pc_consumers = 3;
constexpr std::uint32_t pc_batch = 16;
constexpr std::uint32_t pc_ring_batches = 64;

struct pc_ring {
    alignas(64) std::atomic<std::uint64_t> produced{0};  // batches published
    alignas(64) std::atomic<std::uint64_t> consumed{0};  // batches freed
    alignas(64) unsigned char* blocks[pc_ring_batches][pc_batch];
};

struct pc_shared {
    pc_ring ring[pc_consumers];
    std::uint32_t* sizes = nullptr;  // block n's size is sizes[n % cyclic_table]
    std::uint64_t warmup_batches = 0, total_batches = 0;
};

// Batch b goes to consumer b % pc_consumers as that ring's batch b / pc_consumers.
void pc_produce(pc_shared& sh, std::uint64_t from, std::uint64_t to, check_counters& c, double& waited) {
    for (std::uint64_t b = from; b < to; ++b) {
        pc_ring& ring = sh.ring[b % pc_consumers];
        std::uint64_t k = b / pc_consumers;
        if (k - ring.consumed.load(std::memory_order_acquire) >= pc_ring_batches) {
            double since = thread_cpu_seconds();
            unsigned spins = 0;
            while (k - ring.consumed.load(std::memory_order_acquire) >= pc_ring_batches) wait_a_little(spins);
            waited += thread_cpu_seconds() - since;
        }
        unsigned char** slot = ring.blocks[k % pc_ring_batches];
        for (std::uint32_t i = 0; i < pc_batch; ++i) {
            std::uint64_t n = b * pc_batch + i;
            std::uint32_t size = sh.sizes[n % cyclic_table];
            unsigned char* p = checked_malloc(size);
            stamp(p, size, pattern_for(n), c);
            slot[i] = p;
        }
        ring.produced.store(k + 1, std::memory_order_release);
    }
}

// Consumer `who` frees the batches b in [from, to) with b % pc_consumers == who.
void pc_consume(pc_shared& sh, unsigned who, std::uint64_t from, std::uint64_t to, check_counters& c,
                double& waited) {
    pc_ring& ring = sh.ring[who];
    std::uint64_t b = from + (who + pc_consumers - from % pc_consumers) % pc_consumers;
    for (; b < to; b += pc_consumers) {
        std::uint64_t k = b / pc_consumers;
        if (ring.produced.load(std::memory_order_acquire) <= k) {
            double since = thread_cpu_seconds();
            unsigned spins = 0;
            while (ring.produced.load(std::memory_order_acquire) <= k) wait_a_little(spins);
            waited += thread_cpu_seconds() - since;
        }
        unsigned char** slot = ring.blocks[k % pc_ring_batches];
        for (std::uint32_t i = 0; i < pc_batch; ++i) {
            std::uint64_t n = b * pc_batch + i;
            if (n % 8 == 0) verify(slot[i], sh.sizes[n % cyclic_table], pattern_for(n), c);
            else verify_first_byte(slot[i], pattern_for(n), c);
            std::free(slot[i]);
        }
        ring.consumed.store(k + 1, std::memory_order_release);
    }
}

result run_producer_consumers(std::uint64_t ops, std::uint64_t seed) {
    result r;
    r.threads = 1 + pc_consumers;
    r.unpinned = true;
    auto* sh = new (harness_array<pc_shared>(1)) pc_shared;
    std::uint64_t timed = (ops + pc_batch - 1) / pc_batch;
    sh->warmup_batches = timed / 10 < 6000 ? timed / 10 : 6000;
    sh->total_batches = sh->warmup_batches + timed;
    sh->sizes = harness_array<std::uint32_t>(cyclic_table);
    xorshift64star rng(seed);
    for (std::uint64_t n = 0; n < cyclic_table; ++n) sh->sizes[n] = rng.block_size();

    constexpr unsigned n_threads = 1 + pc_consumers;
    spin_barrier barrier(n_threads + 1);  // and the main thread, which takes the process figures
    check_counters checks[n_threads];
    thread_meter meter[n_threads];
    double waited[n_threads] = {};
    auto body = [&](unsigned t) {
        double warm_wait = 0;
        if (t == 0) pc_produce(*sh, 0, sh->warmup_batches, checks[t], warm_wait);
        else pc_consume(*sh, t - 1, 0, sh->warmup_batches, checks[t], warm_wait);
        barrier.wait();
        meter[t].start();
        if (t == 0) pc_produce(*sh, sh->warmup_batches, sh->total_batches, checks[t], waited[t]);
        else pc_consume(*sh, t - 1, sh->warmup_batches, sh->total_batches, checks[t], waited[t]);
        meter[t].stop();
        barrier.wait();  // no thread exits while another is measured
    };
    std::thread workers[n_threads];
    for (unsigned t = 0; t < n_threads; ++t) workers[t] = std::thread(body, t);
    barrier.wait();
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    long faults_before = minor_faults_now();
    barrier.wait();
    r.minor_faults = minor_faults_now() - faults_before;
    for (auto& worker : workers) worker.join();

    auto start = meter[0].wall_start, end = meter[0].wall_end;
    double busy = 0;
    for (unsigned t = 0; t < n_threads; ++t) {
        if (meter[t].wall_start < start) start = meter[t].wall_start;
        if (meter[t].wall_end > end) end = meter[t].wall_end;
        busy += meter[t].cpu_seconds - waited[t];
        r.preemptions += meter[t].preemptions;
        r.sleeps += meter[t].sleeps;
        r.checks.pattern_errors += checks[t].pattern_errors;
        r.checks.misaligned += checks[t].misaligned;
    }
    r.ops = timed * pc_batch;
    r.wall_seconds = seconds_between(start, end);
    r.ns_per_op = r.wall_seconds * 1e9 / static_cast<double>(r.ops);
    r.cpu_ns_per_op = busy * 1e9 / static_cast<double>(r.ops);
    munmap(sh->sizes, cyclic_table * sizeof(std::uint32_t));
    return r;
}

// ---------------------------------------------------------------------------------------------------
// small-objects (issue 17): a small single-threaded program, such as a bignum factoriser or a logic
// minimiser. A live set of 4096 objects of four sizes (about 300 KiB, built during the timed run)
// and short-lived temporaries: each op allocates one to three temporaries, checks and frees them in
// reverse order (expression temporaries), and one op in four replaces a random live object. The
// whole process's peak RSS is the figure that matters: the allocator's fixed memory is a large
// share of it. The steps are drawn from xorshift inside the loop (the same stream for every
// allocator): a precomputed plan would be larger than the live set it measures.

constexpr std::uint32_t small_objects_live = 4096;
constexpr std::uint16_t small_object_sizes[4] = {24, 40, 72, 136};

result run_small_objects(std::uint64_t ops, std::uint64_t seed) {
    result r;
    xorshift64star rng(seed);
    auto* live = harness_array<unsigned char*>(small_objects_live);
    auto* live_size = harness_array<std::uint16_t>(small_objects_live);
    auto* live_serial = harness_array<std::uint32_t>(small_objects_live);
    std::uint64_t requested = 0;
    r.baseline_rss_kb = read_memory_figures().current_rss_kb;
    thread_meter meter;
    long faults_before = minor_faults_now();
    meter.start();
    std::uint32_t serial = 0;
    for (std::uint32_t i = 0; i < small_objects_live; ++i) {
        std::uint16_t size = small_object_sizes[rng.next() >> 62];
        unsigned char* p = checked_malloc(size);
        stamp(p, size, pattern_for(++serial), r.checks);
        live[i] = p;
        live_size[i] = size;
        live_serial[i] = serial;
        requested += size;
    }
    r.requested_kb = static_cast<long>(requested / 1024);
    for (std::uint64_t op = 0; op < ops; ++op) {
        std::uint64_t bits = rng.next();
        unsigned temps = 1 + static_cast<unsigned>((bits >> 60) % 3);
        unsigned char* temp[3];
        std::uint16_t temp_size[3];
        for (unsigned t = 0; t < temps; ++t) {
            temp_size[t] = small_object_sizes[(bits >> (56 - 2 * t)) & 3];
            temp[t] = checked_malloc(temp_size[t]);
            stamp(temp[t], temp_size[t], pattern_for(serial + 1 + t), r.checks);
        }
        for (unsigned t = temps; t-- > 0;) {
            verify(temp[t], temp_size[t], pattern_for(serial + 1 + t), r.checks);
            std::free(temp[t]);
        }
        if ((bits & 3) == 0) {
            std::uint32_t i = static_cast<std::uint32_t>((bits >> 8) % small_objects_live);
            verify(live[i], live_size[i], pattern_for(live_serial[i]), r.checks);
            std::free(live[i]);
            std::uint16_t size = small_object_sizes[(bits >> 40) & 3];
            live[i] = checked_malloc(size);
            live_size[i] = size;
            live_serial[i] = ++serial;
            stamp(live[i], size, pattern_for(serial), r.checks);
        }
    }
    for (std::uint32_t i = 0; i < small_objects_live; ++i) {
        verify(live[i], live_size[i], pattern_for(live_serial[i]), r.checks);
        std::free(live[i]);
    }
    meter.stop();
    finish_single_thread(r, ops, meter, faults_before);
    return r;
}

// ---------------------------------------------------------------------------------------------------

struct workload {
    const char* name;
    result (*run)(std::uint64_t ops, std::uint64_t seed);
    std::uint64_t default_ops;
};

constexpr workload workloads[] = {
    {"pairs64", run_pairs64, 50000000},
    {"random-window", run_random_window, 10000000},
    {"threads-own", run_threads_own, 10000000},
    {"producer-consumer", run_producer_consumer, 2000000},
    {"peak-rss", run_peak_rss, 1000000},
    {"large-churn", run_large_churn, 400},
    {"small-objects", run_small_objects, 5000000},
    {"heavy-tail", run_heavy_tail, 10000000},
    {"heavy-tail-2t", run_heavy_tail_2t, 10000000},
    {"server-sim", run_server_sim, 10000000},
    {"producer-consumers", run_producer_consumers, 2000000},
};

void usage(FILE* to) {
    std::fprintf(to,
                 "usage: calloc-bench WORKLOAD [--ops N] [--seed S] [--no-pin]\n"
                 "workloads (default ops):\n");
    for (const auto& w : workloads) std::fprintf(to, "  %-18s %" PRIu64 "\n", w.name, w.default_ops);
    std::fprintf(to,
                 "one op = one malloc + one free. Prints one line of key=value fields:\n"
                 "  workload=NAME [alloc=$BENCH_ALLOCATOR] ns_per_op=X ops=N peak_rss_kb=K ...\n"
                 "exit status 2 if a block's pattern bytes were corrupted (verify=FAIL)\n"
                 "--no-pin: leave the two threads of the 2-thread workloads where the scheduler puts them\n");
}

bool parse_u64(const char* text, std::uint64_t& out) {
    if (text == nullptr || *text == '\0' || *text == '-') return false;
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text, &end, 0);
    if (errno != 0 || *end != '\0') return false;
    out = value;
    return true;
}

// The file name of the shared object whose malloc this process calls: tells whether LD_PRELOAD took.
const char* malloc_provider() {
    Dl_info info{};
    void* (*volatile fn)(std::size_t) = &std::malloc;
    if (dladdr(reinterpret_cast<void*>(fn), &info) != 0 && info.dli_fname != nullptr) {
        const char* slash = std::strrchr(info.dli_fname, '/');
        return slash ? slash + 1 : info.dli_fname;
    }
    return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const workload* chosen = nullptr;
    for (const auto& w : workloads)
        if (std::strcmp(argv[1], w.name) == 0) chosen = &w;
    if (chosen == nullptr) {
        std::fprintf(stderr, "calloc-bench: unknown workload '%s'\n", argv[1]);
        usage(stderr);
        return 1;
    }
    std::uint64_t ops = chosen->default_ops;
    std::uint64_t seed = 42;
    for (int i = 2; i < argc; ++i) {
        bool ok = false;
        if (std::strcmp(argv[i], "--ops") == 0 && i + 1 < argc) {
            ok = parse_u64(argv[++i], ops) && ops > 0 && ops < 0xFFFFFFFFull;
        } else if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            ok = parse_u64(argv[++i], seed);
        } else if (std::strcmp(argv[i], "--no-pin") == 0) {
            pin_threads = false;
            ok = true;
        }
        if (!ok) {
            std::fprintf(stderr, "calloc-bench: bad argument '%s'\n", argv[i]);
            usage(stderr);
            return 1;
        }
    }

    choose_cpus_for_threads();
    result r = chosen->run(ops, seed);
    memory_figures after = read_memory_figures();

    const char* alloc = std::getenv("BENCH_ALLOCATOR");
    char alloc_field[128] = "";
    if (alloc != nullptr && *alloc != '\0') std::snprintf(alloc_field, sizeof alloc_field, " alloc=%s", alloc);
    bool ok = r.checks.pattern_errors == 0;
    std::printf("workload=%s%s ns_per_op=%.3f ops=%" PRIu64 " peak_rss_kb=%ld cpu_ns_per_op=%.3f threads=%u"
                " pinned=%d seed=%" PRIu64 " wall_s=%.6f preemptions=%ld sleeps=%ld minor_faults=%ld"
                " baseline_rss_kb=%ld end_rss_kb=%ld requested_kb=%ld misaligned=%" PRIu64
                " malloc_from=%s verify=%s",
                chosen->name, alloc_field, r.ns_per_op, r.ops, after.peak_rss_kb, r.cpu_ns_per_op, r.threads,
                r.threads > 1 && !r.unpinned && threads_are_pinned() ? 1 : 0, seed, r.wall_seconds, r.preemptions, r.sleeps,
                r.minor_faults, r.baseline_rss_kb, after.current_rss_kb, r.requested_kb, r.checks.misaligned,
                malloc_provider(), ok ? "ok" : "FAIL");
    if (!ok) std::printf(" pattern_errors=%" PRIu64, r.checks.pattern_errors);
    std::printf("\n");
    std::fflush(stdout);
    return ok ? 0 : 2;
}
