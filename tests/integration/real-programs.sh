#!/bin/sh
# tests/integration/real-programs.sh -- real Debian programs under LD_PRELOAD of
# libcalloc, compared with the same runs on glibc's malloc (issue 4).
#
# Every program runs twice on the same generated input: on glibc's malloc and
# with LD_PRELOAD=$top_builddir/src/.libs/libcalloc.so.  Both runs must exit 0
# (no crash, no hang: each run is limited to CALLOC_REAL_TIMEOUT seconds, 150 by
# default) and produce the same deterministic output.  One line per program
# gives the wall time and the peak RSS (/usr/bin/time -f '%e %M': the largest
# process of the run) of both runs; these figures are information, not a
# pass/fail criterion.  The programs:
#   python3          PYTHONMALLOC=malloc (every object through malloc; preload.sh
#                    covers the default pymalloc): a dict of 300 000 entries, a
#                    third deleted, the rest sorted and hashed;
#   python3-threads  PYTHONMALLOC=malloc, 4 producer and 4 consumer threads (more
#                    threads than cores) exchanging 160 000 objects of mixed
#                    sizes through a queue.Queue, consumers dropping them in
#                    batches (frees of other threads' blocks); order-independent
#                    checksum;
#   sqlite3          the CLI loading 200 000 generated rows (plus 10 000 in a
#                    second table) from a SQL file, indexes, joins, aggregates,
#                    ORDER BY, window functions, UPDATE/DELETE, integrity_check,
#                    VACUUM and .sha3sum of the database;
#   g++              gcc/g++ -O2 compiling three generated C++ files (std::map,
#                    std::string, templates) and a C file, and linking them: the
#                    objects' `objdump -d' and `nm' and the program's output;
#   git              fast-import of a generated 400-commit history, log --stat,
#                    log -p, blame, gc with 4 pack threads, fsck, the object list;
#   sort             LC_ALL=C sort of a generated 40 MB file (sha256 compared);
#   gzip             gzip -6 then gunzip of the sorted file (sha256 of both);
#   redis-server     the server preloaded, on 127.0.0.1 and a random free port,
#                    in a temporary directory, no persistence: 30 000 scripted
#                    commands (strings, lists, hashes, sorted sets, sets, large
#                    values, UNLINK freed by the lazy-free thread) through
#                    redis-cli --pipe, then DEBUG DIGEST and reads, then
#                    redis-benchmark -n 20000 -t set,get,lpush,lpop -P 16 (its
#                    requests/s are printed, not compared), FLUSHALL ASYNC,
#                    SHUTDOWN.  Debian's redis-server links jemalloc: its glibc
#                    run preloads libc.so.6 so that malloc is glibc's there too.
# Sizes scale with CALLOC_TEST_SCALE (percent, default 100; the compile does
# not).  A missing program is skipped with a message; exit 77 when nothing
# could run, 1 on any difference, crash or hang.
#
# Environment (set by tests/local.mk): top_builddir, CALLOC_TEST_SCALE,
# CALLOC_OVERRIDE (1/0; read from config.h when unset).  Run it alone with
#   make check TESTS=tests/integration/real-programs.sh

set -u
. "$(dirname "$0")/preload-common.sh"
limit=${CALLOC_REAL_TIMEOUT:-150}
case $limit in '' | *[!0-9]*) limit=150 ;; esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/calloc-real.XXXXXX") || exit 1
# Servers still running when the script ends (failure, signal): their pids.
server_pids=
cleanup() {
  for p in $server_pids; do
    for c in $(cat "/proc/$p/task/$p/children" 2>/dev/null); do kill -9 "$c" 2>/dev/null; done
    kill -9 "$p" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

scaled() { v=$(($1 * scale / 100)); test "$v" -ge 1 || v=1; echo "$v"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
have() { command -v "$1" >/dev/null 2>&1; }

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

timer=/usr/bin/time
if test ! -x "$timer"; then
  timer=
  echo "note: /usr/bin/time not found (Debian package time): wall times measured by the script, no peak RSS"
fi
have timeout || { echo "FAIL: timeout (coreutils) not found"; exit 1; }

# run_one NAME ALLOC PRELOAD COMMAND...: runs COMMAND with LD_PRELOAD=PRELOAD
# (unset when empty) under /usr/bin/time and timeout, stdin from /dev/null,
# stdout into $tmp/NAME.ALLOC.out, stderr into .err, "seconds KiB" into .time;
# sets rc.
run_one() {
  ro_name=$1 ro_alloc=$2 ro_pre=$3
  shift 3
  ro_base=$tmp/$ro_name.$ro_alloc
  if test -n "$ro_pre"; then
    set -- env LD_PRELOAD="$ro_pre" "$@"
  else
    set -- env -u LD_PRELOAD "$@"
  fi
  if test -n "$timer"; then
    "$timer" -q -f '%e %M' -o "$ro_base.time" timeout "$limit" "$@" \
      </dev/null >"$ro_base.out" 2>"$ro_base.err"
    rc=$?
  else
    ro_t0=$(now_ms)
    timeout "$limit" "$@" </dev/null >"$ro_base.out" 2>"$ro_base.err"
    rc=$?
    ro_t1=$(now_ms)
    echo "$((ro_t1 - ro_t0)) ?" | awk '{ printf "%.2f ?\n", $1 / 1000 }' >"$ro_base.time"
  fi
}

# explain_rc NAME ALLOC RC: why a run failed, and its stderr.
explain_rc() {
  case $3 in
    124) why="timed out after $limit s (hang?)" ;;
    13[0-9] | 1[4-9][0-9] | 2[0-5][0-9]) why="killed by signal $(($3 - 128)) (crash?)" ;;
    *) why="exited with status $3" ;;
  esac
  if test "$2" = glibc; then
    echo "FAIL ($1): $why on glibc (test environment problem?); stderr:"
  else
    echo "FAIL ($1): $why under LD_PRELOAD=libcalloc.so; stderr:"
  fi
  tail -n 20 "$tmp/$1.$2.err"
}

