#!/bin/sh
# tests/integration/track-debuginfo.sh -- leak reports read debug information
# that distributions strip into separate files (issue 14: "file:line where
# debug info exists"), under LD_PRELOAD of libcalloc.so with leak_report:
#   - a copy of tests/track/track-demo stripped of every symbol and line table
#     (objcopy --strip-all) that names its debug file with .gnu_debuglink: the
#     leak's frame is named (demo::leak_some_memory, from the debug file's
#     .symtab) with its file:line, the debug file next to the program and
#     zlib-compressed (SHF_COMPRESSED), then uncompressed in .debug/;
#   - a debug file whose CRC does not match is not read (no file:line, no crash);
#   - libc's frames get file:line from /usr/lib/debug/.build-id/ when the
#     distribution's debug package (Debian libc6-dbg) is installed; that part
#     skips, saying so, when it is not;
#   - a small program built with zstd-compressed debug sections (g++ -gz=zstd,
#     else the linker's --compress-debug-sections=zstd): its leak gets file:line
#     when libcalloc was built with zstd.h (CALLOC_TRACK_ZSTD), else the report
#     says that module's line table is compressed with zstd and not readable;
#     that part skips, saying why, when neither the compiler nor the linker can.
# Exits 77 when libcalloc.so, the override, tracking or objcopy is missing.

set -u
name=track-debuginfo
. "$(dirname "$0")/track-common.sh"
status=0

fail() {
  echo "FAIL: $*"
  status=1
}
if ! command -v objcopy >/dev/null 2>&1; then
  echo "SKIP: objcopy (binutils) is not installed"
  exit 77
fi
line=$(grep -n 'void\* p = std::malloc(n);' "$top_srcdir/tests/track/track-demo.c++" | head -n 1 | cut -d: -f1)
# (Any offset: the call's return address is +0x9 at -O2, more at -O0.)
want="demo::leak_some_memory(unsigned long)+0x... at track-demo.c++:$line"
want_re="demo::leak_some_memory\(unsigned long\)\+0x[0-9a-f]+ at track-demo\.c\+\+:$line\b"

# leak DEMO WHAT: runs DEMO leak with leak_report, the report in $tmp/err
leak() {
  if ! env LD_PRELOAD="$so" LIBCALLOC_OPTIONS=leak_report=1 "$1" leak 2>"$tmp/err"; then
    fail "$2: $1 leak failed:"
    cat "$tmp/err"
  fi
  grep -q "leak summary: 4242 bytes in 1 block" "$tmp/err" || fail "$2: no leak summary"
}

mkdir "$tmp/bin" "$tmp/bin/.debug" || exit 1
objcopy --only-keep-debug "$demo" "$tmp/demo.debug" || exit 1
objcopy --strip-all --add-gnu-debuglink="$tmp/demo.debug" "$demo" "$tmp/bin/demo" || exit 1
chmod +x "$tmp/bin/demo"

# 0. Stripped and no debug file: no name, no line.
leak "$tmp/bin/demo" "stripped"
grep -q "leak_some_memory" "$tmp/err" && fail "stripped: a name without a symbol table: $(grep leak_some "$tmp/err")"

# 1. Next to it, compressed (a program of its own: the link records the CRC
# of the compressed file).
mkdir "$tmp/zbin" || exit 1
if objcopy --compress-debug-sections=zlib "$tmp/demo.debug" "$tmp/zbin/demo.debug" 2>/dev/null &&
  readelf -SW "$tmp/zbin/demo.debug" 2>/dev/null | grep -q '\.debug_line .* C '; then
  objcopy --strip-all --add-gnu-debuglink="$tmp/zbin/demo.debug" "$demo" "$tmp/zbin/demo" || exit 1
  chmod +x "$tmp/zbin/demo"
  leak "$tmp/zbin/demo" "compressed debug file"
  grep -qE "$want_re" "$tmp/err" || { fail "compressed debug file: \"$want\" not in:"; cat "$tmp/err"; }
else
  echo "objcopy cannot compress debug sections with zlib: the compressed case skipped"
fi

# 2. In .debug/, uncompressed.
rm -f "$tmp/bin/demo.debug"
cp "$tmp/demo.debug" "$tmp/bin/.debug/demo.debug"
leak "$tmp/bin/demo" "debug file in .debug/"
grep -qE "$want_re" "$tmp/err" || { fail "debug file in .debug/: \"$want\" not in:"; cat "$tmp/err"; }

