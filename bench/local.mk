# bench/local.mk -- the benchmark (included by Makefile.am).
#
# calloc-bench calls only the plain C malloc/free and links nothing but libc and
# pthread: scripts/bench-compare runs it under LD_PRELOAD of each allocator (none =
# glibc, jemalloc, tcmalloc, mimalloc, libcalloc) in one invocation.

noinst_PROGRAMS += bench/calloc-bench
bench_calloc_bench_SOURCES = bench/calloc-bench.c++
# Own flags: no Check, no libcalloc headers or internals.
bench_calloc_bench_CPPFLAGS =
bench_calloc_bench_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
bench_calloc_bench_LDFLAGS = $(PTHREAD_CFLAGS)
bench_calloc_bench_LDADD = $(PTHREAD_LIBS)

# make bench [BENCH_ARGS=...]: runs scripts/bench-compare from the top build
# directory.  It gets, in its environment, the paths of the benchmark program
# (CALLOC_BENCH) and of the freshly built libcalloc.so (LIBCALLOC_SO), plus
# top_srcdir and top_builddir (absolute); BENCH_ARGS are passed as arguments.
bench: bench/calloc-bench$(EXEEXT) src/libcalloc.la
	$(AM_V_at)if test ! -f '$(top_srcdir)/scripts/bench-compare'; then \
	  echo "bench: $(top_srcdir)/scripts/bench-compare does not exist yet" >&2; \
	  exit 1; \
	fi
	CALLOC_BENCH='$(abs_top_builddir)/bench/calloc-bench$(EXEEXT)' \
	LIBCALLOC_SO='$(abs_top_builddir)/src/.libs/libcalloc.so' \
	top_srcdir='$(abs_top_srcdir)' top_builddir='$(abs_top_builddir)' \
	  '$(abs_top_srcdir)/scripts/bench-compare' $(BENCH_ARGS)
.PHONY: bench
CLEANFILES += bench-results.csv

# calloc-workloads: the real-world allocation patterns of issue 3 (database, web
# server, game engine, ML training, producer/consumer, fragmentation churn), also
# only plain malloc/free/realloc; scripts/bench-workloads runs the matrix.
noinst_PROGRAMS += bench/calloc-workloads
bench_calloc_workloads_SOURCES = bench/workloads.c++ bench/allocation_benchmark.h++
bench_calloc_workloads_CPPFLAGS =
bench_calloc_workloads_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
bench_calloc_workloads_LDFLAGS = $(PTHREAD_CFLAGS)
bench_calloc_workloads_LDADD = $(PTHREAD_LIBS)
EXTRA_DIST += bench/README.md

# make bench-workloads [BENCH_ARGS=...]: scripts/bench-workloads with the build's
# paths (CALLOC_WORKLOADS, LIBCALLOC_SO); results in bench-workloads/.
bench-workloads: bench/calloc-workloads$(EXEEXT) src/libcalloc.la
	CALLOC_WORKLOADS='$(abs_top_builddir)/bench/calloc-workloads$(EXEEXT)' \
	LIBCALLOC_SO='$(abs_top_builddir)/src/.libs/libcalloc.so' \
	top_srcdir='$(abs_top_srcdir)' top_builddir='$(abs_top_builddir)' \
	  '$(abs_top_srcdir)/scripts/bench-workloads' $(BENCH_ARGS)
.PHONY: bench-workloads
clean-local: clean-bench-workloads
clean-bench-workloads:
	-rm -rf bench-workloads
.PHONY: clean-bench-workloads

# bench/huge-bench: the request's HugePageVsNormalPage (4 KiB pages vs transparent
# vs hugetlb huge pages: fault-in time and random reads over 1 GiB).  It links the
# core library to reach HugePageAllocator's internals (forcing the THP path).
noinst_PROGRAMS += bench/huge-bench
bench_huge_bench_SOURCES = bench/huge-bench.c++
bench_huge_bench_CPPFLAGS = -I$(top_builddir) -I$(top_srcdir)/include -I$(top_srcdir)/src
bench_huge_bench_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
bench_huge_bench_LDFLAGS = $(PTHREAD_CFLAGS)
bench_huge_bench_LDADD = src/libcalloc-core.la $(PTHREAD_LIBS)
CLEANFILES += huge-bench.csv

# bench/track-cost.sh: what allocation tracking (--enable-tracking) costs,
# compiled out / in but off / sampling / full / heaptrack (issue 14); run by hand.
EXTRA_DIST += bench/track-cost.sh
# bench/numa-bench (issue 15): local vs remote first touch and reads, migrate_to_node
# MB/s, process-heap locality with and without numa=1, and a labelled model of a
# two-socket server.  Run it on the host, or in a NUMA guest:
#   scripts/numa-vm --nodes 4 bench/numa-bench
noinst_PROGRAMS += bench/numa-bench
bench_numa_bench_SOURCES = bench/numa-bench.c++
bench_numa_bench_CPPFLAGS = -I$(top_builddir) -I$(top_srcdir)/include -I$(top_srcdir)/src
bench_numa_bench_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
bench_numa_bench_LDFLAGS = $(PTHREAD_CFLAGS)
bench_numa_bench_LDADD = src/libcalloc-core.la $(NUMA_LIBS) $(PTHREAD_LIBS)
# defrag-bench (issue 12): pass pauses under budgets, resolve and pin cost, mover
# throughput, and the RSS of a fragmented heap before and after a pass;
# bench/defrag-compare.sh runs the same pattern under each rival's LD_PRELOAD.
if CALLOC_DEFRAG
noinst_PROGRAMS += bench/defrag-bench
endif
bench_defrag_bench_SOURCES = bench/defrag-bench.c++
bench_defrag_bench_CPPFLAGS = -I$(top_srcdir)/include
bench_defrag_bench_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
bench_defrag_bench_LDFLAGS = -no-install $(PTHREAD_CFLAGS)
bench_defrag_bench_LDADD = src/libcalloc.la $(PTHREAD_LIBS)
EXTRA_DIST += bench/defrag-compare.sh
