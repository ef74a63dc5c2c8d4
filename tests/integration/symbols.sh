#!/bin/sh
# tests/integration/symbols.sh -- libcalloc.so exports its public API and nothing else.
#
# The dynamic symbol table of src/.libs/libcalloc.so must hold:
#   - every lca_* function declared in include/libcalloc.h;
#   - the C++ API: custom_alloc::MemoryAllocator's members, its vtable and typeinfo,
#     SecureAllocator's and NUMAAllocator's, and those of the optional modules
#     that config.h says are built (defrag: DefragmentationEngine and
#     HandleAllocator; tracking: AllocationTracker);
#   - with the malloc override on (the default), the whole malloc family and every
#     operator new/delete; with --disable-override, none of them;
# and nothing else but the standard linker symbols (_init, _fini, _edata, _end,
# __bss_start) and symbol-version nodes.  A stray export (a std:: template
# instantiation, an internal helper that missed -fvisibility=hidden) fails the test.
#
# Environment (set by tests/local.mk): top_builddir, top_srcdir, CALLOC_OVERRIDE
# (1/0; read from config.h when unset).  Exit 0 pass, 1 fail, 77 skip.

set -u
top_builddir=${top_builddir:-.}
top_srcdir=${top_srcdir:-$top_builddir}
so=$top_builddir/src/.libs/libcalloc.so

if test ! -f "$so"; then
  echo "SKIP: $so was not built (static-only build?)"
  exit 77
fi
for tool in nm c++filt awk sort; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: '$tool' not found (binutils)"
    exit 77
  fi
done

override=${CALLOC_OVERRIDE:-}
if test -z "$override"; then
  if grep -q '^#define CALLOC_OVERRIDE 1' "$top_builddir/config.h" 2>/dev/null; then
    override=1
  else
    override=0
  fi
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/calloc-symbols.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

# "TYPE NAME" per defined dynamic symbol, version suffix (@VER, @@VER) removed.
if ! nm -D --defined-only "$so" >"$tmp/nm.out" 2>"$tmp/nm.err"; then
  echo "FAIL: nm -D --defined-only $so failed:"
  cat "$tmp/nm.err"
  exit 1
fi
awk 'NF >= 2 { name = $NF; sub(/@.*/, "", name); print $(NF-1), name }' "$tmp/nm.out" | sort -u >"$tmp/syms"
awk '{ print $2 }' "$tmp/syms" | sort -u >"$tmp/names"

malloc_family="malloc free calloc realloc reallocarray posix_memalign aligned_alloc memalign valloc pvalloc malloc_usable_size"
# C23 (issue 13): in every build with the override.
malloc_family="$malloc_family free_sized free_aligned_sized"
# glibc's introspection, describing libcalloc's heap (session 18; malloc_info review 25).
malloc_family="$malloc_family mallinfo mallinfo2 malloc_trim malloc_stats malloc_info"
# operator new/delete: plain, array, nothrow, sized, aligned, aligned nothrow, sized aligned
operators="_Znwm _Znam _ZdlPv _ZdaPv _ZdlPvm _ZdaPvm
_ZnwmRKSt9nothrow_t _ZnamRKSt9nothrow_t _ZdlPvRKSt9nothrow_t _ZdaPvRKSt9nothrow_t
_ZnwmSt11align_val_t _ZnamSt11align_val_t _ZnwmSt11align_val_tRKSt9nothrow_t _ZnamSt11align_val_tRKSt9nothrow_t
_ZdlPvSt11align_val_t _ZdaPvSt11align_val_t _ZdlPvmSt11align_val_t _ZdaPvmSt11align_val_t
_ZdlPvSt11align_val_tRKSt9nothrow_t _ZdaPvSt11align_val_tRKSt9nothrow_t"
standard="_init _fini _edata _end __bss_start"

# The lca_* functions of the public header.
header=$top_srcdir/include/libcalloc.h
if test -f "$header"; then
  lca_functions=$(grep -o 'lca_[a-z_0-9]*[ ]*(' "$header" | tr -d '( ' | sort -u)
else
  echo "note: $header not found, using the built-in list of lca_* functions"
  lca_functions="lca_malloc lca_calloc lca_realloc lca_reallocarray lca_free lca_aligned_alloc
lca_posix_memalign lca_memalign lca_usable_size lca_get_stats lca_print_stats lca_trim lca_version
lca_free_sized lca_free_aligned_sized"
fi

