# tests/local.mk -- the test suites (included by Makefile.am).
#
# make check            unit suites, integration scripts and the short stress tests
# make check-stress     the stress tests again, at CALLOC_TEST_SCALE=1000 (soak)
# make check-valgrind   the unit suites under memcheck and helgrind (drd on demand), scale 5
# make check-asan       (check-ubsan, check-asan-ubsan, check-tsan, check-sanitizers)
#                       a sanitizer build of its own and its tests: scripts/check-sanitizers
#
# Unit suites are Check programs that print TAP on stdout (their main calls
# srunner_set_tap(sr, "-")), read by automake's tap-driver.sh: every Check test is
# one PASS/FAIL line, and a nonzero exit status or a crash is an ERROR.  The
# integration checks are shell scripts run by the plain test-driver: exit 0 passes,
# 77 skips, anything else fails.  tests/README.md has the conventions.

# One Check program per suite: tests/unit/NAME from tests/unit/NAME.c++.
calloc_unit_tests = \
	tests/unit/core \
	tests/unit/realloc \
	tests/unit/alignment \
	tests/unit/capi \
	tests/unit/threads \
	tests/unit/errors \
	tests/unit/huge \
	tests/unit/asan \
	tests/unit/fork
# NUMA (issue 15): also run in multi-node QEMU guests by make check-numa-vm.
calloc_unit_tests += tests/unit/numa
tests_unit_numa_SOURCES = tests/unit/numa.c++ tests/test-util.h++
tests_unit_numa_LDADD = $(LDADD) $(NUMA_LIBS)

tests_unit_core_SOURCES = tests/unit/core.c++ tests/test-util.h++
tests_unit_realloc_SOURCES = tests/unit/realloc.c++ tests/test-util.h++
tests_unit_alignment_SOURCES = tests/unit/alignment.c++ tests/test-util.h++
tests_unit_capi_SOURCES = tests/unit/capi.c++ tests/test-util.h++
tests_unit_threads_SOURCES = tests/unit/threads.c++ tests/test-util.h++
tests_unit_errors_SOURCES = tests/unit/errors.c++ tests/test-util.h++
tests_unit_huge_SOURCES = tests/unit/huge.c++ tests/test-util.h++
tests_unit_asan_SOURCES = tests/unit/asan.c++ tests/test-util.h++
tests_unit_fork_SOURCES = tests/unit/fork.c++ tests/test-util.h++
# SecureAllocator and the hardened heap (issue 13).
calloc_unit_tests += tests/unit/secure
tests_unit_secure_SOURCES = tests/unit/secure.c++ tests/test-util.h++

