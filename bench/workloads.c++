// calloc-workloads — real-world allocation patterns, run on whatever allocator LD_PRELOAD provides.
//
// The workloads of issue 3 (database, web server with one and with N workers, game engine, ML
// training, producer/consumer, fragmentation churn) behind the AllocationBenchmark class of
// allocation_benchmark.h++. Like calloc-bench, this program calls only malloc, free and realloc and
// links no allocator; scripts/bench-workloads runs it under each allocator in turn.
//
// The harness keeps its own memory (block tables, latency samples, checkpoints) out of the allocator
// measured: it comes from mmap, populated before the clock starts. Random sizes come from a seeded
// xorshift generator, so every allocator sees the same sequence of requests. Every block gets a
// pattern byte at its start, its end and every 4 KiB in between (so every page of a block is
// touched, as a program touches what it allocates), checked before the block is freed and, after a
// realloc, over the part that realloc must preserve.
//
// Latency: one allocator call in 16 is timed with the TSC (converted to ns by a calibration against
// CLOCK_MONOTONIC over the run, the cost of reading the clock itself taken off); when a thread's
// sample buffer fills up, every other sample is dropped and the stride doubles, so the samples stay
// spread evenly over the run. max is the largest sampled call, not necessarily the largest of all.
//
// Memory: VmHWM is reset (echo 5 > /proc/self/clear_refs) just before the timed section, so the peak
// RSS is the workload's; baseline RSS (the program and the harness) is measured then too, and "heap
// RSS" is RSS minus that baseline. At checkpoints (about a hundred per run) the workload records its
// live bytes (its own count of bytes requested and not freed) and the heap RSS; fragmentation is
// 1 - live / heap RSS. frag_end is taken at the last checkpoint whose live bytes are at least half
// the run's peak (the end of its steady state, before the final teardown); frag_worst is the worst
// such checkpoint.
//
// Usage: calloc-workloads WORKLOAD|all [--seed S] [--scale X | --quick] [--threads N] [--series]
//        calloc-workloads --compare-malloc | --compare-tcmalloc [same options]
// One line of key=value fields per run (see usage()); exit status 2 when a block was corrupted.

#include "allocation_benchmark.h++"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr double quick_scale = 0.1;
constexpr unsigned max_threads = 64;

[[noreturn]] void die(const char* message) {
    std::fprintf(stderr, "calloc-workloads: %s\n", message);
    std::exit(3);
}

// --- harness memory: from the kernel, populated up front, never from the allocator measured ------

void* harness_map(std::size_t bytes) {
    if (bytes == 0) bytes = 1;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    if (p == MAP_FAILED) die("mmap of harness memory failed");
    return p;
}

template <typename T> struct harness_array {
    T* data = nullptr;
    std::size_t count = 0;
    explicit harness_array(std::size_t n) : data(static_cast<T*>(harness_map(n * sizeof(T)))), count(n) {}
    ~harness_array() { munmap(data, count > 0 ? count * sizeof(T) : 1); }
    harness_array(const harness_array&) = delete;
    harness_array& operator=(const harness_array&) = delete;
    T& operator[](std::size_t i) { return data[i]; }
};

inline void escape(void* p) { asm volatile("" : : "r"(p) : "memory"); }

// --- random numbers ------------------------------------------------------------------------------

struct xorshift64star {
    std::uint64_t state;
    explicit xorshift64star(std::uint64_t seed) : state(seed ? seed : 0x9E3779B97F4A7C15ull) {
        for (int i = 0; i < 4; ++i) next();
    }
    std::uint64_t next() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        return state * 0x2545F4914F6CDD1Dull;
    }
    std::uint64_t below(std::uint64_t bound) { return bound ? next() % bound : 0; }
    std::uint64_t between(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
    // Log-uniform over [2^lo_log2, 2^hi_log2): a power-of-two band chosen uniformly, then uniform
    // inside it — small sizes are frequent, large ones rare, as in real programs.
    std::uint64_t log_size(unsigned lo_log2, unsigned hi_log2) {
        unsigned band = lo_log2 + static_cast<unsigned>(below(hi_log2 - lo_log2));
        std::uint64_t base = std::uint64_t{1} << band;
        return base + below(base);
    }
};

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t stream) {
    return seed * 0x9E3779B97F4A7C15ull + stream * 0xBF58476D1CE4E5B9ull + 1;
}

// --- time ----------------------------------------------------------------------------------------

inline std::uint64_t ticks() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_lfence();
    return __rdtsc();
#else
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
#endif
}

double monotonic_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

inline void wait_a_little(unsigned& spins) {
    if (++spins < 128) {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#endif
    } else {
        sched_yield();
    }
}

// --- memory figures, read without malloc ---------------------------------------------------------

long read_proc_kb(const char* path, const char* key) {
    char text[8192];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    std::size_t total = 0;
    for (;;) {
        ssize_t got = read(fd, text + total, sizeof text - 1 - total);
        if (got <= 0) break;
        total += static_cast<std::size_t>(got);
        if (total >= sizeof text - 1) break;
    }
    close(fd);
    text[total] = '\0';
    const char* at = std::strstr(text, key);
    if (at == nullptr) return -1;
    at += std::strlen(key);
    while (*at == ' ' || *at == '\t') ++at;
    return std::strtol(at, nullptr, 10);
}

long peak_rss_kb() { return read_proc_kb("/proc/self/status", "VmHWM:"); }

// Resident bytes from /proc/self/statm (its second field, in pages): cheaper than status.
long current_rss_kb() {
    char text[256];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t got = read(fd, text, sizeof text - 1);
    close(fd);
    if (got <= 0) return -1;
    text[got] = '\0';
    char* end = nullptr;
    std::strtol(text, &end, 10);
    long pages = std::strtol(end, nullptr, 10);
    return pages * (sysconf(_SC_PAGESIZE) / 1024);
}

bool reset_peak_rss() {
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = write(fd, "5", 1) == 1;
    close(fd);
    return ok;
}

// --- per-thread measuring: timed allocator calls, live bytes, pattern checks ---------------------

constexpr std::size_t sample_capacity = 1u << 20;  // per thread; 4 MiB

struct alignas(64) thread_meter {
    std::uint64_t ops = 0;
    std::uint64_t allocs = 0;
    std::uint64_t stride_mask = 15;  // time the call when (ops & stride_mask) == 0
    std::uint32_t* samples = nullptr;
    std::size_t sample_count = 0;
    std::uint64_t pattern_errors = 0;
    std::uint64_t misaligned = 0;
    alignas(64) std::atomic<std::int64_t> live{0};  // written by its thread only, read by checkpoints