# report NAME: the time/RSS line of both runs.
report() {
  { cat "$tmp/$1.libcalloc.time" 2>/dev/null || echo "? ?"; } | tail -n 1 >"$tmp/$1.t1"
  { cat "$tmp/$1.glibc.time" 2>/dev/null || echo "? ?"; } | tail -n 1 >"$tmp/$1.t2"
  paste -d ' ' "$tmp/$1.t1" "$tmp/$1.t2" | awk -v name="$1" '
    function mib(k) { return k ~ /^[0-9]+$/ ? sprintf("%7.1f MiB", k / 1024) : "      ? MiB" }
    function sec(s) { return s ~ /^[0-9.]+$/ ? sprintf("%6.2f s", s) : "     ? s" }
    function ratio(a, b) { return (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) ? sprintf("%.2fx", a / b) : "?" }
    { printf "%-16s libcalloc %s %s   glibc %s %s   (time %s, RSS %s)\n", name,
        sec($1), mib($2), sec($3), mib($4), ratio($1, $3), ratio($2, $4) }'
  rm -f "$tmp/$1.t1" "$tmp/$1.t2"
}

# pair NAME COMMAND...: COMMAND on glibc, then on libcalloc (the function
# $pair_hook, when set, is called with the allocator's name after each run);
# prints the time line; returns 0 when both exited 0.  The outputs are
# $tmp/NAME.glibc.out and $tmp/NAME.libcalloc.out.
pair() {
  p_name=$1
  shift
  run_one "$p_name" glibc "" "$@"
  rc_glibc=$rc
  test -z "${pair_hook:-}" || "$pair_hook" glibc
  run_one "$p_name" libcalloc "$so" "$@"
  rc_lib=$rc
  test -z "${pair_hook:-}" || "$pair_hook" libcalloc
  ran=$((ran + 1))
  report "$p_name"
  p_ok=0
  if test "$rc_glibc" != 0; then explain_rc "$p_name" glibc "$rc_glibc"; p_ok=1; fi
  if test "$rc_lib" != 0; then
    explain_rc "$p_name" libcalloc "$rc_lib"
    p_ok=1
  elif test -s "$tmp/$p_name.libcalloc.err" && ! cmp -s "$tmp/$p_name.glibc.err" "$tmp/$p_name.libcalloc.err"; then
    echo "note ($p_name): stderr under libcalloc differs from glibc's:"
    tail -n 10 "$tmp/$p_name.libcalloc.err"
  fi
  test "$p_ok" = 0 || status=1
  return "$p_ok"
}

# same NAME WHAT [GLIBC LIBCALLOC]: the two files (default: the two outputs of
# NAME) must be identical; else a FAIL line and a diff excerpt.
same() {
  s_a=${3:-$tmp/$1.glibc.out}
  s_b=${4:-$tmp/$1.libcalloc.out}
  if cmp -s "$s_a" "$s_b"; then return 0; fi
  echo "FAIL ($1): $2 differs between glibc and libcalloc (< glibc, > libcalloc):"
  diff "$s_a" "$s_b" | head -n 20
  status=1
  return 1
}

# --- python3 ---------------------------------------------------------------------
python=/usr/bin/python3
test -x "$python" || python=$(command -v python3 2>/dev/null || true)
if test -z "$python"; then
  echo "SKIP (python3): python3 not found (Debian package python3)"
else
  cat >"$tmp/dict.py" <<'PY'
import hashlib
import sys

n = int(sys.argv[1])
def key(i):
    return "k%08x" % ((i * 2654435761) & 0xFFFFFFFF)
d = {}
for i in range(n):
    d[key(i)] = [i, "v" * (i % 37), (i, i * 3)]
for i in range(0, n, 3):
    del d[key(i)]
for k in list(d)[::5]:
    d[k].append(k.upper() * 3)
items = sorted(d.items(), key=lambda kv: (len(kv[1][1]), kv[0]))
h = hashlib.sha256()
for k, v in items:
    h.update(("%s=%r;" % (k, v)).encode())
print(len(items), items[0][0], items[-1][0], h.hexdigest())
PY
  cat >"$tmp/threads.py" <<'PY'
import queue
import sys
import threading
import zlib

per_producer = int(sys.argv[1])
producers = consumers = 4
q = queue.Queue(maxsize=512)
results = [None] * consumers
MASK = (1 << 64) - 1

def produce(pid):
    for j in range(per_producer):
        k = pid * 1000003 + j
        words = [str(k * m) for m in range(j % 23)]
        item = {"id": k, "name": "item-%d-%d" % (pid, j), "words": words,
                "blob": ("%d:" % k).encode() * (1 + j % 300)}
        if j % 4000 == 0:
            item["big"] = list(range(k % 1000, k % 1000 + 60000))
        q.put(item)
    q.put(None)

