#!/bin/sh
# tests/integration/preload.sh -- real programs run on libcalloc via LD_PRELOAD.
#
# Each program runs twice, on glibc's malloc and with
# LD_PRELOAD=$top_builddir/src/.libs/libcalloc.so; both runs must exit 0 with
# identical output.  The timings of both runs are printed (information, not a
# pass/fail criterion).  The programs:
#   - python3 building a dict of 1 000 000 entries, deleting a third, sorting the rest
#     and printing a checksum;
#   - sort of a generated 50 MB file (the sha256 of both outputs are compared);
#   - git log --stat on a 50-commit repository created in a temporary directory.
# Sizes scale with CALLOC_TEST_SCALE (percent, default 100).  A missing program is
# skipped with a message; exit 77 when nothing could run.
#
# Environment (set by tests/local.mk): top_builddir, CALLOC_TEST_SCALE,
# CALLOC_OVERRIDE (1/0; read from config.h when unset).

set -u
. "$(dirname "$0")/preload-common.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/calloc-preload.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
scaled() { v=$(($1 * scale / 100)); test "$v" -ge 1 || v=1; echo "$v"; }

status=0
ran=0

# The preload must really take effect (ld.so only warns when it cannot load it).
maps=$(env LD_PRELOAD="$so" cat /proc/self/maps 2>"$tmp/maps.err")
case $maps in
  *libcalloc.so*) ;;
  *)
    echo "FAIL: LD_PRELOAD=$so does not load libcalloc into a program:"
    cat "$tmp/maps.err"
    exit 1
    ;;
esac

# run_pair NAME COMMAND...: runs COMMAND on glibc and on libcalloc, stdout into
# $tmp/NAME.glibc and $tmp/NAME.libcalloc; checks exit statuses and prints timings.
run_pair() {
  name=$1
  shift
  t0=$(now_ms)
  "$@" >"$tmp/$name.glibc" 2>"$tmp/$name.glibc.err"
  rc_glibc=$?
  t1=$(now_ms)
  env LD_PRELOAD="$so" "$@" >"$tmp/$name.libcalloc" 2>"$tmp/$name.libcalloc.err"
  rc_lib=$?
  t2=$(now_ms)
  ran=$((ran + 1))
  ms_glibc=$((t1 - t0))
  ms_lib=$((t2 - t1))
  echo "$name: glibc ${ms_glibc} ms, libcalloc ${ms_lib} ms"
  ok=1
  if test "$rc_glibc" != 0; then
    echo "FAIL: $name exited with $rc_glibc on glibc (test environment problem?); stderr:"
    tail -n 20 "$tmp/$name.glibc.err"
    ok=0
  fi
  if test "$rc_lib" != 0; then
    echo "FAIL: $name exited with $rc_lib under LD_PRELOAD=libcalloc.so; stderr:"
    tail -n 20 "$tmp/$name.libcalloc.err"
    ok=0
  elif test -s "$tmp/$name.libcalloc.err" && ! cmp -s "$tmp/$name.glibc.err" "$tmp/$name.libcalloc.err"; then
    echo "note: $name wrote on stderr under libcalloc:"
    tail -n 20 "$tmp/$name.libcalloc.err"
  fi
  test "$ok" = 1 || status=1
  return $((1 - ok))
}

# --- python3 ---------------------------------------------------------------------
python=/usr/bin/python3
test -x "$python" || python=$(command -v python3 2>/dev/null || true)
if test -z "$python"; then
  echo "SKIP (python3): python3 not found"
else
  cat >"$tmp/dict.py" <<'PY'
import hashlib
import sys

n = int(sys.argv[1])
d = {}
for i in range(n):
    k = "key-%010d" % ((i * 2654435761) % 4294967296)
    d[k] = (i, str(i * i), [i] * (i % 5))
for k in list(d)[::3]:
    del d[k]
items = sorted(d.items())
h = hashlib.sha256()
for k, v in items:
    h.update(k.encode())
    h.update(v[1].encode())
    h.update(bytes(len(v[2])))
print(len(items), h.hexdigest())
PY
  entries=$(scaled 1000000)
  if run_pair python3 "$python" "$tmp/dict.py" "$entries"; then
    if cmp -s "$tmp/python3.glibc" "$tmp/python3.libcalloc"; then
      echo "ok: python3 dict of $entries entries: $(cat "$tmp/python3.libcalloc")"
    else
      echo "FAIL: python3 printed different results: glibc '$(cat "$tmp/python3.glibc")', libcalloc '$(cat "$tmp/python3.libcalloc")'"
      status=1
    fi
  fi
