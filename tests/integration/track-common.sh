# tests/integration/track-common.sh -- sourced (not run) by the tracker's
# scripts (track.sh, track-pprof.sh, track-rss.sh) after they set `name`.
#
# Sources preload-common.sh (top_builddir, scale, so; skips without libcalloc.so
# or the override), then exits 77 (skip) when the build has no tracking, and sets
#   demo  the path of tests/track/track-demo,
#   tmp   a fresh directory ${TMPDIR:-/tmp}/calloc-$name.XXXXXX, removed at exit.

. "$(dirname "$0")/preload-common.sh"
if ! grep -q '^#define CALLOC_TRACKING 1' "$top_builddir/config.h" 2>/dev/null; then
  echo "SKIP: built without --enable-tracking"
  exit 77
fi
demo=$top_builddir/tests/track/track-demo
tmp=$(mktemp -d "${TMPDIR:-/tmp}/calloc-$name.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