def consume(cid):
    count = total = 0
    ids = {}
    kept = []
    while True:
        item = q.get()
        if item is None:
            break
        s = "%s|%s" % (item["name"], ",".join(item["words"]))
        c = zlib.crc32(s.encode()) ^ (zlib.crc32(item["blob"]) << 32)
        if "big" in item:
            c ^= sum(item["big"])
        total = (total + c * (item["id"] | 1)) & MASK
        count += 1
        ids[item["id"]] = c & 0xFFFF
        kept.append(item)
        if len(kept) >= 700:
            del kept[:600]  # blocks built by other threads, freed here
    results[cid] = (count, total, ids)

threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
threads += [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
count = sum(r[0] for r in results)
total = sum(r[1] for r in results) & MASK
merged = {}
for r in results:
    merged.update(r[2])
check = zlib.crc32(",".join("%d=%d" % kv for kv in sorted(merged.items())).encode())
print(len(threads), "threads", count, "items", len(merged), "ids", "%016x" % total, "%08x" % check)
PY
  entries=$(scaled 300000)
  if pair python3 env PYTHONMALLOC=malloc "$python" "$tmp/dict.py" "$entries" &&
    same python3 "the dict's checksum"; then
    echo "ok (python3): dict of $entries entries: $(cat "$tmp/python3.libcalloc.out")"
  fi
  per=$(scaled 40000)
  if pair python3-threads env PYTHONMALLOC=malloc "$python" "$tmp/threads.py" "$per" &&
    same python3-threads "the threads' checksum"; then
    echo "ok (python3-threads): $(cat "$tmp/python3-threads.libcalloc.out")"
  fi
fi

# --- sqlite3 ---------------------------------------------------------------------------
if ! have sqlite3; then
  echo "SKIP (sqlite3): sqlite3 not found (Debian package sqlite3)"
else
  rows=$(scaled 200000)
  people=$(((rows + 19) / 20))
  awk -v rows="$rows" -v people="$people" 'BEGIN {
      srand(4242)
      split("Lyon Oslo Lima Pune Kobe Graz Turku Cork Perth Quito Fez Nantes", city, " ")
      split("bolt nut gear cog axle pin rod spring valve seal pipe hinge", item, " ")
      print "PRAGMA cache_size = -65536;"
      print "PRAGMA temp_store = MEMORY;"
      print "BEGIN;"
      print "CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT, city TEXT, born INTEGER);"
      print "CREATE TABLE orders(id INTEGER PRIMARY KEY, person INTEGER, item TEXT, qty INTEGER, cents INTEGER, note TEXT);"
      for (i = 1; i <= people; i++)
        printf "INSERT INTO people VALUES(%d, %s%d%s, %s%s%s, %d);\n", i, "'\''name-", int(rand() * 1000000), "'\''", "'\''", city[1 + int(rand() * 12)], "'\''", 1940 + int(rand() * 70)
      for (i = 1; i <= rows; i++) {
        note = ""
        n = int(rand() * 6)
        for (j = 0; j < n; j++) note = note sprintf("w%d ", int(rand() * 5000))
        printf "INSERT INTO orders VALUES(%d, %d, %s%s%s, %d, %d, %s%s%s);\n", i, 1 + int(rand() * people), "'\''", item[1 + int(rand() * 12)], "'\''", 1 + int(rand() * 50), int(rand() * 100000), "'\''", note, "'\''"
      }
      print "COMMIT;"
    }' >"$tmp/load.sql"
  cat >>"$tmp/load.sql" <<'SQL'
CREATE INDEX orders_person ON orders(person);
CREATE INDEX orders_item_qty ON orders(item, qty);
CREATE INDEX people_city ON people(city, born);
SELECT count(*), sum(qty), sum(cents), min(cents), max(cents) FROM orders;
SELECT p.city, count(*), sum(o.qty), sum(o.qty * o.cents) FROM people p JOIN orders o ON o.person = p.id GROUP BY p.city ORDER BY p.city;
SELECT item, count(*), printf('%.4f', avg(qty)), max(cents) FROM orders GROUP BY item ORDER BY count(*) DESC, item;
SELECT p.id, p.name, sum(o.qty * o.cents) AS spent FROM people p JOIN orders o ON o.person = p.id GROUP BY p.id ORDER BY spent DESC, p.id LIMIT 10;
SELECT id, person, note FROM orders ORDER BY note DESC, cents, id LIMIT 5 OFFSET 1000;
SELECT person, item, qty, rank FROM (SELECT person, item, qty, rank() OVER (PARTITION BY person ORDER BY qty DESC, id) AS rank FROM orders) WHERE rank <= 2 ORDER BY person LIMIT 12 OFFSET 500;
SELECT count(DISTINCT note), length(group_concat(DISTINCT item)) FROM orders;
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 50000) SELECT count(*), sum(x % 7) FROM n LEFT JOIN orders o ON o.id = n.x * 3;
UPDATE orders SET note = note || 'updated ' || id WHERE qty % 7 = 0;
DELETE FROM orders WHERE qty % 11 = 0;
DELETE FROM people WHERE id NOT IN (SELECT person FROM orders);
SELECT changes(), total_changes() > 0;
SELECT count(*), sum(length(note)) FROM orders;
PRAGMA integrity_check;
VACUUM;
PRAGMA integrity_check;
SELECT count(*) FROM people;
SQL
  # One database per run; the CLI reads the script, then prints .sha3sum.
  cat >"$tmp/sqlite.sh" <<'SH'