fi

# --- sort ---------------------------------------------------------------------------
if ! command -v sort >/dev/null 2>&1 || ! command -v awk >/dev/null 2>&1 || ! command -v sha256sum >/dev/null 2>&1; then
  echo "SKIP (sort): sort, awk or sha256sum not found"
else
  bytes=$(scaled 52428800)
  awk -v limit="$bytes" 'BEGIN {
      srand(42); n = 0; i = 0
      while (n < limit) {
        l = sprintf("%09d %s %d", int(rand() * 999999999), substr("abcdefghijklmnopqrstuvwxyz", 1 + int(rand() * 26), 5), i++)
        print l; n += length(l) + 1
      }
    }' >"$tmp/input.txt"
  if run_pair sort env LC_ALL=C sort "$tmp/input.txt"; then
    sum_glibc=$(sha256sum <"$tmp/sort.glibc" | cut -d' ' -f1)
    sum_lib=$(sha256sum <"$tmp/sort.libcalloc" | cut -d' ' -f1)
    lines=$(wc -l <"$tmp/sort.libcalloc")
    if test "$sum_glibc" = "$sum_lib" && test "$lines" -gt 0; then
      echo "ok: sort of $(wc -c <"$tmp/input.txt") bytes ($lines lines): sha256 $sum_lib"
    else
      echo "FAIL: sort outputs differ: glibc sha256 $sum_glibc, libcalloc sha256 $sum_lib ($lines lines)"
      status=1
    fi
  fi
  rm -f "$tmp/input.txt" "$tmp/sort.glibc" "$tmp/sort.libcalloc"
fi

# --- git log --stat -------------------------------------------------------------------
if ! command -v git >/dev/null 2>&1; then
  echo "SKIP (git): git not found"
else
  repo=$tmp/repo
  mkdir "$repo"
  # an isolated git: no user or system configuration
  HOME=$tmp GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=calloc GIT_AUTHOR_EMAIL=calloc@example.org \
  GIT_COMMITTER_NAME=calloc GIT_COMMITTER_EMAIL=calloc@example.org
  export HOME GIT_CONFIG_NOSYSTEM GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL
  if git -C "$repo" init -q >"$tmp/git-init.log" 2>&1; then
    i=1
    made=0
    while test $i -le 50; do
      f=file$((i % 7)).txt
      seq $((i * 10)) $((i * 10 + i)) >>"$repo/$f"
      echo "commit $i" >"$repo/last.txt"
      if test $((i % 10)) = 0; then rm -f "$repo/file$((i % 3)).txt"; fi
      GIT_AUTHOR_DATE="2024-01-01T00:00:$((i % 60))Z" GIT_COMMITTER_DATE="2024-01-01T00:00:$((i % 60))Z" \
        git -C "$repo" add -A >>"$tmp/git-init.log" 2>&1 &&
        GIT_AUTHOR_DATE="2024-01-01T00:00:$((i % 60))Z" GIT_COMMITTER_DATE="2024-01-01T00:00:$((i % 60))Z" \
          git -C "$repo" commit -q -m "commit $i" >>"$tmp/git-init.log" 2>&1 && made=$((made + 1))
      i=$((i + 1))
    done
    if test "$made" != 50; then
      echo "FAIL: could not create the test repository ($made of 50 commits):"
      tail -n 20 "$tmp/git-init.log"
      status=1
    elif run_pair git git -C "$repo" --no-pager -c color.ui=false log --stat; then
      if cmp -s "$tmp/git.glibc" "$tmp/git.libcalloc" && test -s "$tmp/git.libcalloc"; then
        echo "ok: git log --stat of 50 commits: $(wc -l <"$tmp/git.libcalloc") identical lines"
      else
        echo "FAIL: git log --stat output differs:"
        diff "$tmp/git.glibc" "$tmp/git.libcalloc" | head -n 20
        status=1
      fi
    fi
  else
    echo "SKIP (git): git init failed:"
    cat "$tmp/git-init.log"
  fi
fi

if test "$ran" = 0 && test "$status" = 0; then
  echo "SKIP: none of python3, sort, git could run"
  exit 77
fi
exit $status