# The C++ API, demangled prefixes that must be present.
required_cxx="custom_alloc::MemoryAllocator::instance()
custom_alloc::MemoryAllocator::MemoryAllocator()
custom_alloc::MemoryAllocator::~MemoryAllocator()
custom_alloc::MemoryAllocator::allocate(
custom_alloc::MemoryAllocator::deallocate(
custom_alloc::MemoryAllocator::get_allocation_size(
custom_alloc::MemoryAllocator::reallocate(
custom_alloc::MemoryAllocator::try_realloc_inplace(
custom_alloc::MemoryAllocator::get_stats()
custom_alloc::MemoryAllocator::trim()
vtable for custom_alloc::MemoryAllocator
typeinfo for custom_alloc::MemoryAllocator
custom_alloc::SecureAllocator::SecureAllocator()
custom_alloc::SecureAllocator::allocate(
custom_alloc::SecureAllocator::deallocate(
vtable for custom_alloc::SecureAllocator
custom_alloc::NUMAAllocator::NUMAAllocator(
custom_alloc::NUMAAllocator::allocate_on_node(
custom_alloc::NUMAAllocator::migrate_to_node(
custom_alloc::NUMAAllocator::get_numa_stats(
custom_alloc::NUMAAllocator::get_current_node(
custom_alloc::NUMAAllocator::bind_memory_to_node("
# The optional modules' classes, when config.h says they are built.
defined_in_config() { grep -q "^#define $1 1" "$top_builddir/config.h" 2>/dev/null; }
if defined_in_config CALLOC_DEFRAG; then
  required_cxx="$required_cxx
custom_alloc::DefragmentationEngine::defragment(
custom_alloc::DefragmentationEngine::calculate_fragmentation(
custom_alloc::HandleAllocator::HandleAllocator(
custom_alloc::HandleAllocator::allocate_handle(
custom_alloc::HandleAllocator::deallocate_handle(
custom_alloc::HandleAllocator::resolve(
custom_alloc::HandleAllocator::pin(
custom_alloc::HandleAllocator::defragment("
fi
if defined_in_config CALLOC_TRACKING; then
  required_cxx="$required_cxx
custom_alloc::AllocationTracker::track_allocation(
custom_alloc::AllocationTracker::track_deallocation(
custom_alloc::AllocationTracker::get_leaks(
custom_alloc::AllocationTracker::generate_profile("
fi

status=0
fail() {
  echo "FAIL: $*"
  status=1
}
has() { grep -qx -- "$1" "$tmp/names"; }

for f in $lca_functions; do
  has "$f" || fail "$f (include/libcalloc.h) is not exported"
done

if test "$override" = 1; then
  echo "malloc override: on -- the malloc family and operator new/delete must be exported"
  for f in $malloc_family $operators; do
    has "$f" || fail "$f is not exported (override on)"
  done
else
  echo "malloc override: off -- the malloc family and operator new/delete must not be exported"
  for f in $malloc_family $operators; do
    has "$f" && fail "$f is exported although the override is disabled"
  done
fi

# Demangle every name (one per line, same order) to classify the C++ ones.
c++filt <"$tmp/names" >"$tmp/demangled"
paste -d '\t' "$tmp/names" "$tmp/demangled" >"$tmp/pairs"

echo "$required_cxx" | while IFS= read -r want; do
  if ! awk -F '\t' -v w="$want" 'index($2, w) == 1 { found = 1 } END { exit !found }' "$tmp/pairs"; then
    echo "FAIL: no exported symbol for $want"
    echo x >>"$tmp/cxx-missing"
  fi
done
test -f "$tmp/cxx-missing" && status=1

# Everything else is a stray export.
allowed=$tmp/allowed
: >"$allowed"
for f in $lca_functions $standard; do echo "$f" >>"$allowed"; done
if test "$override" = 1; then
  for f in $malloc_family $operators; do echo "$f" >>"$allowed"; done
fi
extra=0
while IFS="$(printf '\t')" read -r name demangled; do
  grep -qx -- "$name" "$allowed" && continue
  case $demangled in
    custom_alloc::* | "vtable for custom_alloc::"* | "typeinfo for custom_alloc::"* | \
    "typeinfo name for custom_alloc::"* | "non-virtual thunk to custom_alloc::"* | \
    "virtual thunk to custom_alloc::"*)
      continue ;;
  esac
  # symbol-version nodes (type A, value 0) are linker bookkeeping
  if grep -q "^A $name\$" "$tmp/syms"; then continue; fi
  if test "$extra" = 0; then echo "FAIL: exported symbols outside the public API:"; fi
  extra=$((extra + 1))
  echo "  $name   ($demangled)"
done <"$tmp/pairs"
test "$extra" -gt 0 && status=1

total=$(wc -l <"$tmp/names")
if test "$status" = 0; then
  echo "PASS: $total dynamic symbols, all of them public API or standard"
else
  echo "the full list of $total exported symbols:"
  sed 's/^/  /' "$tmp/pairs"
fi
exit $status