rm -f "$1"
sqlite3 -batch -bail "$1" <"$2" && sqlite3 -batch "$1" .sha3sum
SH
  if pair sqlite3 sh "$tmp/sqlite.sh" "$tmp/sqlite.db" "$tmp/load.sql" &&
    same sqlite3 "the query output"; then
    echo "ok (sqlite3): $rows orders, $people people, $(wc -l <"$tmp/sqlite3.libcalloc.out") identical lines, .sha3sum $(tail -n 1 "$tmp/sqlite3.libcalloc.out" | cut -c1-16)..."
  fi
  rm -f "$tmp/load.sql" "$tmp/sqlite.db"
fi

# --- gcc / g++ ----------------------------------------------------------------------------
if ! have g++ || ! have gcc || ! have objdump || ! have nm; then
  echo "SKIP (g++): g++, gcc, objdump or nm not found (Debian packages g++, binutils)"
else
  src=$tmp/cc-src
  mkdir "$src"
  cat >"$src/words.cc" <<'CC'
#include <algorithm>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {
template <typename Map, typename Less>
std::vector<std::pair<typename Map::key_type, typename Map::mapped_type>> top_n(const Map& m, std::size_t n,
                                                                              Less less) {
  std::vector<std::pair<typename Map::key_type, typename Map::mapped_type>> v(m.begin(), m.end());
  std::partial_sort(v.begin(), v.begin() + std::min(n, v.size()), v.end(), less);
  v.resize(std::min(n, v.size()));
  return v;
}
}  // namespace