    void open() { samples = static_cast<std::uint32_t*>(harness_map(sample_capacity * sizeof(std::uint32_t))); }
    void close() {
        if (samples) munmap(samples, sample_capacity * sizeof(std::uint32_t));
        samples = nullptr;
    }
    void record(std::uint64_t t) {
        if (sample_count == sample_capacity) {
            for (std::size_t i = 0; i < sample_capacity / 2; ++i) samples[i] = samples[2 * i];
            sample_count = sample_capacity / 2;
            stride_mask = stride_mask * 2 + 1;
        }
        samples[sample_count++] = t > 0xFFFFFFFFu ? 0xFFFFFFFFu : static_cast<std::uint32_t>(t);
    }
    // Only its own thread writes `live`: a load and a store, no read-modify-write.
    void add_live(std::int64_t delta) {
        live.store(live.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
    }

    unsigned char* malloc_block(std::size_t size) {
        void* p;
        if ((++ops & stride_mask) == 0) {
            std::uint64_t t0 = ticks();
            p = std::malloc(size);
            std::uint64_t t1 = ticks();
            record(t1 - t0);
        } else {
            p = std::malloc(size);
        }
        if (p == nullptr) die("malloc returned NULL");
        ++allocs;
        misaligned += (reinterpret_cast<std::uintptr_t>(p) & 15u) != 0;
        add_live(static_cast<std::int64_t>(size));
        return static_cast<unsigned char*>(p);
    }
    void free_block(void* p, std::size_t size) {
        if ((++ops & stride_mask) == 0) {
            std::uint64_t t0 = ticks();
            std::free(p);
            std::uint64_t t1 = ticks();
            record(t1 - t0);
        } else {
            std::free(p);
        }
        add_live(-static_cast<std::int64_t>(size));
    }
    unsigned char* realloc_block(void* p, std::size_t old_size, std::size_t size) {
        void* q;
        if ((++ops & stride_mask) == 0) {
            std::uint64_t t0 = ticks();
            q = std::realloc(p, size);
            std::uint64_t t1 = ticks();
            record(t1 - t0);
        } else {
            q = std::realloc(p, size);
        }
        if (q == nullptr) die("realloc returned NULL");
        ++allocs;
        misaligned += (reinterpret_cast<std::uintptr_t>(q) & 15u) != 0;
        add_live(static_cast<std::int64_t>(size) - static_cast<std::int64_t>(old_size));
        return static_cast<unsigned char*>(q);
    }
};

constexpr std::size_t page_stride = 4096;

inline unsigned char pattern_for(std::uint64_t serial) {
    return static_cast<unsigned char>((serial * 0x9Du) % 255u + 1u);
}

inline void stamp(unsigned char* p, std::size_t size, unsigned char pattern) {
    for (std::size_t off = 0; off < size; off += page_stride) p[off] = pattern;
    p[size - 1] = pattern;
    escape(p);
}

inline bool intact(const unsigned char* p, std::size_t size, unsigned char pattern) {
    unsigned char bad = p[size - 1] ^ pattern;
    for (std::size_t off = 0; off < size; off += page_stride) bad |= p[off] ^ pattern;
    return bad == 0;
}

// After realloc from old_size to new_size: the bytes below both sizes must have survived.
inline bool prefix_intact(const unsigned char* p, std::size_t old_size, std::size_t new_size, unsigned char pattern) {
    std::size_t keep = old_size < new_size ? old_size : new_size;
    unsigned char bad = 0;
    for (std::size_t off = 0; off < keep; off += page_stride) bad |= p[off] ^ pattern;
    if (old_size <= new_size) bad |= p[old_size - 1] ^ pattern;
    return bad == 0;
}

struct block {
    unsigned char* p = nullptr;
    std::uint32_t size = 0;
    unsigned char pattern = 0;
};

inline block new_block(thread_meter& m, std::size_t size, std::uint64_t serial) {
    block b;
    b.p = m.malloc_block(size);
    b.size = static_cast<std::uint32_t>(size);
    b.pattern = pattern_for(serial);
    stamp(b.p, size, b.pattern);
    return b;
}

inline void drop_block(thread_meter& m, block& b) {
    m.pattern_errors += !intact(b.p, b.size, b.pattern);
    m.free_block(b.p, b.size);
    b.p = nullptr;
}

// --- a run: meters, checkpoints, the figures -----------------------------------------------------

struct checkpoint {
    double t_ms;
    std::uint64_t ops;  // thread 0's allocator calls so far: the same for every allocator (1 thread)
    std::int64_t live;
    long heap_rss_kb;
};

constexpr std::size_t checkpoint_capacity = 4096;

struct run_state {
    const char* name = "";
    unsigned threads = 1;
    thread_meter* meters = nullptr;  // harness memory, one per thread
    checkpoint* checkpoints = nullptr;
    std::size_t checkpoint_count = 0;
    long baseline_rss_kb = 0;
    bool peak_reset = false;
    double wall_start = 0, wall_end = 0, cpu_start = 0, cpu_end = 0;
    std::uint64_t tick_start = 0, tick_end = 0;
    std::uint64_t tick_overhead = 0;  // the least two back-to-back ticks() differ by: taken off samples
    std::int64_t peak_live = 0;