# Allocation tracking (issue 14): --enable-tracking builds only.
if CALLOC_TRACKING
calloc_unit_tests += tests/unit/track
tests_unit_track_SOURCES = tests/unit/track.c++ tests/test-util.h++
tests_unit_track_CPPFLAGS = $(AM_CPPFLAGS) $(LIBUNWIND_CFLAGS)
# The program tests/integration/track*.sh run under LD_PRELOAD (no libcalloc).
check_PROGRAMS += tests/track/track-demo
tests_track_track_demo_SOURCES = tests/track/track-demo.c++
tests_track_track_demo_CPPFLAGS =
tests_track_track_demo_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
tests_track_track_demo_LDFLAGS = -no-install $(PTHREAD_CFLAGS)
tests_track_track_demo_LDADD = $(PTHREAD_LIBS) -ldl
# The shared object track-demo dlopens (a libtool module, never installed).
check_LTLIBRARIES = tests/track/libtrackplugin.la
tests_track_libtrackplugin_la_SOURCES = tests/track/plugin.c++
tests_track_libtrackplugin_la_CPPFLAGS =
tests_track_libtrackplugin_la_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS)
tests_track_libtrackplugin_la_LDFLAGS = -module -avoid-version -rpath /nowhere
# A shared object whose constructor tail-calls malloc and leaks (x86-64).
check_LTLIBRARIES += tests/track/libtrackctortail.la
tests_track_libtrackctortail_la_SOURCES = tests/track/ctor-tail.c++
tests_track_libtrackctortail_la_CPPFLAGS =
tests_track_libtrackctortail_la_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS)
tests_track_libtrackctortail_la_LDFLAGS = -module -avoid-version -rpath /nowhere
# The shared object track-demo dlclose-reload loads where libtrackplugin.so lay.
check_LTLIBRARIES += tests/track/libtrackother.la
tests_track_libtrackother_la_SOURCES = tests/track/other.c++
tests_track_libtrackother_la_CPPFLAGS =
tests_track_libtrackother_la_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS)
tests_track_libtrackother_la_LDFLAGS = -module -avoid-version -rpath /nowhere
# The shared object tests/unit/track dlopens to hold the loader's lock in a
# constructor (the profile signal's dump tests).
check_LTLIBRARIES += tests/track/libtrackctor.la
tests_track_libtrackctor_la_SOURCES = tests/track/ctor.c++
tests_track_libtrackctor_la_CPPFLAGS =
tests_track_libtrackctor_la_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS)
tests_track_libtrackctor_la_LDFLAGS = -module -avoid-version -rpath /nowhere
# A shared object whose constructor leaks (the dlopen leak reports' tests):
# its leak is the program's, the loader's records of it are not.
check_LTLIBRARIES += tests/track/libtrackctorleak.la
tests_track_libtrackctorleak_la_SOURCES = tests/track/ctor-leak.c++
tests_track_libtrackctorleak_la_CPPFLAGS =
tests_track_libtrackctorleak_la_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS)
tests_track_libtrackctorleak_la_LDFLAGS = -module -avoid-version -rpath /nowhere
endif
EXTRA_DIST += tests/unit/track.c++ tests/integration/track.sh tests/integration/track-pprof.sh
EXTRA_DIST += tests/integration/track-rss.sh
# Stack capture (src/track-unwind.c++): our walker against libunwind's unw_step
# on frames of every shape, in the program and in objects it dlopens.
if CALLOC_TRACKING
calloc_unit_tests += tests/unit/track-unwind
tests_unit_track_unwind_SOURCES = tests/unit/track-unwind.c++ tests/test-util.h++
check_LTLIBRARIES += tests/track/libunwindshape-fp.la tests/track/libunwindshape-nofp.la
check_LTLIBRARIES += tests/track/libunwindshape-big1.la tests/track/libunwindshape-big2.la
check_LTLIBRARIES += tests/track/libunwindshape-nobid.la
unwindshape_ldflags = -module -avoid-version -rpath /nowhere
tests_track_libunwindshape_fp_la_SOURCES = tests/track/unwind-shapes.c++
tests_track_libunwindshape_fp_la_CPPFLAGS =
tests_track_libunwindshape_fp_la_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) -O2 -g -fno-omit-frame-pointer
tests_track_libunwindshape_fp_la_LDFLAGS = $(unwindshape_ldflags)
tests_track_libunwindshape_nofp_la_SOURCES = tests/track/unwind-shapes.c++
tests_track_libunwindshape_nofp_la_CPPFLAGS =
tests_track_libunwindshape_nofp_la_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) -O2 -g -fomit-frame-pointer
tests_track_libunwindshape_nofp_la_LDFLAGS = $(unwindshape_ldflags)
tests_track_libunwindshape_big1_la_SOURCES = tests/track/unwind-shapes.c++
tests_track_libunwindshape_big1_la_CPPFLAGS = -DSHAPE_BUF=256
tests_track_libunwindshape_big1_la_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) -O2 -g -fomit-frame-pointer
tests_track_libunwindshape_big1_la_LDFLAGS = $(unwindshape_ldflags)
tests_track_libunwindshape_big2_la_SOURCES = tests/track/unwind-shapes.c++
tests_track_libunwindshape_big2_la_CPPFLAGS = -DSHAPE_BUF=1024
tests_track_libunwindshape_big2_la_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) -O2 -g -fomit-frame-pointer
tests_track_libunwindshape_big2_la_LDFLAGS = $(unwindshape_ldflags)
# No GNU build ID: our walker reads its tables in place, not from the file.
tests_track_libunwindshape_nobid_la_SOURCES = tests/track/unwind-shapes.c++
tests_track_libunwindshape_nobid_la_CPPFLAGS =
tests_track_libunwindshape_nobid_la_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) -O2 -g -fomit-frame-pointer
tests_track_libunwindshape_nobid_la_LDFLAGS = $(unwindshape_ldflags) -Wl,--build-id=none
endif
EXTRA_DIST += tests/unit/track-unwind.c++ tests/track/unwind-shapes.c++

