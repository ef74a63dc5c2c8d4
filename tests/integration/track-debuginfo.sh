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
#     skips, saying so, when it is not.
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
want="demo::leak_some_memory(unsigned long)+0x9 at track-demo.c++:$line"

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
  grep -qF "$want" "$tmp/err" || { fail "compressed debug file: \"$want\" not in:"; cat "$tmp/err"; }
else
  echo "objcopy cannot compress debug sections with zlib: the compressed case skipped"
fi

# 2. In .debug/, uncompressed.
rm -f "$tmp/bin/demo.debug"
cp "$tmp/demo.debug" "$tmp/bin/.debug/demo.debug"
leak "$tmp/bin/demo" "debug file in .debug/"
grep -qF "$want" "$tmp/err" || { fail "debug file in .debug/: \"$want\" not in:"; cat "$tmp/err"; }

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
exit $status
