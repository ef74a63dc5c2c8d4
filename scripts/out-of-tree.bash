# scripts/out-of-tree.bash -- sourced (not run) by scripts/check-config,
# scripts/check-secure, scripts/check-sanitizers and scripts/fuzz: what each needs before it
# configures a build of the source tree in a directory of its own.
#
#   out_of_tree_bootstrap TOP
#       runs TOP/scripts/bootstrap when TOP has no configure yet.
#   out_of_tree_srcdir TOP COPY [PREFIX]
#       sets srcdir to the tree to configure from: TOP itself, or -- when TOP is
#       configured in place (./configure run in it, as .ci/run does), whose VPATH
#       builds automake refuses -- a copy of TOP in COPY (emptied first), without
#       .git and doc/ (make doc's output, which make distclean removes anyway),
#       `make distclean'ed.  PREFIX starts the line that says so ("KIND: ").

out_of_tree_bootstrap() {
  local top=$1
  if [[ ! -x $top/configure ]]; then
    echo "==> $top has no configure yet: scripts/bootstrap"
    "$top/scripts/bootstrap"
  fi
}

out_of_tree_srcdir() {
  local top=$1 copy=$2 prefix=${3:-}
  srcdir=$top
  [[ -f $top/config.status ]] || return 0
  srcdir=$copy
  echo "==> $prefix$top is configured in place: building a copy in $srcdir"
  rm -rf "$srcdir"
  mkdir -p "$srcdir"
  tar -C "$top" --exclude=.git --exclude=./doc -cf - . | tar -C "$srcdir" -xf -
  make -C "$srcdir" distclean >/dev/null
}