# Smart pointers and standard-library adapters (issue 16).
calloc_unit_tests += tests/unit/memory
tests_unit_memory_SOURCES = tests/unit/memory.c++ tests/test-util.h++

# Defragmentation (--enable-defrag): DefragmentationEngine and HandleAllocator.
if CALLOC_DEFRAG
calloc_unit_tests += tests/unit/defrag
endif
tests_unit_defrag_SOURCES = tests/unit/defrag.c++ tests/test-util.h++

# Stress programs (tests/stress/NAME.c++, Check/TAP like the unit suites): short
# at the default scale, so `make check' runs them too; add each one here.
calloc_stress_tests =
# FullSystem.StressTestAllComponents (issue 16): 2 s in `make check', 60 s in
# `make check-stress' (CALLOC_STRESS_SECONDS).
calloc_stress_tests += tests/stress/full_system
tests_stress_full_system_SOURCES = tests/stress/full_system.c++ tests/test-util.h++

calloc_script_tests = tests/integration/symbols.sh
# Each public header alone with strict warnings (C and C++, g++ and clang++), and
# C++17's one clear error.
calloc_script_tests += tests/integration/headers.sh
EXTRA_DIST += tests/integration/headers.sh
if CALLOC_OVERRIDE
# LD_PRELOAD only means something when libcalloc.so provides malloc.
calloc_script_tests += tests/integration/preload.sh
# bench/calloc-workloads, every workload small, on libcalloc (verify OK, deterministic).
calloc_script_tests += tests/integration/workloads.sh
# scripts/bench-compare and scripts/bench-workloads run to their end on a tiny workload.
calloc_script_tests += tests/integration/bench-scripts.sh
# python3, sqlite3, g++, git, sort, gzip and redis-server under LD_PRELOAD, output
# compared with glibc's, times and peak RSS printed (issue 4; about 35 s).
calloc_script_tests += tests/integration/real-programs.sh
# Issue 11: fork() with stdio threads and from a signal handler, under LD_PRELOAD
# and `timeout' (a plain program: glibc's malloc unless preloaded).
calloc_script_tests += tests/integration/fork-deadlock.sh
check_PROGRAMS += tests/integration/fork-repro
tests_integration_fork_repro_SOURCES = tests/integration/fork-repro.c++
tests_integration_fork_repro_LDADD = $(PTHREAD_LIBS)
endif
# A user's bugs under memcheck (issue 4): tests/valgrind/buggy, linked with the
# shared libcalloc like a user's program (-no-install: a real binary, not a
# libtool wrapper script, so that valgrind runs the program itself).
calloc_script_tests += tests/integration/valgrind-user.sh
# A user's program built with -fsanitize=thread uses SecureAllocator and an
# independent heap (TSan intercepts libcalloc's mmap calls too).
calloc_script_tests += tests/integration/tsan-user.sh
EXTRA_DIST += tests/integration/tsan-user.sh
check_PROGRAMS += tests/valgrind/buggy
tests_valgrind_buggy_SOURCES = tests/valgrind/buggy.c++
tests_valgrind_buggy_CPPFLAGS = -I$(top_srcdir)/include -I$(top_builddir)
# Its bugs are deliberate: GCC sees some of them.
tests_valgrind_buggy_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS) \
	-Wno-use-after-free -Wno-free-nonheap-object -Wno-array-bounds -Wno-stringop-overflow \
	-Wno-maybe-uninitialized