std::string word_report(int count) {
  static const char* const syllables[] = {"ka", "lo", "mi", "ne", "su", "ta", "ri", "po"};
  std::uint32_t state = 12345;
  std::map<std::string, int> freq;
  std::map<std::size_t, std::vector<std::string>> by_length;
  for (int i = 0; i < count; ++i) {
    std::string w;
    state = state * 1103515245u + 12345u;
    for (unsigned s = 0; s < 1 + (state >> 28) % 4; ++s) w += syllables[(state >> (3 * s + 8)) & 7];
    if (++freq[w] == 1) by_length[w.size()].push_back(w);
  }
  auto top = top_n(freq, 5, [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::ostringstream out;
  out << "distinct " << freq.size() << '\n';
  for (const auto& [word, n] : top) out << word << ' ' << n << '\n';
  for (const auto& [len, words] : by_length) out << "length " << len << ": " << words.size() << '\n';
  return out.str();
}
CC
  cat >"$src/shapes.cc" <<'CC'
#include <array>
#include <cstddef>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

template <typename T, std::size_t N>
struct Matrix {
  std::array<T, N * N> a{};
  T& operator()(std::size_t i, std::size_t j) { return a[i * N + j]; }
  T operator()(std::size_t i, std::size_t j) const { return a[i * N + j]; }
  Matrix operator*(const Matrix& o) const {
    Matrix r;
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t j = 0; j < N; ++j) {
        T s{};
        for (std::size_t k = 0; k < N; ++k) s += (*this)(i, k) * o(k, j);
        r(i, j) = s;
      }
    return r;
  }
};

template <unsigned N> struct Fib { static constexpr unsigned long value = Fib<N - 1>::value + Fib<N - 2>::value; };
template <> struct Fib<0> { static constexpr unsigned long value = 0; };
template <> struct Fib<1> { static constexpr unsigned long value = 1; };

template <typename... Ts> auto sum(Ts... xs) { return (xs + ... + 0); }

struct Shape {
  virtual ~Shape() = default;
  virtual long area() const = 0;
  virtual std::string name() const = 0;
};
struct Rect : Shape {
  long w, h;
  Rect(long w_, long h_) : w(w_), h(h_) {}
  long area() const override { return w * h; }
  std::string name() const override { return "rect" + std::to_string(w) + "x" + std::to_string(h); }
};
struct Square : Rect {
  explicit Square(long s) : Rect(s, s) {}
  std::string name() const override { return "square" + std::to_string(w); }
};

std::string shape_report() {
  std::vector<std::unique_ptr<Shape>> shapes;
  for (long i = 1; i <= 300; ++i) {
    if (i % 3 == 0) shapes.push_back(std::make_unique<Square>(i % 17 + 1));
    else shapes.push_back(std::make_unique<Rect>(i % 11 + 1, i % 7 + 2));
  }
  std::unordered_map<long, std::vector<std::string>> by_area;
  for (const auto& s : shapes) by_area[s->area()].push_back(s->name());
  long total = std::accumulate(shapes.begin(), shapes.end(), 0L,
                               [](long acc, const auto& s) { return acc + s->area(); });
  Matrix<long, 6> m;
  for (std::size_t i = 0; i < 6; ++i)
    for (std::size_t j = 0; j < 6; ++j) m(i, j) = static_cast<long>((i * 7 + j * 3) % 5) - 2;
  Matrix<long, 6> p = m * m * m;
  std::ostringstream out;
  out << "shapes " << shapes.size() << " total area " << total << " areas " << by_area.size() << '\n';
  out << "fib(60) " << Fib<60>::value << " sum " << sum(1, 2L, 3u, 4LL) << '\n';
  out << "matrix";
  for (std::size_t i = 0; i < 6; ++i) out << ' ' << p(i, i);
  out << '\n';
  return out.str();
}
CC
  cat >"$src/crc.c" <<'CC'
#include <stddef.h>
#include <stdint.h>

uint32_t report_crc(const char *s, size_t n)
{
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= (unsigned char)s[i];
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return ~c;
}
CC
  cat >"$src/main.cc" <<'CC'
#include <cstdint>
#include <cstdio>
#include <string>

extern "C" std::uint32_t report_crc(const char* s, std::size_t n);
std::string word_report(int count);
std::string shape_report();

int main() {
  std::string r = word_report(200000) + shape_report();
  std::fputs(r.c_str(), stdout);
  std::printf("crc %08x\n", static_cast<unsigned>(report_crc(r.data(), r.size())));
  return 0;
}
CC
  # The build, always in $tmp/cc-build (the same paths for both runs), moved
  # to cc-build.ALLOC after each run.
  cat >"$tmp/cc.sh" <<'SH'
set -e
rm -rf "$1" && mkdir "$1" && cd "$1"
for f in words shapes main; do g++ -std=c++17 -O2 -Wall -c "../cc-src/$f.cc" -o "$f.o"; done
gcc -std=c99 -O2 -Wall -c ../cc-src/crc.c -o crc.o
g++ -o prog words.o shapes.o main.o crc.o
SH
  cc_keep() { rm -rf "$tmp/cc-build.$1" && mv "$tmp/cc-build" "$tmp/cc-build.$1" 2>/dev/null; }
  pair_hook=cc_keep
  if pair g++ sh "$tmp/cc.sh" "$tmp/cc-build"; then
    # Each run's build: the objects' disassembly and symbols, the program's output.
    for a in glibc libcalloc; do
      (cd "$tmp/cc-build.$a" && for o in words shapes main crc; do
        echo "== $o.o"
        objdump -d --no-show-raw-insn "$o.o" | sed 1,3d
        nm "$o.o"
      done && echo "== prog" && ./prog) >"$tmp/g++.$a.result" 2>&1
    done
    if same g++ "the objects (objdump -d, nm) or the compiled program's output" \
      "$tmp/g++.glibc.result" "$tmp/g++.libcalloc.result"; then
      echo "ok (g++): 4 objects and the program identical ($(grep -c . "$tmp/g++.libcalloc.result") lines of disassembly, symbols and output; prog: $(tail -n 1 "$tmp/g++.libcalloc.result"))"
    fi
  fi
  pair_hook=
  rm -rf "$tmp/cc-build.glibc" "$tmp/cc-build.libcalloc"
fi

# --- git -------------------------------------------------------------------------------------
if ! have git; then
  echo "SKIP (git): git not found (Debian package git)"
else
  commits=$(scaled 400)
  # A fast-import stream: 60 files of 120 lines in 6 directories; every commit
  # rewrites a few lines of 3 files, every 50th deletes one (recreated later).
  awk -v commits="$commits" 'BEGIN {
      srand(99)
      nfiles = 60; nlines = 120
      for (f = 0; f < nfiles; f++)
        for (l = 0; l < nlines; l++) line[f, l] = sprintf("file %d line %d: %d", f, l, int(rand() * 1000000))
      for (c = 1; c <= commits; c++) {
        t = 1700000000 + c * 97
        msg = sprintf("commit %d: edit three files", c)
        printf "commit refs/heads/main\nmark :%d\n", c
        printf "author Calloc Test <calloc@example.org> %d +0000\n", t
        printf "committer Calloc Test <calloc@example.org> %d +0000\n", t
        printf "data %d\n%s\n", length(msg) + 1, msg
        for (k = 0; k < 3; k++) {
          f = int(rand() * nfiles)
          for (e = 0; e < 1 + int(rand() * 8); e++)
            line[f, int(rand() * nlines)] = sprintf("file %d edited by commit %d: %d", f, c, int(rand() * 1000000))
          body = ""
          for (l = 0; l < nlines; l++) body = body line[f, l] "\n"
          printf "M 100644 inline dir%d/file%d.txt\ndata %d\n%s\n", f % 6, f, length(body), body
        }
        if (c % 50 == 0) printf "D dir%d/file%d.txt\n", c % 6, c % 60
        printf "\n"
      }
    }' >"$tmp/history.fi"
  cat >"$tmp/git.sh" <<'SH'
set -e
repo=$1
rm -rf "$repo"
git init -q "$repo"
cd "$repo"
git fast-import --quiet <"$2"
git checkout -q main
echo "HEAD $(git rev-parse HEAD) $(git rev-list --count HEAD) commits"
git --no-pager log --stat --format='%H %an %ad %s' --date=iso-strict
git --no-pager log -p | sha256sum
git --no-pager diff --stat HEAD~"$3" HEAD
git blame -s "$(git ls-files | head -n 1)" | sha256sum
git -c pack.threads=4 gc --quiet
git count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
git fsck --full --no-progress --no-dangling
git cat-file --batch-all-objects --batch-check | LC_ALL=C sort | sha256sum
git grep -c 'edited by commit' HEAD -- dir2 | head -n 5
SH
  back=$((commits / 2))
  # an isolated git: no user or system configuration
  if pair git env HOME="$tmp" GIT_CONFIG_NOSYSTEM=1 sh "$tmp/git.sh" "$tmp/repo" "$tmp/history.fi" "$back" &&
    same git "the repository (log --stat, log -p, diff, blame, gc, fsck, object list)"; then
    echo "ok (git): $(head -n 1 "$tmp/git.libcalloc.out"), $(wc -l <"$tmp/git.libcalloc.out") identical lines"
  fi
  rm -rf "$tmp/repo" "$tmp/history.fi"