# 3. A debug file with another CRC is not read.
printf x >>"$tmp/bin/.debug/demo.debug"
leak "$tmp/bin/demo" "wrong CRC"
grep -q "track-demo.c++:" "$tmp/err" && fail "wrong CRC: the debug file was read: $(grep track-demo.c++ "$tmp/err")"

# 4. libc's own debug file, by build ID.
id=$(readelf -n /lib/x86_64-linux-gnu/libc.so.6 2>/dev/null | sed -n 's/.*Build ID: *\([0-9a-f]*\).*/\1/p')
rest=${id#??}
if test -n "$id" && test -f "/usr/lib/debug/.build-id/${id%"$rest"}/$rest.debug"; then
  leak "$demo" "libc by build ID"
  grep -q "__libc_start_main+0x[0-9a-f]* at libc-start.c:[0-9]" "$tmp/err" ||
    { fail "libc by build ID: no file:line for __libc_start_main:"; cat "$tmp/err"; }
else
  echo "SKIP (part): libc's separate debug file is not installed (Debian: libc6-dbg)"
fi
# 5. zstd-compressed debug sections in the program itself.
make_var() { sed -n "s/^$1 = //p" "$top_builddir/Makefile" | head -n 1; }
cxx=$(make_var CXX)
test -n "$cxx" || cxx=c++
cat >"$tmp/zleak.c++" <<'EOF'
#include <cstdlib>
#include <map>
#include <string>
#include <vector>
namespace zdemo {
__attribute__((noinline)) void* leak_here(std::size_t n) {
  void* p = std::malloc(n);  // zleak: the leak
  return p;
}
std::size_t pad() {  // line-table rows enough for the linker to compress them
  std::map<std::string, std::vector<int>> m;
  for (int i = 0; i < 10; ++i) m[std::to_string(i)].push_back(i);
  std::size_t t = 0;
  for (auto& [k, v] : m) t += k.size() + v.size();
  return t;
}
}  // namespace zdemo
int main() {
  void* volatile keep = zdemo::leak_here(4242 + zdemo::pad() * 0);
  (void)keep;
  return 0;
}
EOF
zstd_line() { readelf -tW "$1" 2>/dev/null | grep -A3 '\] \.debug_line$' | grep -q ZSTD; }
how=
if $cxx -g -O0 -gz=zstd "$tmp/zleak.c++" -o "$tmp/zleak" 2>/dev/null && zstd_line "$tmp/zleak"; then
  how="-gz=zstd"
elif $cxx -g -O0 "$tmp/zleak.c++" -o "$tmp/zleak" -Wl,--compress-debug-sections=zstd 2>/dev/null &&
  zstd_line "$tmp/zleak"; then
  how="-Wl,--compress-debug-sections=zstd"
fi
if test -z "$how"; then
  echo "SKIP (part): neither $cxx -gz=zstd nor the linker's --compress-debug-sections=zstd gives a zstd-compressed .debug_line"
else
  echo "zstd case: built with $how"
  zline=$(grep -n 'zleak: the leak' "$tmp/zleak.c++" | cut -d: -f1)
  if ! env LD_PRELOAD="$so" LIBCALLOC_OPTIONS=leak_report=1 "$tmp/zleak" 2>"$tmp/err"; then
    fail "zstd ($how): the program failed:"
    cat "$tmp/err"
  fi
  grep -q "leak summary: 4242 bytes in 1 block" "$tmp/err" || fail "zstd ($how): no leak summary"
  if grep -q '^#define CALLOC_TRACK_ZSTD 1' "$top_builddir/config.h"; then
    grep -q "leak_here.* at zleak.c++:$zline " "$tmp/err" ||
      { fail "zstd ($how): no zleak.c++:$zline for the leak:"; cat "$tmp/err"; }
  else
    grep -qF "note: $tmp/zleak: its line table is compressed with zstd, which this build cannot read" "$tmp/err" ||
      { fail "zstd ($how), built without zstd.h: no note saying so:"; cat "$tmp/err"; }
    grep -q "zleak.c++:" "$tmp/err" && fail "zstd ($how), built without zstd.h: a line was read: $(grep zleak.c++ "$tmp/err")"
  fi
fi
exit $status