tests_valgrind_buggy_LDFLAGS = -no-install
tests_valgrind_buggy_LDADD = src/libcalloc.la $(PTHREAD_LIBS)
# The secure build's malloc and new under LD_PRELOAD, one misuse per case (issue
# 13; skips unless --enable-secure).  The victim is a plain program, not linked
# with libcalloc: the preloaded library is its malloc.
if CALLOC_OVERRIDE
calloc_script_tests += tests/integration/secure-malloc.sh
endif
check_PROGRAMS += tests/integration/secure-victim
tests_integration_secure_victim_SOURCES = tests/integration/secure-victim.c++
tests_integration_secure_victim_CPPFLAGS =
tests_integration_secure_victim_CXXFLAGS = -O1 -g $(CALLOC_WARN_CXXFLAGS) \
	-Wno-use-after-free -Wno-free-nonheap-object -Wno-array-bounds -Wno-stringop-overflow \
	-Wno-mismatched-new-delete
tests_integration_secure_victim_LDFLAGS = -no-install
tests_integration_secure_victim_LDADD = -ldl
EXTRA_DIST += tests/integration/secure-malloc.sh

# Allocation tracking (issue 14): LD_PRELOAD programs with LIBCALLOC_OPTIONS=
# leak_report/profile/sample, python3, and google-pprof reading our heap profile.
if CALLOC_TRACKING
if CALLOC_OVERRIDE
calloc_script_tests += tests/integration/track.sh tests/integration/track-pprof.sh
calloc_script_tests += tests/integration/track-rss.sh
calloc_script_tests += tests/integration/track-debuginfo.sh
endif
endif
EXTRA_DIST += tests/integration/track-debuginfo.sh
EXTRA_DIST += tests/README.md tests/integration/symbols.sh tests/integration/preload.sh \
	tests/integration/valgrind-user.sh tests/integration/workloads.sh \
	tests/integration/real-programs.sh tests/integration/preload-common.sh tests/integration/track-common.sh \
	tests/integration/fork-deadlock.sh tests/integration/bench-scripts.sh

# Installed documentation and calloc-run (issue 16): the user guide's examples
# compile and run, the man pages are well formed and complete, calloc-run works.
calloc_script_tests += tests/integration/guide-examples.sh tests/integration/man-pages.sh \
	tests/integration/calloc-run.sh
check_SCRIPTS = calloc-run
EXTRA_DIST += tests/integration/guide-examples.sh tests/integration/man-pages.sh \
	tests/integration/calloc-run.sh

# calloc_valgrind_tests: what a `make check-valgrind*' run executes (see
# CALLOC_VALGRIND_RUN_RULES in configure.ac).
if HAVE_CHECK
check_PROGRAMS += $(calloc_unit_tests) $(calloc_stress_tests)
TESTS += $(calloc_unit_tests) $(calloc_stress_tests)
# The longest suites first: `make -j2 check-valgrind-*' (.ci/run) starts them
# in this order, so the short ones fill the other core at the end instead of a
# long one running alone.  Seconds each, two suites at a time on the 2-core
# machine (2026-12-07; DRD at CALLOC_TEST_SCALE=1, helgrind and memcheck at 5): threads
# 237 / 48 / 49, fork 195 / 24 / 38, defrag 88 / 54 / 60, realloc 6 / 77 / 14;
# every other suite under 50 with each tool.
# (calloc_valgrind_ordered, CALLOC_VALGRIND_RUN_RULES in configure.ac)
calloc_valgrind_first = tests/unit/threads tests/unit/fork tests/unit/defrag tests/unit/realloc
calloc_valgrind_tests = $(calloc_unit_tests)
else
calloc_valgrind_tests =
check_DATA += calloc-need-check
calloc-need-check:
	@echo "error: the unit tests need Check (>= 0.10), which configure did not find." >&2
	@echo "error: install it (scripts/install-deps; Debian package 'check') and run ./configure again." >&2
	@exit 1