fi

# --- sort, gzip -----------------------------------------------------------------------------
if ! have sort || ! have sha256sum; then
  echo "SKIP (sort, gzip): sort or sha256sum not found (Debian package coreutils)"
else
  bytes=$(scaled 41943040)
  awk -v limit="$bytes" 'BEGIN {
      srand(7); n = 0; i = 0
      split("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima", w, " ")
      while (n < limit) {
        l = sprintf("%s-%s %d %08x line%d", w[1 + int(rand() * 12)], w[1 + int(rand() * 12)], int(rand() * 100000), int(rand() * 2147483647), i++)
        print l; n += length(l) + 1
      }
    }' >"$tmp/input.txt"
  lines=$(wc -l <"$tmp/input.txt")
  # GNU sort: 2 threads on 2 CPUs, in-memory buffers of the whole input.
  if pair sort env LC_ALL=C sort -k1,1 -k2,2n -k3,3 "$tmp/input.txt"; then
    sha256sum <"$tmp/sort.glibc.out" >"$tmp/sort.glibc.sum"
    sha256sum <"$tmp/sort.libcalloc.out" >"$tmp/sort.libcalloc.sum"
    if same sort "the sorted output (sha256)" "$tmp/sort.glibc.sum" "$tmp/sort.libcalloc.sum"; then
      if test "$(wc -l <"$tmp/sort.libcalloc.out")" = "$lines"; then
        echo "ok (sort): $(wc -c <"$tmp/input.txt") bytes, $lines lines, sha256 $(cut -c1-16 "$tmp/sort.libcalloc.sum")..."
      else
        echo "FAIL (sort): $(wc -l <"$tmp/sort.libcalloc.out") lines out of $lines"
        status=1
      fi
    fi
    mv "$tmp/sort.libcalloc.out" "$tmp/sorted.txt"
  fi
  rm -f "$tmp/input.txt" "$tmp/sort.glibc.out" "$tmp/sort.libcalloc.out"
  if ! have gzip || ! have gunzip; then
    echo "SKIP (gzip): gzip or gunzip not found (Debian package gzip)"
  elif test ! -f "$tmp/sorted.txt"; then
    echo "SKIP (gzip): no input (sort failed)"
  else
    # prints the sha256 of the compressed stream and of the decompressed file
    cat >"$tmp/gzip.sh" <<'SH'
set -e
gzip -6 -n -c "$1" >"$2"
sha256sum <"$2"
gunzip -c "$2" | sha256sum
SH
    if pair gzip sh "$tmp/gzip.sh" "$tmp/sorted.txt" "$tmp/sorted.gz" &&
      same gzip "the compressed or decompressed data (sha256)"; then
      orig=$(sha256sum <"$tmp/sorted.txt")
      if test "$(tail -n 1 "$tmp/gzip.libcalloc.out")" = "$orig"; then
        echo "ok (gzip): $(wc -c <"$tmp/sorted.txt") bytes to $(wc -c <"$tmp/sorted.gz"), back identical; gz sha256 $(head -n 1 "$tmp/gzip.libcalloc.out" | cut -c1-16)..."
      else
        echo "FAIL (gzip): gunzip did not give back the input: sha256 $(tail -n 1 "$tmp/gzip.libcalloc.out"), input $orig"
        status=1
      fi
    fi
  fi
  rm -f "$tmp/sorted.txt" "$tmp/sorted.gz"
fi

# --- redis-server + redis-benchmark -------------------------------------------------------------
if ! have redis-server || ! have redis-cli || ! have redis-benchmark; then
  echo "SKIP (redis-server): redis-server, redis-cli or redis-benchmark not found (Debian packages redis-server, redis-tools)"
