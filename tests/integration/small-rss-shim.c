/* tests/integration/small-rss-shim.c -- for small-rss.sh: preloaded before
 * libcalloc.so, it defines libc's open, open64, openat, openat64 and prctl, so
 * that a call libcalloc makes to them through its PLT lands here.  libcalloc's
 * first chunk reads the THP mode and asks prctl(PR_GET_THP_DISABLE) with system
 * calls of its own, not libc's functions, whose 64 KiB windows of text a small C
 * program does not otherwise map (src/huge.c++, docs/design.md "libc's pages"):
 * a call of the kind made here prints a line on stderr, which the test fails on.
 * Each forwards to the system call. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char* what) {
  static const char prefix[] = "small-rss-shim: libc's ";
  static const char suffix[] = " called\n";
  ssize_t r = write(2, prefix, sizeof prefix - 1);
  r = write(2, what, strlen(what));
  r = write(2, suffix, sizeof suffix - 1);
  (void)r;
}

static int open_at(int dir, const char* path, int flags, va_list ap, const char* name) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) mode = va_arg(ap, mode_t);
  if (strstr(path, "transparent_hugepage")) report(name);
  return (int)syscall(SYS_openat, dir, path, flags, mode);
}

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int r = open_at(AT_FDCWD, path, flags, ap, "open");
  va_end(ap);
  return r;
}

int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int r = open_at(AT_FDCWD, path, flags, ap, "open64");
  va_end(ap);
  return r;
}

int openat(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int r = open_at(dir, path, flags, ap, "openat");
  va_end(ap);
  return r;
}

int openat64(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int r = open_at(dir, path, flags, ap, "openat64");
  va_end(ap);
  return r;
}

int prctl(int option, ...) {
  va_list ap;
  va_start(ap, option);
  unsigned long a = va_arg(ap, unsigned long), b = va_arg(ap, unsigned long), c = va_arg(ap, unsigned long),
                d = va_arg(ap, unsigned long);
  va_end(ap);
  if (option == PR_GET_THP_DISABLE) report("prctl(PR_GET_THP_DISABLE)");
  return (int)syscall(SYS_prctl, option, a, b, c, d);
}