endif
TESTS += $(calloc_script_tests)

# Defaults for every test program that does not say otherwise: the test programs
# link the convenience library statically, so with the override on libcalloc is
# the program's malloc and operator new, and internals are reachable.
AM_CPPFLAGS = \
	$(CHECK_CFLAGS) \
	-I$(top_srcdir)/include -I$(top_srcdir)/src -I$(top_builddir)
AM_CXXFLAGS = $(CALLOC_WARN_CXXFLAGS) $(PTHREAD_CFLAGS)
LDADD = src/libcalloc-core.la $(CHECK_LIBS) $(PTHREAD_CFLAGS) $(PTHREAD_LIBS)

# Binaries (no extension): TAP, through build-aux/tap-driver.sh (kept in git:
# automake does not install it).  Scripts (.sh): exit status, through automake's
# default SH_LOG_DRIVER, build-aux/test-driver (installed by automake).
LOG_DRIVER = env AM_TAP_AWK='$(AWK)' $(SHELL) $(top_srcdir)/build-aux/tap-driver.sh
# Show the suites' "# ..." diagnostic lines (skips, notes) in the console too.
AM_LOG_DRIVER_FLAGS = --comments
TEST_EXTENSIONS = .sh
SH_LOG_COMPILER = $(SHELL)

# CALLOC_TEST_SCALE: percentage applied by heavy tests to their loop counts; taken
# from the environment, else 100 (5 in a Valgrind run).  The scripts also get
# absolute top_builddir/top_srcdir, whether the malloc override is built and the
# sanitizers of the build (CALLOC_SANITIZERS: address, thread, undefined); a UBSan
# or TSan report fails the test unless UBSAN_OPTIONS / TSAN_OPTIONS say otherwise
# (TSan: with the suppressions of contrib/tsan.supp, none at present).
calloc_default_test_scale = 100
if CALLOC_VALGRIND
calloc_valgrind_built = 1
else
calloc_valgrind_built = 0
endif
if CALLOC_OVERRIDE
calloc_override_built = 1
else
calloc_override_built = 0
endif
AM_TESTS_ENVIRONMENT = \
	top_builddir='$(abs_top_builddir)'; export top_builddir; \
	top_srcdir='$(abs_top_srcdir)'; export top_srcdir; \
	CALLOC_TEST_SCALE=$${CALLOC_TEST_SCALE:-$(calloc_default_test_scale)}; \
	export CALLOC_TEST_SCALE; \
	CALLOC_OVERRIDE=$(calloc_override_built); export CALLOC_OVERRIDE; \
	CALLOC_VALGRIND_BUILT=$(calloc_valgrind_built); export CALLOC_VALGRIND_BUILT; \
	CALLOC_SANITIZERS='$(CALLOC_SANITIZERS)'; export CALLOC_SANITIZERS; \
	UBSAN_OPTIONS=$${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}; export UBSAN_OPTIONS; \
	TSAN_OPTIONS=$${TSAN_OPTIONS:-halt_on_error=1:history_size=7:suppressions=$(abs_top_srcdir)/contrib/tsan.supp}; \
	export TSAN_OPTIONS;

# make check-stress: the stress programs at a soak scale (CALLOC_TEST_SCALE from
# the environment, default 1000), results in test-suite-stress.log.
check-stress: all
	@if test -z '$(calloc_stress_tests)'; then \
	  echo "check-stress: no stress programs yet (calloc_stress_tests is empty)"; \
	else \
	  CALLOC_TEST_SCALE=$${CALLOC_TEST_SCALE:-1000}; export CALLOC_TEST_SCALE; \
	  CALLOC_STRESS_SECONDS=$${CALLOC_STRESS_SECONDS:-60}; export CALLOC_STRESS_SECONDS; \
	  $(MAKE) $(AM_MAKEFLAGS) check-TESTS \
	    TESTS='$(calloc_stress_tests)' TEST_SUITE_LOG=test-suite-stress.log; \
	fi
.PHONY: check-stress calloc-need-check
MOSTLYCLEANFILES = test-suite-stress.log