else
  redis=$(command -v redis-server)
  # Debian's redis-server links libjemalloc and takes malloc from it: preloading
  # libc.so.6 puts glibc's malloc first for the glibc run.  Under libcalloc,
  # malloc must come from libcalloc.so (mallctl, nallocx stay jemalloc's).
  libc=$(ldd "$redis" 2>/dev/null | awk '$1 ~ /^libc\.so/ { print $3 }')
  binding() {
    env LD_DEBUG=bindings LD_PRELOAD="$1" "$redis" --version 2>&1 >/dev/null |
      sed -n "s/.*binding file [^ ]*redis-server [^ ]* to \([^ ]*\) .*symbol \`malloc'.*/\1/p" | head -n 1
  }
  lib_malloc=$(binding "$so")
  base_malloc=$(binding "$libc")
  if test "${lib_malloc##*/}" != libcalloc.so; then
    echo "FAIL (redis-server): under LD_PRELOAD=libcalloc.so its malloc comes from '$lib_malloc', not libcalloc.so"
    status=1
  else
    echo "note (redis-server): malloc from ${base_malloc:-?} in the glibc run (LD_PRELOAD=${libc:-none}), from $lib_malloc under libcalloc"
    keys=$(scaled 30000)
    requests=$(scaled 20000)
    # The load, in the Redis protocol (redis-cli --pipe).
    awk -v keys="$keys" 'function cmd(a, n,   i, s) {
        s = "*" n "\r\n"
        for (i = 1; i <= n; i++) s = s "$" length(a[i]) "\r\n" a[i] "\r\n"
        printf "%s", s
      }
      function c2(x, y) { a[1] = x; a[2] = y; cmd(a, 2) }
      function c3(x, y, z) { a[1] = x; a[2] = y; a[3] = z; cmd(a, 3) }
      function c4(x, y, z, t) { a[1] = x; a[2] = y; a[3] = z; a[4] = t; cmd(a, 4) }
      BEGIN {
        srand(2024)
        pad = "abcdefghijklmnopqrstuvwxyz0123456789"
        for (i = 0; i < 6; i++) pad = pad pad
        for (i = 1; i <= keys; i++) {
          c3("SET", "key:" i, substr(pad, 1 + i % 7, 1 + int(rand() * 2000)))
          c3("RPUSH", "list:" (i % 100), "item-" i)
          c4("HSET", "hash:" (i % 500), "field:" i, i * 7)
          c4("ZADD", "zset:" (i % 50), int(rand() * 100000), "member:" i)
          c3("SADD", "set:" (i % 200), "m:" int(rand() * 5000))
          if (i % 3 == 0) c3("APPEND", "key:" (i % 1000 + 1), "-more")
          if (i % 5 == 0) c3("INCRBY", "counter:" (i % 10), i)
          if (i % 13 == 0) c2("DEL", "key:" (i - 7))
          if (i % 1000 == 0) {
            big = ""
            for (j = 0; j < 80; j++) big = big pad
            c3("SET", "big:" i, big)
            c3("RPUSH", "list:big", big)
          }
          # large sets and sorted sets are freed by the lazy-free thread
          if (i % 2500 == 0) { c2("UNLINK", "zset:" (i / 2500 % 50)); c2("UNLINK", "set:" (i / 2500 % 200)) }
        }
      }' >"$tmp/redis-load.resp"
    # The checks, one redis-cli call each (deterministic replies only).
    cat >"$tmp/redis-queries.txt" <<'TXT'