    void open(const char* workload, unsigned thread_count) {
        name = workload;
        threads = thread_count;
        meters = static_cast<thread_meter*>(harness_map(sizeof(thread_meter) * threads));
        for (unsigned t = 0; t < threads; ++t) {
            new (&meters[t]) thread_meter;
            meters[t].open();
        }
        checkpoints = static_cast<checkpoint*>(harness_map(sizeof(checkpoint) * checkpoint_capacity));
    }
    std::int64_t live() const {
        std::int64_t sum = 0;
        for (unsigned t = 0; t < threads; ++t) sum += meters[t].live.load(std::memory_order_relaxed);
        return sum;
    }
    void start() {
        tick_overhead = ~std::uint64_t{0};
        for (int i = 0; i < 1000; ++i) {
            std::uint64_t t0 = ticks();
            std::uint64_t t1 = ticks();
            if (t1 - t0 < tick_overhead) tick_overhead = t1 - t0;
        }
        peak_reset = reset_peak_rss();
        baseline_rss_kb = current_rss_kb();
        cpu_start = process_cpu_seconds();
        wall_start = monotonic_seconds();
        tick_start = ticks();
    }
    void stop() {
        tick_end = ticks();
        wall_end = monotonic_seconds();
        cpu_end = process_cpu_seconds();
    }
    void mark() {
        std::int64_t l = live();
        if (l > peak_live) peak_live = l;
        if (checkpoint_count == checkpoint_capacity) return;
        // Checkpoints are taken by thread 0; the other threads' call counts are theirs alone to read.
        checkpoints[checkpoint_count++] = {(monotonic_seconds() - wall_start) * 1e3, meters[0].ops, l,
                                           current_rss_kb() - baseline_rss_kb};
    }
    AllocationBenchmark::WorkloadResult finish();
};

double fragmentation_of(const checkpoint& c) {
    if (c.heap_rss_kb <= 0) return 0.0;
    double f = 1.0 - static_cast<double>(c.live) / 1024.0 / static_cast<double>(c.heap_rss_kb);
    return f < 0 ? 0.0 : f;
}

// The checkpoints of the last run, for print_series (a process runs one workload).
checkpoint* last_checkpoints = nullptr;
std::size_t last_checkpoint_count = 0;

AllocationBenchmark::WorkloadResult run_state::finish() {
    AllocationBenchmark::WorkloadResult r{};
    r.workload = name;
    r.threads = threads;
    double wall = wall_end - wall_start;
    r.total_time = std::chrono::microseconds(static_cast<long long>(wall * 1e6));
    r.cpu_seconds = cpu_end - cpu_start;
    long peak = peak_rss_kb();
    r.peak_memory_usage = peak > 0 ? static_cast<size_t>(peak) * 1024 : 0;
    r.peak_was_reset = peak_reset;
    r.baseline_rss = baseline_rss_kb > 0 ? static_cast<size_t>(baseline_rss_kb) * 1024 : 0;
    long final_rss = current_rss_kb();
    r.final_rss = final_rss > 0 ? static_cast<size_t>(final_rss) * 1024 : 0;
    for (std::size_t i = 0; i < checkpoint_count; ++i)
        if (checkpoints[i].live > peak_live) peak_live = checkpoints[i].live;
    r.peak_live = static_cast<size_t>(peak_live);
    float worst = 0, end = 0;
    for (std::size_t i = 0; i < checkpoint_count; ++i) {
        const checkpoint& c = checkpoints[i];
        if (c.live * 2 < peak_live || c.live <= 0) continue;
        float f = static_cast<float>(fragmentation_of(c));
        if (f > worst) worst = f;
        end = f;
        r.end_live = static_cast<size_t>(c.live);
        r.end_heap_rss = c.heap_rss_kb > 0 ? static_cast<size_t>(c.heap_rss_kb) * 1024 : 0;
    }
    r.fragmentation_final = end;
    r.fragmentation_worst = worst;

    std::size_t total_samples = 0;
    for (unsigned t = 0; t < threads; ++t) {
        const thread_meter& m = meters[t];
        r.operations += m.ops;
        r.allocations += m.allocs;
        r.pattern_errors += m.pattern_errors;
        r.misaligned += m.misaligned;
        total_samples += m.sample_count;
    }
    r.ops_per_second = wall > 0 ? static_cast<double>(r.operations) / wall : 0;
    r.allocs_per_second = wall > 0 ? static_cast<double>(r.allocations) / wall : 0;

    // Latency percentiles over every thread's samples (weighted alike; strides may differ slightly).
    auto* all = static_cast<std::uint32_t*>(harness_map((total_samples ? total_samples : 1) * sizeof(std::uint32_t)));
    std::size_t n = 0;
    for (unsigned t = 0; t < threads; ++t)
        for (std::size_t i = 0; i < meters[t].sample_count; ++i) {
            std::uint32_t v = meters[t].samples[i];
            all[n++] = v > tick_overhead ? static_cast<std::uint32_t>(v - tick_overhead) : 0;
        }
    std::sort(all, all + n);
    double ns_per_tick = tick_end > tick_start ? wall * 1e9 / static_cast<double>(tick_end - tick_start) : 1.0;
    auto at = [&](double q) {
        if (n == 0) return 0.0;
        std::size_t i = static_cast<std::size_t>(q * static_cast<double>(n - 1) + 0.5);
        return static_cast<double>(all[i]) * ns_per_tick;
    };
    r.latency_samples = n;
    r.latency_p50_ns = at(0.50);
    r.latency_p99_ns = at(0.99);
    r.latency_p999_ns = at(0.999);
    r.latency_max_ns = at(1.0);
    r.latency_overhead_ns = static_cast<double>(tick_overhead) * ns_per_tick;
    if (n) {
        // The first sample of 50 ns or more (2 % short of it still counts: ns_per_tick is itself measured).
        auto first = std::lower_bound(all, all + n, 50.0 * 0.98,
                                      [&](std::uint32_t v, double ns) { return static_cast<double>(v) * ns_per_tick < ns; });
        r.latency_over50_ppm = static_cast<double>(all + n - first) * 1e6 / static_cast<double>(n);
    }
    munmap(all, (total_samples ? total_samples : 1) * sizeof(std::uint32_t));
    for (unsigned t = 0; t < threads; ++t) meters[t].close();
    last_checkpoints = checkpoints;
    last_checkpoint_count = checkpoint_count;
    return r;
}

AllocationBenchmark::Options current_options;

std::uint64_t scaled(double base, std::uint64_t minimum) {
    double v = base * current_options.scale;
    return v < static_cast<double>(minimum) ? minimum : static_cast<std::uint64_t>(v);
}

// Spreads about `wanted` checkpoints over `total` steps.
std::uint64_t every(std::uint64_t total, std::uint64_t wanted) {
    std::uint64_t e = total / wanted;
    return e ? e : 1;
}

// --- 1. database -------------------------------------------------------------------------------
// 10 000 queries (x scale) each allocate 100 row buffers of 50-200 B and hold them; then the queries
// finish in a random order, each freeing its rows.

AllocationBenchmark::WorkloadResult database(const AllocationBenchmark::Options& o) {
    constexpr std::uint64_t rows = 100;
    std::uint64_t queries = scaled(10000, 10);
    run_state run;
    run.open("database", 1);
    thread_meter& m = run.meters[0];
    harness_array<block> blocks(queries * rows);
    harness_array<std::uint32_t> order(queries);
    xorshift64star rng(mix_seed(o.seed, 1));
    for (std::uint64_t q = 0; q < queries; ++q) order[q] = static_cast<std::uint32_t>(q);
    for (std::uint64_t q = queries; q > 1; --q) std::swap(order[q - 1], order[rng.below(q)]);
    std::uint64_t mark_every = every(queries, 50);

    run.start();
    std::uint64_t serial = 0;
    for (std::uint64_t q = 0; q < queries; ++q) {
        for (std::uint64_t r = 0; r < rows; ++r) blocks[q * rows + r] = new_block(m, rng.between(50, 200), serial++);
        if (q % mark_every == mark_every - 1) run.mark();
    }
    for (std::uint64_t k = 0; k < queries; ++k) {
        std::uint64_t q = order[k];
        for (std::uint64_t r = 0; r < rows; ++r) drop_block(m, blocks[q * rows + r]);
        if (k % mark_every == mark_every - 1) run.mark();
    }
    run.stop();
    return run.finish();
}

// --- 2. web server -----------------------------------------------------------------------------
// Each request makes 100-500 allocations of 16 B-16 KiB (log-uniform) plus a response buffer that
// grows by realloc from 256 B to 4-32 KiB, and frees everything at its end. 10 000 requests (x
// scale), shared among the workers.

void serve_requests(run_state& run, unsigned t, std::uint64_t requests, std::uint64_t seed, block* scratch,
                    std::atomic<unsigned>* started) {
    thread_meter& m = run.meters[t];
    xorshift64star rng(seed);
    std::uint64_t serial = 0;
    std::uint64_t mark_every = every(requests, 100);
    if (started) {
        started->fetch_add(1);
        unsigned spins = 0;
        while (started->load() < run.threads) wait_a_little(spins);
    }
    for (std::uint64_t q = 0; q < requests; ++q) {
        std::uint64_t n = rng.between(100, 500);
        std::size_t response_size = 256;
        unsigned char pattern = pattern_for(serial++);
        unsigned char* response = m.malloc_block(response_size);
        stamp(response, response_size, pattern);
        std::uint64_t grow_at = n / 4 + 1;
        std::size_t response_max = rng.log_size(12, 15);
        for (std::uint64_t i = 0; i < n; ++i) {
            scratch[i] = new_block(m, rng.log_size(4, 14), serial++);
            if (i % grow_at == 0 && response_size < response_max) {
                std::size_t bigger = response_size * 2 < response_max ? response_size * 2 : response_max;
                response = m.realloc_block(response, response_size, bigger);
                m.pattern_errors += !prefix_intact(response, response_size, bigger, pattern);
                stamp(response, bigger, pattern);
                response_size = bigger;
            }
        }
        if (t == 0 && q % mark_every == mark_every - 1) run.mark();
        for (std::uint64_t i = 0; i < n; ++i) drop_block(m, scratch[i]);
        m.pattern_errors += !intact(response, response_size, pattern);
        m.free_block(response, response_size);
    }
}

AllocationBenchmark::WorkloadResult webserver(const AllocationBenchmark::Options& o, unsigned workers,
                                              const char* name) {
    std::uint64_t requests = scaled(10000, 20);
    run_state run;
    run.open(name, workers);
    harness_array<block> scratch(workers * 512);
    if (workers == 1) {
        run.start();
        serve_requests(run, 0, requests, mix_seed(o.seed, 2), scratch.data, nullptr);
        run.stop();
        return run.finish();
    }
    std::atomic<unsigned> started{0};
    std::vector<std::thread> pool;
    pool.reserve(workers);
    run.start();
    for (unsigned t = 0; t < workers; ++t) {
        std::uint64_t share = requests / workers + (t < requests % workers ? 1 : 0);
        pool.emplace_back(serve_requests, std::ref(run), t, share, mix_seed(o.seed, 100 + t),
                          scratch.data + t * 512, &started);
    }
    for (auto& th : pool) th.join();
    run.stop();
    return run.finish();
}

// --- 3. game engine ----------------------------------------------------------------------------
// 2 000 frames (x scale). Each frame: 300-1000 temporaries of 16 B-4 KiB freed at the frame's end;
// 0-15 entities of 64 B-2 KiB spawned with a lifetime of 1-600 frames; every 20 frames one of the
// assets (64 KiB-8 MiB, 16-24 of them loaded) is unloaded and one or two others are loaded.

AllocationBenchmark::WorkloadResult gameengine(const AllocationBenchmark::Options& o) {
    constexpr std::size_t max_entities = 16 * 600 + 16;
    constexpr std::size_t max_assets = 24;
    std::uint64_t frames = scaled(2000, 20);
    run_state run;
    run.open("gameengine", 1);
    thread_meter& m = run.meters[0];
    harness_array<block> temporaries(1000);
    harness_array<block> entities(max_entities);
    harness_array<std::uint32_t> expiry(max_entities);
    harness_array<block> assets(max_assets);
    std::size_t entity_count = 0, asset_count = 0;
    xorshift64star rng(mix_seed(o.seed, 3));
    std::uint64_t serial = 0;
    std::uint64_t mark_every = every(frames, 100);

    run.start();
    while (asset_count < 16) assets[asset_count++] = new_block(m, rng.log_size(16, 23), serial++);
    for (std::uint64_t f = 0; f < frames; ++f) {
        // Entities whose time is up go first (swap with the last).
        for (std::size_t i = 0; i < entity_count;) {
            if (expiry[i] <= f) {
                drop_block(m, entities[i]);
                entities[i] = entities[--entity_count];
                expiry[i] = expiry[entity_count];
            } else {
                ++i;
            }
        }
        std::uint64_t spawn = rng.below(16);
        for (std::uint64_t s = 0; s < spawn && entity_count < max_entities; ++s) {
            entities[entity_count] = new_block(m, rng.log_size(6, 11), serial++);
            expiry[entity_count++] = static_cast<std::uint32_t>(f + rng.between(1, 600));
        }
        if (f % 20 == 19) {
            if (asset_count > 16) {
                std::size_t victim = rng.below(asset_count);
                drop_block(m, assets[victim]);
                assets[victim] = assets[--asset_count];
            }
            std::uint64_t loads = rng.between(1, 2);
            for (std::uint64_t l = 0; l < loads && asset_count < max_assets; ++l)
                assets[asset_count++] = new_block(m, rng.log_size(16, 23), serial++);
        }
        std::uint64_t temps = rng.between(300, 999);
        for (std::uint64_t i = 0; i < temps; ++i) temporaries[i] = new_block(m, rng.log_size(4, 12), serial++);
        if (f % mark_every == mark_every - 1) run.mark();
        for (std::uint64_t i = 0; i < temps; ++i) drop_block(m, temporaries[i]);
    }
    for (std::size_t i = 0; i < entity_count; ++i) drop_block(m, entities[i]);
    for (std::size_t i = 0; i < asset_count; ++i) drop_block(m, assets[i]);
    run.stop();
    return run.finish();
}

// --- 4. ML training ----------------------------------------------------------------------------
// Four persistent tensors (weights, gradients, two optimizer moments) of max/16..max bytes; 8 steps,
// each allocating three activation tensors and 1 000 small graph nodes (32-256 B), reallocating two
// of the persistent tensors to new sizes, then freeing the step's activations and nodes. max is
// 96 MiB x scale (at least 16 MiB), or --max-tensor-mib (up to 2048): at most 7 tensors are live at
// once (672 MiB at scale 1; --max-tensor-mib 256 stays under 2 GiB). Every page of a tensor is
// touched, so an allocator that gives large blocks back to the kernel pays page faults again.

AllocationBenchmark::WorkloadResult ml_training(const AllocationBenchmark::Options& o) {
    constexpr std::size_t persistent = 4, activations = 3, nodes = 1000, steps = 8;
    std::size_t max_mib = o.max_tensor_mib ? o.max_tensor_mib
                                           : static_cast<std::size_t>(std::max(16.0, 96.0 * o.scale));
    std::size_t max_bytes = max_mib << 20, min_bytes = max_bytes / 16;
    run_state run;
    run.open("ml-training", 1);
    thread_meter& m = run.meters[0];
    block tensors[persistent], acts[activations];
    harness_array<block> graph(nodes);
    xorshift64star rng(mix_seed(o.seed, 4));
    std::uint64_t serial = 0;

    run.start();
    for (auto& t : tensors) t = new_block(m, rng.between(min_bytes, max_bytes), serial++);
    run.mark();
    for (std::size_t s = 0; s < steps; ++s) {
        for (auto& a : acts) a = new_block(m, rng.between(min_bytes, max_bytes), serial++);
        for (std::size_t i = 0; i < nodes; ++i) graph[i] = new_block(m, rng.between(32, 256), serial++);
        for (int k = 0; k < 2; ++k) {
            block& t = tensors[rng.below(persistent)];
            std::size_t size = rng.between(min_bytes, max_bytes);
            t.p = m.realloc_block(t.p, t.size, size);
            m.pattern_errors += !prefix_intact(t.p, t.size, size, t.pattern);
            t.size = static_cast<std::uint32_t>(size);
            stamp(t.p, size, t.pattern);
        }
        run.mark();
        for (std::size_t i = nodes; i > 0; --i) drop_block(m, graph[i - 1]);
        for (auto& a : acts) drop_block(m, a);
    }
    for (auto& t : tensors) drop_block(m, t);
    run.stop();
    return run.finish();
}

// --- 5. producer/consumer ----------------------------------------------------------------------
// N threads in a ring: each allocates blocks of 16 B-4 KiB in batches of 64 and hands them through
// a lock-free single-producer single-consumer queue to the next thread, which checks and frees them:
// every free is a remote free. 500 000 blocks (x scale) per thread.

constexpr std::size_t handover_batch = 64;
constexpr std::size_t handover_slots = 64;

struct alignas(64) handover_queue {
    alignas(64) std::atomic<std::uint64_t> produced{0};
    alignas(64) std::atomic<std::uint64_t> consumed{0};
    alignas(64) block batches[handover_slots][handover_batch];
};

void producer_consumer_thread(run_state& run, unsigned t, handover_queue* queues, std::uint64_t batches,
                              std::uint64_t seed, std::atomic<unsigned>* started) {
    thread_meter& m = run.meters[t];
    handover_queue& out = queues[t];
    handover_queue& in = queues[(t + run.threads - 1) % run.threads];
    xorshift64star rng(seed);
    std::uint64_t serial = 0, made = 0, eaten = 0;
    std::uint64_t mark_every = every(batches, 100);
    started->fetch_add(1);
    unsigned spins = 0;
    while (started->load() < run.threads) wait_a_little(spins);
    spins = 0;
    while (made < batches || eaten < batches) {
        bool progress = false;
        if (made < batches && made - out.consumed.load(std::memory_order_acquire) < handover_slots) {
            block* slot = out.batches[made % handover_slots];
            for (std::size_t i = 0; i < handover_batch; ++i) slot[i] = new_block(m, rng.log_size(4, 12), serial++);
            out.produced.store(++made, std::memory_order_release);
            progress = true;
            if (t == 0 && made % mark_every == 0) run.mark();
        }
        if (eaten < in.produced.load(std::memory_order_acquire)) {
            block* slot = in.batches[eaten % handover_slots];
            for (std::size_t i = 0; i < handover_batch; ++i) drop_block(m, slot[i]);
            in.consumed.store(++eaten, std::memory_order_release);
            progress = true;
        }
        if (progress) spins = 0;
        else wait_a_little(spins);
    }
}

AllocationBenchmark::WorkloadResult producer_consumer(const AllocationBenchmark::Options& o) {
    unsigned n = o.threads < 2 ? 2 : o.threads;
    std::uint64_t batches = scaled(500000, 10 * handover_batch) / handover_batch;
    run_state run;
    run.open("producer-consumer", n);
    auto* queues = static_cast<handover_queue*>(harness_map(sizeof(handover_queue) * n));
    for (unsigned t = 0; t < n; ++t) new (&queues[t]) handover_queue;
    std::atomic<unsigned> started{0};
    std::vector<std::thread> pool;
    pool.reserve(n);
    run.start();
    for (unsigned t = 0; t < n; ++t)
        pool.emplace_back(producer_consumer_thread, std::ref(run), t, queues, batches, mix_seed(o.seed, 200 + t),
                          &started);
    for (auto& th : pool) th.join();
    run.stop();
    auto r = run.finish();
    munmap(queues, sizeof(handover_queue) * n);
    return r;
}

// --- 6. fragmentation churn --------------------------------------------------------------------
// A live set of 32 MiB (x scale, at least 4 MiB) whose blocks move from one band of size classes to
// the next over eight phases, shrinking to a quarter in one of them and growing back: in each phase
// random live blocks are freed and blocks of the phase's band allocated until the live bytes are
// back at the phase's target, for 1.5 times as many frees as there are blocks live at its start or
// as its target holds blocks of its band, whichever is more (so that by its end most blocks are of
// the phase's band, whether the band is larger or smaller than the one before).

AllocationBenchmark::WorkloadResult fragmentation(const AllocationBenchmark::Options& o) {
    struct phase {
        unsigned lo_log2, hi_log2;
        double target;
    };
    constexpr phase phases[] = {{4, 7, 1.0},   {8, 11, 1.0}, {4, 6, 1.0},  {12, 15, 1.0},
                                {6, 9, 0.25},  {10, 16, 1.0}, {4, 8, 1.0}, {4, 15, 1.0}};
    std::int64_t target_bytes = static_cast<std::int64_t>(scaled(32u << 20, 4u << 20));
    std::size_t capacity = static_cast<std::size_t>(target_bytes / 16) + 1024;
    run_state run;
    run.open("fragmentation", 1);
    thread_meter& m = run.meters[0];
    harness_array<block> live(capacity);
    std::size_t count = 0;
    std::int64_t live_bytes = 0;
    xorshift64star rng(mix_seed(o.seed, 6));
    std::uint64_t serial = 0;

    run.start();
    for (const phase& ph : phases) {
        std::int64_t target = static_cast<std::int64_t>(static_cast<double>(target_bytes) * ph.target);
        double mean_size = 0;  // of the log-uniform band: 1.5 x 2^b averaged over its power-of-two bands
        for (unsigned b = ph.lo_log2; b < ph.hi_log2; ++b) mean_size += 1.5 * static_cast<double>(1u << b);
        mean_size /= ph.hi_log2 - ph.lo_log2;
        std::uint64_t frees = static_cast<std::uint64_t>(1.5 * static_cast<double>(target) / mean_size) + 1;
        frees = std::max<std::uint64_t>(frees, count + count / 2);
        std::uint64_t mark_every = every(frees, 16);
        auto refill = [&] {
            while (live_bytes < target && count < capacity) {
                block b = new_block(m, rng.log_size(ph.lo_log2, ph.hi_log2), serial++);
                live_bytes += b.size;
                live[count++] = b;
            }
        };
        refill();
        for (std::uint64_t k = 0; k < frees && count > 0; ++k) {
            std::size_t victim = rng.below(count);
            live_bytes -= live[victim].size;
            drop_block(m, live[victim]);
            live[victim] = live[--count];
            // Shrinking phase: free two for each allocation until the target is reached.
            if (live_bytes > target && count > 0) {
                std::size_t second = rng.below(count);
                live_bytes -= live[second].size;
                drop_block(m, live[second]);
                live[second] = live[--count];
            }
            refill();
            if (k % mark_every == mark_every - 1) run.mark();
        }
    }
    for (std::size_t i = 0; i < count; ++i) drop_block(m, live[i]);
    run.stop();
    return run.finish();
}

// --- the table of workloads; running one in a child process ------------------------------------

struct workload_entry {
    const char* name;
    AllocationBenchmark::WorkloadResult (*run)();
    const char* what;
};

const workload_entry workload_table[] = {
    {"database", AllocationBenchmark::run_database_pattern,
     "10 000 queries x 100 rows of 50-200 B held, then finished in random order"},
    {"webserver", AllocationBenchmark::run_webserver_pattern,
     "10 000 requests of 100-500 blocks of 16 B-16 KiB + a realloc'd response, 1 worker"},
    {"webserver-mt", AllocationBenchmark::run_webserver_threaded_pattern, "the same requests shared by N workers"},
    {"gameengine", AllocationBenchmark::run_gameengine_pattern,
     "2 000 frames of temporaries, entities with lifetimes, assets of 64 KiB-8 MiB"},
    {"ml-training", AllocationBenchmark::run_ml_training_pattern,
     "tensors of 6-96 MiB reallocated every step, activations, graph nodes"},
    {"producer-consumer", AllocationBenchmark::run_producer_consumer_pattern,
     "N threads in a ring hand 500 000 blocks each to the next, which frees them"},
    {"fragmentation", AllocationBenchmark::run_fragmentation_pattern,
     "a 32 MiB live set moving across size classes in 8 phases; RSS vs live over time"},
};

const char* malloc_provider() {
    Dl_info info{};
    void* (*volatile fn)(std::size_t) = &std::malloc;
    if (dladdr(reinterpret_cast<void*>(fn), &info) != 0 && info.dli_fname != nullptr) {
        const char* slash = std::strrchr(info.dli_fname, '/');
        return slash ? slash + 1 : info.dli_fname;
    }
    return "unknown";
}

void print_result(const AllocationBenchmark::WorkloadResult& r) {
    const char* alloc = std::getenv("BENCH_ALLOCATOR");
    char alloc_field[128] = "";
    if (alloc != nullptr && *alloc != '\0') std::snprintf(alloc_field, sizeof alloc_field, " alloc=%s", alloc);
    const auto& o = current_options;
    long heap_peak_kb = static_cast<long>(r.peak_memory_usage / 1024) - static_cast<long>(r.baseline_rss / 1024);
    std::printf("workload=%s%s seed=%" PRIu64 " scale=%g threads=%u wall_s=%.6f cpu_s=%.6f ops=%" PRIu64
                " allocs=%" PRIu64 " ops_per_s=%.0f allocs_per_s=%.0f peak_rss_kb=%zu peak_reset=%d"
                " baseline_rss_kb=%zu heap_peak_kb=%ld final_rss_kb=%zu peak_live_kb=%zu end_live_kb=%zu"
                " end_heap_rss_kb=%zu frag_end=%.4f frag_worst=%.4f lat_p50_ns=%.0f lat_p99_ns=%.0f"
                " lat_p999_ns=%.0f lat_max_ns=%.0f lat_samples=%" PRIu64 " lat_overhead_ns=%.0f lat_over50_ppm=%.0f"
                " misaligned=%" PRIu64
                " malloc_from=%s verify=%s",
                r.workload, alloc_field, o.seed, o.scale, r.threads, static_cast<double>(r.total_time.count()) / 1e6,
                r.cpu_seconds, r.operations, r.allocations, r.ops_per_second, r.allocs_per_second,
                r.peak_memory_usage / 1024, r.peak_was_reset ? 1 : 0, r.baseline_rss / 1024, heap_peak_kb,
                r.final_rss / 1024, r.peak_live / 1024, r.end_live / 1024, r.end_heap_rss / 1024,
                static_cast<double>(r.fragmentation_final), static_cast<double>(r.fragmentation_worst),
                r.latency_p50_ns, r.latency_p99_ns, r.latency_p999_ns, r.latency_max_ns, r.latency_samples,
                r.latency_overhead_ns, r.latency_over50_ppm, r.misaligned, malloc_provider(), r.pattern_errors == 0 ? "ok" : "FAIL");
    if (r.pattern_errors) std::printf(" pattern_errors=%" PRIu64, r.pattern_errors);
    std::printf("\n");
    std::fflush(stdout);
}

std::string self_path() {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) die("cannot read /proc/self/exe");
    buf[n] = '\0';
    return buf;
}