# make soak (issue 16; not in CI): tests/stress/soak, a multi-threaded random
# workload for CALLOC_SOAK_SECONDS (default 600) in CALLOC_SOAK_PHASES phases
# (default 10), the RSS back to its baseline after each.  Built by `make check'
# so that it keeps compiling.
check_PROGRAMS += tests/stress/soak
tests_stress_soak_SOURCES = tests/stress/soak.c++
tests_stress_soak_LDADD = src/libcalloc-core.la $(PTHREAD_CFLAGS) $(PTHREAD_LIBS)
soak: tests/stress/soak
	./tests/stress/soak
.PHONY: soak

# make check-asan, check-ubsan, check-asan-ubsan, check-tsan, check-sanitizers (all
# three): scripts/check-sanitizers, which configures a build of its own (out of
# tree, --disable-override, -fsanitize=...) and runs its tests.
check-asan check-ubsan check-asan-ubsan check-tsan:
	$(top_srcdir)/scripts/check-sanitizers $(@:check-%=%)
check-sanitizers:
	$(top_srcdir)/scripts/check-sanitizers all
.PHONY: check-asan check-ubsan check-asan-ubsan check-tsan check-sanitizers

# make check-numa-vm (issue 15): tests/unit/numa on real NUMA nodes, in QEMU
# guests with 2 and 4 nodes, and 4 with node 2 memory-less (scripts/numa-vm:
# Debian's kernel, fetched once with apt-get download into numa-vm/ or
# $NUMA_VM_CACHE; busybox-static; cpio), the TAP of each guest read by tap-driver.sh; results in test-suite-numa-vm.log.
calloc_numa_vm_tests = tests/numa-vm/nodes-2.numavm tests/numa-vm/nodes-4.numavm \
  tests/numa-vm/nodes-4-memoryless.numavm
TEST_EXTENSIONS += .numavm
NUMAVM_LOG_DRIVER = $(LOG_DRIVER)
NUMAVM_LOG_COMPILER = $(SHELL)
AM_NUMAVM_LOG_DRIVER_FLAGS = --comments
check-numa-vm: tests/unit/numa
	$(MAKE) $(AM_MAKEFLAGS) check-TESTS TESTS='$(calloc_numa_vm_tests)' TEST_SUITE_LOG=test-suite-numa-vm.log
.PHONY: check-numa-vm
MOSTLYCLEANFILES += test-suite-numa-vm.log
EXTRA_DIST += $(calloc_numa_vm_tests)

# make check-valgrind (memcheck and helgrind; drd when enabled), check-valgrind-memcheck, ...:
# AX_VALGRIND_CHECK (see VALGRIND.md).  The synonym makes Valgrind leave libcalloc's
# malloc in place instead of substituting its own.
@VALGRIND_CHECK_RULES@
@CALLOC_VALGRIND_RUN_RULES@
VALGRIND_FLAGS = \
	--num-callers=30 \
	--soname-synonyms=somalloc=nouserintercepts \
	--error-exitcode=1
VALGRIND_SUPPRESSIONS_FILES = $(top_srcdir)/contrib/libcalloc.supp
# Helgrind: fair scheduling, or a test thread that spins on sched_yield waiting
# for others can be handed the CPU back forever (seen in the threads suite).
VALGRIND_helgrind_FLAGS = --history-level=approx --fair-sched=yes
# Memcheck too: the fork suite's scenario processes (a thread spinning in a
# stdio or allocator loop while others wait for Valgrind's lock) ran past a
# 5-minute timeout in 2 runs of 3 without it, and in 35 s with it.
VALGRIND_memcheck_FLAGS = --fair-sched=yes
# DRD likewise: without fair scheduling the threads suite made no progress in
# 13 minutes; with it, 173 s at CALLOC_TEST_SCALE=1.
VALGRIND_drd_FLAGS = --fair-sched=yes

