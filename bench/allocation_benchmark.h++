// allocation_benchmark.h++ — real-world allocation patterns (issue 3; "TURN 9" of the request).
//
// AllocationBenchmark runs workloads modelled on databases, web servers, game engines, ML training,
// producer/consumer pipelines and long-running servers whose live set changes size classes. Every
// workload calls nothing but the C library's malloc, free and realloc, so calloc-workloads (the
// program built from bench/workloads.c++) runs on whatever allocator LD_PRELOAD puts under it; it
// links no libcalloc. Every workload is deterministic for a seed, scales with `scale` (1.0 is the
// documented full size), writes a pattern into every block and checks it before the block is freed
// or after it was reallocated: a corrupted block counts in pattern_errors, and the program exits 2.
//
// The names and signatures of the request are kept: WorkloadResult's first four fields, the four
// run_*_pattern() functions without arguments (they use the options given to set_options()),
// compare_with_malloc() and compare_with_tcmalloc(). The rest is an extension.

#ifndef CALLOC_BENCH_ALLOCATION_BENCHMARK_HXX
#define CALLOC_BENCH_ALLOCATION_BENCHMARK_HXX

#include <chrono>
#include <cstddef>
#include <cstdint>

class AllocationBenchmark {
public:
    struct WorkloadResult {
        // The request's fields.
        std::chrono::microseconds total_time;  // wall time of the timed section
        double allocs_per_second;              // malloc + realloc calls per second of wall time
        size_t peak_memory_usage;              // bytes: peak RSS of the process (VmHWM)
        float fragmentation_final;             // 1 - live bytes / heap RSS at the end of the run's steady state

        // Extensions.
        const char* workload = "";
        unsigned threads = 1;
        double cpu_seconds = 0;              // CPU time of the whole process during the timed section
        std::uint64_t operations = 0;        // malloc + free + realloc calls
        std::uint64_t allocations = 0;       // malloc + realloc calls
        double ops_per_second = 0;           // operations per second of wall time
        size_t baseline_rss = 0;             // bytes: RSS just before the timed section (program + harness)
        size_t final_rss = 0;                // bytes: RSS after the workload freed everything
        size_t peak_live = 0;                // bytes the workload had live at most (its own count)
        size_t end_live = 0, end_heap_rss = 0;  // the checkpoint that fragmentation_final comes from
        float fragmentation_worst = 0;       // the worst checkpoint with live >= half of peak_live
        bool peak_was_reset = false;         // VmHWM was reset before the timed section (clear_refs)
        double latency_p50_ns = 0, latency_p99_ns = 0, latency_p999_ns = 0, latency_max_ns = 0;
        double latency_overhead_ns = 0;      // cost of the clock reads, already taken off the figures
        // Sampled calls of 50 ns or more, per million sampled calls: the tail as a count, which a clock
        // that moves in steps of 10 ns (a p99.9 of 20-70 ns is known to +-10 ns) blurs far less.
        double latency_over50_ppm = 0;
        std::uint64_t latency_samples = 0;   // calls timed (one in 16 at first, fewer on long runs)
        std::uint64_t pattern_errors = 0;    // corrupted blocks: nonzero is a failure
        std::uint64_t misaligned = 0;        // blocks not 16-byte aligned (reported, not fatal)
    };

    struct Options {
        std::uint64_t seed = 42;
        double scale = 1.0;            // 1.0: the full size documented in bench/README.md
        unsigned threads = 2;          // webserver-mt and producer-consumer
        unsigned max_tensor_mib = 0;   // ml-training: largest tensor; 0: 96 MiB x scale (>= 16)
        bool series = false;           // keep the RSS-vs-live checkpoints for print_series()
    };

    static void set_options(const Options& options);
    static const Options& options();

    // The request's four workloads...
    static WorkloadResult run_database_pattern();
    static WorkloadResult run_webserver_pattern();
    static WorkloadResult run_gameengine_pattern();
    static WorkloadResult run_ml_training_pattern();
    // ...and the issue's others.
    static WorkloadResult run_webserver_threaded_pattern();  // options().threads workers
    static WorkloadResult run_producer_consumer_pattern();   // options().threads threads in a ring
    static WorkloadResult run_fragmentation_pattern();       // live set moving across size classes

    // Each runs every workload in a child process twice — under libcalloc (LD_PRELOAD of
    // $LIBCALLOC_SO, else the build tree's src/.libs/libcalloc.so) and under the other allocator
    // (glibc: no preload; tcmalloc: libtcmalloc_minimal.so.4) — and prints the comparison.
    static void compare_with_malloc();
    static void compare_with_tcmalloc();

    // The checkpoints of the last run (time, live bytes, heap RSS), one "series ..." line each.
    static void print_series(const WorkloadResult& result);
};

#endif