std::string option_args() {
    const auto& o = current_options;
    char text[256];
    std::snprintf(text, sizeof text, " --seed %" PRIu64 " --scale %.17g --threads %u --max-tensor-mib %u", o.seed,
                  o.scale, o.threads, o.max_tensor_mib);
    return text;
}

// Runs this program on one workload in a child, with LD_PRELOAD set to `preload` (none when empty);
// returns its stdout and sets `status` to its exit status (128 + signal when it was killed).
std::string run_child(const std::string& workload, const std::string& preload, const char* label, int& status) {
    std::vector<std::string> args = {self_path(), workload};
    std::string rest = option_args();
    for (std::size_t at = 0; at < rest.size();) {
        std::size_t start = rest.find_first_not_of(' ', at);
        if (start == std::string::npos) break;
        std::size_t end = rest.find(' ', start);
        if (end == std::string::npos) end = rest.size();
        args.push_back(rest.substr(start, end - start));
        at = end;
    }
    if (current_options.series) args.push_back("--series");
    int pipefd[2];
    if (pipe(pipefd) != 0) die("pipe failed");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork failed");
    if (pid == 0) {
        dup2(pipefd[1], 1);
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        if (preload.empty()) unsetenv("LD_PRELOAD");
        else setenv("LD_PRELOAD", preload.c_str(), 1);
        setenv("BENCH_ALLOCATOR", label, 1);
        execv(argv[0], argv.data());
        _exit(127);
    }
    ::close(pipefd[1]);
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t got = read(pipefd[0], buf, sizeof buf);
        if (got <= 0) break;
        out.append(buf, static_cast<std::size_t>(got));
    }
    ::close(pipefd[0]);
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + (WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0);
    return out;
}