# make check-secure-memcheck (issue 13; CI runs it in the --enable-secure build,
# where malloc is the hardened heap, described to memcheck by src/secure_vg.c++):
# the unit suites under memcheck, in test-suite-memcheck.log.  All but alignment,
# whose blocks aligned to up to 64 MiB each carry megabytes of canary slack,
# filled and checked a byte at a time, and defrag, whose subject is the core heap
# (HandleAllocator; its memcheck run in the default build covers it): 6 minutes
# each under memcheck on the loaded 2-core machine, 10 for the rest together.
check-secure-memcheck:
	$(MAKE) $(AM_MAKEFLAGS) check-valgrind-memcheck \
	  TESTS='$(filter-out tests/unit/alignment tests/unit/defrag,$(calloc_valgrind_ordered))'
.PHONY: check-secure-memcheck

# No C++ runtime in C programs (issue 17): libcalloc.so's NEEDED, a C program's
# maps under LD_PRELOAD and linked, and operator new's failure behaviour in a
# C++ program and in a C++ plugin that a C program loads with RTLD_LOCAL.
# The programs are not linked with the convenience library (LDADD below).
calloc_script_tests += tests/integration/nostdcxx.sh
check_PROGRAMS += tests/integration/nostdcxx-c tests/integration/nostdcxx-linked \
	tests/integration/nostdcxx-cxx
tests_integration_nostdcxx_c_SOURCES = tests/integration/nostdcxx-c.c
tests_integration_nostdcxx_c_CPPFLAGS =
tests_integration_nostdcxx_c_LDADD = -ldl
tests_integration_nostdcxx_linked_SOURCES = tests/integration/nostdcxx-c.c
tests_integration_nostdcxx_linked_CPPFLAGS =
tests_integration_nostdcxx_linked_LDFLAGS = -no-install
tests_integration_nostdcxx_linked_LDADD = src/libcalloc.la -ldl
tests_integration_nostdcxx_cxx_SOURCES = tests/integration/nostdcxx-cxx.c++
tests_integration_nostdcxx_cxx_CPPFLAGS =
tests_integration_nostdcxx_cxx_LDADD =
# (check_LTLIBRARIES is first set under CALLOC_TRACKING above.)
if CALLOC_TRACKING
check_LTLIBRARIES += tests/integration/nostdcxx-plugin.la
else
check_LTLIBRARIES = tests/integration/nostdcxx-plugin.la
endif
tests_integration_nostdcxx_plugin_la_SOURCES = tests/integration/nostdcxx-cxx.c++
tests_integration_nostdcxx_plugin_la_CPPFLAGS = -DNOSTDCXX_PLUGIN
tests_integration_nostdcxx_plugin_la_LDFLAGS = -module -avoid-version -rpath /nowhere
EXTRA_DIST += tests/integration/nostdcxx.sh
# Medium blocks: the arena behind the heap's medium cache (issue 17).
calloc_unit_tests += tests/unit/arena
tests_unit_arena_SOURCES = tests/unit/arena.c++ tests/test-util.h++

# A small program's share of libcalloc.so (issue 17, src/placement.h++): the
# text segment 64 KiB-aligned and one fault-around window of it resident.
calloc_script_tests += tests/integration/small-rss.sh
check_PROGRAMS += tests/integration/small-rss
tests_integration_small_rss_SOURCES = tests/integration/small-rss.c
tests_integration_small_rss_CPPFLAGS =
tests_integration_small_rss_CFLAGS = $(PTHREAD_CFLAGS)
tests_integration_small_rss_LDADD = $(PTHREAD_CFLAGS) $(PTHREAD_LIBS)
check_LTLIBRARIES += tests/integration/small-rss-shim.la
tests_integration_small_rss_shim_la_SOURCES = tests/integration/small-rss-shim.c
tests_integration_small_rss_shim_la_CPPFLAGS =
tests_integration_small_rss_shim_la_LDFLAGS = -module -avoid-version -rpath /nowhere
EXTRA_DIST += tests/integration/small-rss.sh

# The libFuzzer harness and its seed corpus (scripts/fuzz; not run by make check).
EXTRA_DIST += tests/fuzz