DBSIZE
DEBUG DIGEST
GET key:1
GET key:2
STRLEN key:1000
GET key:30000
LLEN list:7
LRANGE list:7 0 4
LRANGE list:7 -3 -1
LLEN list:big
HLEN hash:3
HGET hash:3 field:503
ZCARD zset:9
ZRANGE zset:9 0 4 WITHSCORES
ZREVRANGE zset:9 0 2 WITHSCORES
SCARD set:5
SISMEMBER set:5 m:17
GET counter:5
STRLEN big:3000
EXISTS zset:1 zset:2 set:3 set:5
OBJECT ENCODING list:7
OBJECT ENCODING hash:3
OBJECT ENCODING zset:9
OBJECT ENCODING set:5
INFO keyspace
TXT
    # rr_kill: kills the server of redis_run (and /usr/bin/time above it).
    rr_kill() {
      for p in $(cat "$rr_dir/redis.pid" "/proc/$rr_wrapper/task/$rr_wrapper/children" 2>/dev/null); do
        kill -9 "$p" 2>/dev/null
      done
      kill -9 "$rr_wrapper" 2>/dev/null
      wait "$rr_wrapper" 2>/dev/null
      server_pids=
    }
    # redis_run ALLOC PRELOAD: one server's life; the deterministic replies on
    # stdout (into $tmp/redis-server.ALLOC.out), "seconds KiB" of the server in
    # $tmp/redis-server.ALLOC.time; returns nonzero on any failure.
    redis_run() {
      rr_alloc=$1 rr_pre=$2
      rr_dir=$tmp/redis.$rr_alloc
      rm -rf "$rr_dir" && mkdir "$rr_dir" || return 1
      rr_try=0
      while :; do
        rr_try=$((rr_try + 1))
        rr_port=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 40000))
        if test -n "$rr_pre"; then set -- env LD_PRELOAD="$rr_pre"; else set -- env -u LD_PRELOAD; fi
        if test -n "$timer"; then set -- "$timer" -q -f '%e %M' -o "$tmp/redis-server.$rr_alloc.time" "$@"; fi
        "$@" "$redis" --port "$rr_port" --bind 127.0.0.1 --protected-mode yes --save '' --appendonly no \
          --dir "$rr_dir" --pidfile "$rr_dir/redis.pid" --logfile '' --daemonize no --databases 4 \
          --enable-debug-command local --lazyfree-lazy-user-del yes --lazyfree-lazy-user-flush yes \
          </dev/null >"$rr_dir/server.log" 2>&1 &
        rr_wrapper=$!
        server_pids=$rr_wrapper
        rr_t0=$(now_ms)
        # ready when it answers on the port from our directory (not another server)
        rr_ready=0
        rr_waited=0
        while test "$rr_waited" -lt 200; do
          if ! kill -0 "$rr_wrapper" 2>/dev/null; then break; fi
          if test "$(timeout 5 redis-cli -h 127.0.0.1 -p "$rr_port" config get dir 2>/dev/null | tail -n 1)" = "$rr_dir"; then
            rr_ready=1
            break
          fi
          sleep 0.05
          rr_waited=$((rr_waited + 1))
        done
        if test -f "$rr_dir/redis.pid"; then server_pids="$server_pids $(cat "$rr_dir/redis.pid")"; fi
        test "$rr_ready" = 1 && break
        if kill -0 "$rr_wrapper" 2>/dev/null; then
          echo "FAIL (redis-server): the $rr_alloc server did not answer on 127.0.0.1:$rr_port within 10 s; its log:"
          rr_kill
        else
          wait "$rr_wrapper"
          rr_rc=$?
          server_pids=
          if grep -q 'in use' "$rr_dir/server.log" && test "$rr_try" -lt 5; then
            continue # port taken: another one
          fi
          echo "FAIL (redis-server): the $rr_alloc server exited with status $rr_rc at start-up on port $rr_port; its log:"
        fi
        tail -n 20 "$rr_dir/server.log"
        return 1
      done
      cli() { timeout 60 redis-cli -h 127.0.0.1 -p "$rr_port" "$@"; }
      rr_ok=0
      {
        # the load: its summary line (errors, replies) is deterministic
        cli --pipe <"$tmp/redis-load.resp" | grep '^errors:' || rr_ok=1
        while read -r q; do
          echo "> $q"
          # shellcheck disable=SC2086
          cli $q </dev/null || rr_ok=1
        done <"$tmp/redis-queries.txt"
        # redis-benchmark in database 1 (the load stays in database 0)
        echo "> redis-benchmark"
        if timeout 120 redis-benchmark -h 127.0.0.1 -p "$rr_port" -q --csv -n "$requests" \
          -t set,get,lpush,lpop -P 16 --dbnum 1 >"$tmp/redis-bench.$rr_alloc" 2>"$tmp/redis-bench.$rr_alloc.err"; then
          cut -d, -f1 "$tmp/redis-bench.$rr_alloc" | tr -d '"'
        else
          echo "redis-benchmark failed:"
          cat "$tmp/redis-bench.$rr_alloc.err"
          rr_ok=1
        fi
        echo "> after the benchmark"
        cli -n 1 STRLEN key:__rand_int__ || rr_ok=1
        cli -n 1 FLUSHDB ASYNC || rr_ok=1
        cli DEBUG DIGEST || rr_ok=1
        cli DBSIZE || rr_ok=1
        cli FLUSHALL ASYNC || rr_ok=1
        cli DBSIZE || rr_ok=1
        cli PING || rr_ok=1
      } >"$tmp/redis-server.$rr_alloc.out" 2>"$tmp/redis-server.$rr_alloc.err"
      # A clean shutdown: the server must exit 0 by itself.
      cli SHUTDOWN NOSAVE >/dev/null 2>&1
      rr_waited=0
      while kill -0 "$rr_wrapper" 2>/dev/null && test "$rr_waited" -lt 300; do
        sleep 0.05
        rr_waited=$((rr_waited + 1))
      done
      if kill -0 "$rr_wrapper" 2>/dev/null; then
        echo "FAIL (redis-server): the $rr_alloc server did not exit after SHUTDOWN NOSAVE; killed"
        rr_kill
        return 1
      fi
      wait "$rr_wrapper"
      rr_rc=$?
      server_pids= # gone: nothing left to kill
      if test -z "$timer"; then
        echo "$(($(now_ms) - rr_t0)) ?" | awk '{ printf "%.2f ?\n", $1 / 1000 }' >"$tmp/redis-server.$rr_alloc.time"
      fi
      if test "$rr_rc" != 0; then
        # a crash report: its beginning (signal, stack trace) rather than its end
        if grep -q 'BUG REPORT START' "$rr_dir/server.log"; then
          sed -n '/BUG REPORT START/,$p' "$rr_dir/server.log" | head -n 20 >"$tmp/redis-server.$rr_alloc.err"
        else
          cp "$rr_dir/server.log" "$tmp/redis-server.$rr_alloc.err"
        fi
        explain_rc redis-server "$rr_alloc" "$rr_rc"
        return 1
      fi
      if test "$rr_ok" != 0; then
        echo "FAIL (redis-server): a client command failed on the $rr_alloc server:"
        tail -n 10 "$tmp/redis-server.$rr_alloc.err"
        tail -n 10 "$tmp/redis-server.$rr_alloc.out"
        return 1
      fi
      return 0
    }
    redis_run glibc "$libc"
    rr_glibc=$?
    redis_run libcalloc "$so"
    rr_lib=$?
    ran=$((ran + 1))
    report redis-server
    if test "$rr_glibc" = 0 && test "$rr_lib" = 0 &&
      same redis-server "the data set or the replies"; then
      rps() { tr -d '"' <"$tmp/redis-bench.$1" | awk -F, '$1 != "test" { printf " %s %.0f", $1, $2 }'; }
      echo "ok (redis-server): $keys-key load, $(grep -c . "$tmp/redis-server.libcalloc.out") identical reply lines," \
        "digest $(sed -n '/^> DEBUG DIGEST/{n;p;}' "$tmp/redis-server.libcalloc.out" | cut -c1-16)..., clean shutdown"
      echo "note (redis-server): redis-benchmark requests/s, libcalloc:$(rps libcalloc); glibc:$(rps glibc)"
    else
      status=1
    fi
    rm -rf "$tmp/redis.glibc" "$tmp/redis.libcalloc" "$tmp/redis-load.resp"
  fi
fi

if test "$ran" = 0 && test "$status" = 0; then
  echo "SKIP: none of python3, sqlite3, g++, git, sort, gzip, redis-server could run"
  exit 77
fi
exit $status