std::string field(const std::string& line, const char* key) {
    std::string k = std::string(" ") + key + "=";
    std::size_t at = (" " + line).find(k);
    if (at == std::string::npos) return "";
    at += k.size() - 1;
    std::size_t end = line.find(' ', at);
    return line.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

// The last line that starts with "workload=" (the "series" lines that may follow do not).
std::string result_line(const std::string& out) {
    std::string found;
    for (std::size_t at = 0; at < out.size();) {
        std::size_t end = out.find('\n', at);
        if (end == std::string::npos) end = out.size();
        if (out.compare(at, 9, "workload=") == 0) found = out.substr(at, end - at);
        at = end + 1;
    }
    return found;
}

std::string find_libcalloc() {
    if (const char* env = std::getenv("LIBCALLOC_SO"); env && *env) return env;
    std::string self = self_path();
    std::string dir = self.substr(0, self.rfind('/'));
    for (const char* rel : {"/../src/.libs/libcalloc.so", "/../lib/libcalloc.so", "/../src/.libs/libcalloc.so.0"}) {
        std::string candidate = dir + rel;
        if (access(candidate.c_str(), R_OK) == 0) return candidate;
    }
    return "";
}

std::string find_system_library(const char* file) {
    for (const char* dir : {"/usr/lib/x86_64-linux-gnu/", "/usr/lib/aarch64-linux-gnu/", "/usr/lib64/", "/usr/lib/",
                            "/usr/local/lib/"}) {
        std::string candidate = std::string(dir) + file;
        if (access(candidate.c_str(), R_OK) == 0) return candidate;
    }
    return "";
}

// libcalloc against one other allocator, every workload in a child process of its own, printed as
// a table of libcalloc's figures over the other's (below 1.00x: libcalloc is faster or smaller).
void compare_with(const char* rival, const std::string& rival_preload) {
    std::string libcalloc = find_libcalloc();
    std::printf("libcalloc vs %s, seed %" PRIu64 ", scale %g (one run each; scripts/bench-workloads repeats and "
                "interleaves)\n",
                rival, current_options.seed, current_options.scale);
    if (libcalloc.empty()) {
        std::printf("libcalloc: missing (set LIBCALLOC_SO, or build src/.libs/libcalloc.so)\n");
        return;
    }
    if (std::strcmp(rival, "glibc") != 0 && rival_preload.empty()) {
        std::printf("%s: missing (not installed)\n", rival);
        return;
    }
    std::printf("libcalloc: %s\n%s: %s\n", libcalloc.c_str(), rival,
                rival_preload.empty() ? "(no preload)" : rival_preload.c_str());
    std::printf("s: wall time; heap MiB: peak RSS minus the RSS before the workload; p99.9: ns per call;\n"
                "ratio: libcalloc's figure / %s's (below 1.00x libcalloc is faster, smaller)\n\n",
                rival);
    std::printf("%-18s %12s %12s %7s %12s %12s %7s %10s %10s %7s\n", "workload", "libcalloc s", "rival s", "ratio",
                "lca heap MiB", "rival MiB", "ratio", "lca p99.9", "rival", "ratio");
    for (const auto& w : workload_table) {
        int status_a = 0, status_b = 0;
        std::string a = result_line(run_child(w.name, libcalloc, "libcalloc", status_a));
        std::string b = result_line(run_child(w.name, rival_preload, rival, status_b));
        if (status_a != 0 || status_b != 0 || a.empty() || b.empty()) {
            std::printf("%-18s failed: libcalloc exit %d, %s exit %d\n", w.name, status_a, rival, status_b);
            continue;
        }
        auto num = [](const std::string& line, const char* key) { return std::atof(field(line, key).c_str()); };
        auto ratio = [](double x, double y) { return y > 0 ? x / y : 0.0; };
        double ta = num(a, "wall_s"), tb = num(b, "wall_s");
        double ma = num(a, "heap_peak_kb") / 1024, mb = num(b, "heap_peak_kb") / 1024;
        double la = num(a, "lat_p999_ns"), lb = num(b, "lat_p999_ns");
        std::printf("%-18s %12.4f %12.4f %6.2fx %12.1f %12.1f %6.2fx %10.0f %10.0f %6.2fx\n", w.name, ta, tb,
                    ratio(ta, tb), ma, mb, ratio(ma, mb), la, lb, ratio(la, lb));
        if (field(a, "malloc_from") != "libcalloc.so" && field(a, "malloc_from").rfind("libcalloc", 0) != 0)
            std::printf("  note: libcalloc's run took malloc from %s\n", field(a, "malloc_from").c_str());
    }
    std::fflush(stdout);
}

void usage(FILE* to) {
    std::fprintf(to,
                 "usage: calloc-workloads WORKLOAD|all [--seed S] [--scale X | --quick] [--threads N] [--series]\n"
                 "                        [--max-tensor-mib M]\n"
                 "       calloc-workloads --compare-malloc | --compare-tcmalloc [options]\n"
                 "       calloc-workloads --list\n"
                 "workloads (at --scale 1):\n");
    for (const auto& w : workload_table) std::fprintf(to, "  %-18s %s\n", w.name, w.what);
    std::fprintf(to,
                 "--quick is --scale %g. 'all' runs each workload in a child process of its own.\n"
                 "Prints one line of key=value fields per run (wall_s cpu_s ops allocs ops_per_s peak_rss_kb\n"
                 "heap_peak_kb final_rss_kb frag_end frag_worst lat_p50_ns lat_p99_ns lat_p999_ns lat_max_ns\n"
                 "malloc_from verify ...), with --series (always for fragmentation) also one 'series' line per\n"
                 "checkpoint. Exit status 2 when a block was corrupted (verify=FAIL).\n",
                 quick_scale);
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

}  // namespace

// --- AllocationBenchmark ---------------------------------------------------------------------------

void AllocationBenchmark::set_options(const Options& options) { current_options = options; }
const AllocationBenchmark::Options& AllocationBenchmark::options() { return current_options; }

AllocationBenchmark::WorkloadResult AllocationBenchmark::run_database_pattern() { return database(current_options); }
AllocationBenchmark::WorkloadResult AllocationBenchmark::run_webserver_pattern() {
    return webserver(current_options, 1, "webserver");
}
AllocationBenchmark::WorkloadResult AllocationBenchmark::run_webserver_threaded_pattern() {
    unsigned n = current_options.threads < 1 ? 1 : std::min(current_options.threads, max_threads);
    return webserver(current_options, n, "webserver-mt");
}
AllocationBenchmark::WorkloadResult AllocationBenchmark::run_gameengine_pattern() {
    return gameengine(current_options);
}
AllocationBenchmark::WorkloadResult AllocationBenchmark::run_ml_training_pattern() {
    return ml_training(current_options);
}
AllocationBenchmark::WorkloadResult AllocationBenchmark::run_producer_consumer_pattern() {
    Options o = current_options;
    o.threads = std::min(o.threads, max_threads);
    return producer_consumer(o);
}
AllocationBenchmark::WorkloadResult AllocationBenchmark::run_fragmentation_pattern() {
    return fragmentation(current_options);
}

void AllocationBenchmark::compare_with_malloc() { compare_with("glibc", ""); }
void AllocationBenchmark::compare_with_tcmalloc() {
    compare_with("tcmalloc", find_system_library("libtcmalloc_minimal.so.4"));
}

void AllocationBenchmark::print_series(const WorkloadResult& result) {
    for (std::size_t i = 0; i < last_checkpoint_count; ++i) {
        const checkpoint& c = last_checkpoints[i];
        std::printf("series workload=%s t_ms=%.3f ops=%" PRIu64 " live_kb=%lld heap_rss_kb=%ld frag=%.4f\n",
                    result.workload, c.t_ms, c.ops, static_cast<long long>(c.live / 1024), c.heap_rss_kb,
                    fragmentation_of(c));
    }
    std::fflush(stdout);
}

int main(int argc, char** argv) {
    if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (std::strcmp(argv[1], "--list") == 0) {
        for (const auto& w : workload_table) std::printf("%s\n", w.name);
        return 0;
    }
    AllocationBenchmark::Options o;
    for (int i = 2; i < argc; ++i) {
        bool ok = false;
        std::uint64_t v = 0;
        if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            ok = parse_u64(argv[++i], o.seed);
        } else if (std::strcmp(argv[i], "--scale") == 0 && i + 1 < argc) {
            char* end = nullptr;
            o.scale = std::strtod(argv[++i], &end);
            ok = *end == '\0' && o.scale > 0 && o.scale <= 100;
        } else if (std::strcmp(argv[i], "--quick") == 0) {
            o.scale = quick_scale;
            ok = true;
        } else if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            ok = parse_u64(argv[++i], v) && v >= 1 && v <= max_threads;
            o.threads = static_cast<unsigned>(v);
        } else if (std::strcmp(argv[i], "--max-tensor-mib") == 0 && i + 1 < argc) {
            ok = parse_u64(argv[++i], v) && v <= 2048;  // block sizes are 32-bit
            o.max_tensor_mib = static_cast<unsigned>(v);
        } else if (std::strcmp(argv[i], "--series") == 0) {
            o.series = true;
            ok = true;
        }
        if (!ok) {
            std::fprintf(stderr, "calloc-workloads: bad argument '%s'\n", argv[i]);
            usage(stderr);
            return 1;
        }
    }
    AllocationBenchmark::set_options(o);

    if (std::strcmp(argv[1], "--compare-malloc") == 0) {
        AllocationBenchmark::compare_with_malloc();
        return 0;
    }
    if (std::strcmp(argv[1], "--compare-tcmalloc") == 0) {
        AllocationBenchmark::compare_with_tcmalloc();
        return 0;
    }
    if (std::strcmp(argv[1], "all") == 0) {
        // One process per workload, so that each has its own peak RSS; the children inherit LD_PRELOAD.
        const char* preload = std::getenv("LD_PRELOAD");
        const char* label = std::getenv("BENCH_ALLOCATOR");
        int worst = 0;
        for (const auto& w : workload_table) {
            int status = 0;
            std::string out = run_child(w.name, preload ? preload : "", label ? label : "", status);
            std::fputs(out.c_str(), stdout);
            if (status != 0) {
                std::printf("workload=%s status=%d verify=%s\n", w.name, status, status == 2 ? "FAIL" : "error");
                if (worst == 0 || status == 2) worst = status;
            }
        }
        std::fflush(stdout);
        return worst;
    }
    const workload_entry* chosen = nullptr;
    for (const auto& w : workload_table)
        if (std::strcmp(argv[1], w.name) == 0) chosen = &w;
    if (chosen == nullptr) {
        std::fprintf(stderr, "calloc-workloads: unknown workload '%s'\n", argv[1]);
        usage(stderr);
        return 1;
    }
    AllocationBenchmark::WorkloadResult r = chosen->run();
    print_result(r);
    if (o.series || std::strcmp(chosen->name, "fragmentation") == 0) AllocationBenchmark::print_series(r);
    return r.pattern_errors == 0 ? 0 : 2;
}
