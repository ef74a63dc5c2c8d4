#!/bin/sh
# tests/integration/man-pages.sh -- the man pages are well formed: lexgrog finds
# each one's NAME line (what mandb indexes, so `man -k` and whatis work; the pages
# turn hyphenation off, so the words checked below are whole) and
# `man -l --warnings` renders it without a warning from groff.  Each page must
# also name what it documents: libcalloc(3) every lca_* function of
# include/libcalloc.h and the malloc override, libcalloc(7) every option
# options.c++ parses, calloc-run(1) every option of calloc-run.
# Skips (77) with the reason when man-db is not installed.
#
# Environment (tests/local.mk): top_srcdir.
set -u
top_srcdir=${top_srcdir:-.}
man_dir=$top_srcdir/man

for tool in man lexgrog; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: '$tool' not found (Debian package man-db; scripts/install-deps installs it)"
    exit 77
  fi
done

failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}

for page in libcalloc.3 libcalloc.7 calloc-run.1; do
  f=$man_dir/$page
  test -f "$f" || { fail "$f is missing"; continue; }
  names=$(lexgrog "$f" 2>&1) || fail "lexgrog cannot parse $page: $names"
  echo "$names"
  warnings=$(MANWIDTH=80 man -l --warnings=all "$f" 2>&1 >/dev/null)
  test -z "$warnings" || fail "man -l $page warns: $warnings"
  text=$(MANWIDTH=200 man -l "$f" 2>/dev/null | col -b)
  test -n "$text" || fail "man -l $page renders nothing"
  case $page in
    libcalloc.3)
      for fn in $(sed -n 's/^LCA_EXPORT [^(]*[ *]\(lca_[a-z_]*\)(.*/\1/p' "$top_srcdir/include/libcalloc.h"); do
        echo "$text" | grep -q "$fn" || fail "libcalloc(3) does not mention $fn"
        echo "$names" | grep -q "$fn -" || fail "libcalloc(3) NAME does not list $fn"
      done
      # (blanks squeezed: man justifies its lines with runs of spaces and tabs)
      for word in malloc_usable_size 'operator new' LD_PRELOAD LIBCALLOC_OPTIONS 'Double free' mallinfo2 malloc_trim; do
        echo "$text" | tr -s ' \t' '  ' | grep -q "$word" || fail "libcalloc(3) does not mention $word"
      done
      # Its C++ section names every exported class of the installed headers (it
      # named 3 of 8: no DefragmentationEngine, HandleAllocator, NUMAAllocator,
      # AllocationTracker; review 24).
      for class in $(sed -n 's/^class CUSTOM_ALLOC_EXPORT \([A-Za-z]*\).*/\1/p' "$top_srcdir"/include/custom_alloc/*.h++ | sort -u); do
        echo "$text" | grep -q "$class" || fail "libcalloc(3) does not mention the C++ class $class"
      done ;;
    libcalloc.7)
      for opt in $(grep -o 'key_is("[a-z_]*")' "$top_srcdir/src/options.c++" | sed 's/key_is("\(.*\)")/\1/' | sort -u); do
        echo "$text" | grep -q "$opt" || fail "libcalloc(7) does not document the option $opt"
      done ;;
    calloc-run.1)
      for opt in $(sed -n 's/^ *\(--[a-z]*\)[)| =*].*/\1/p' "$top_srcdir/scripts/calloc-run.in" | sort -u); do
        echo "$text" | grep -q -- "$opt" || fail "calloc-run(1) does not document $opt"
      done ;;
  esac
done
test "$failed" -eq 0 && echo "man pages: 3 checked"
exit "$failed"
