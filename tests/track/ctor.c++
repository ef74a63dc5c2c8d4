// tests/track/ctor.c++ -- a shared object that tests/unit/track dlopens: its
// constructor runs under the dynamic loader's lock (dlopen holds it while the
// constructors of the objects it loaded run) and does what the environment
// asks, so that a test can hold that lock in one thread at a known moment:
//  CALLOC_TEST_CTOR_FD  a descriptor: one byte written when the constructor starts;
//  CALLOC_TEST_CTOR=stdio  then takes stdout's lock (as a constructor that prints);
//  CALLOC_TEST_CTOR=phdr   then waits for a byte on CALLOC_TEST_CTOR_GO_FD and
//                          calls dl_iterate_phdr (as libunwind does, in a
//                          constructor that walks its stack).
// Nothing is allocated here: the test's threads do that.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <link.h>
#include <unistd.h>

namespace {

int env_fd(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : -1;
}

int no_op(dl_phdr_info*, std::size_t, void*) { return 0; }

__attribute__((constructor)) void track_ctor() {
  const char* what = std::getenv("CALLOC_TEST_CTOR");
  if (!what) return;
  int fd = env_fd("CALLOC_TEST_CTOR_FD");
  char c = 'c';
  if (fd >= 0 && write(fd, &c, 1) != 1) return;
  if (std::strcmp(what, "stdio") == 0) {
    flockfile(stdout);
    funlockfile(stdout);
  } else if (std::strcmp(what, "phdr") == 0) {
    int go = env_fd("CALLOC_TEST_CTOR_GO_FD");
    if (go >= 0 && read(go, &c, 1) != 1) return;
    dl_iterate_phdr(no_op, nullptr);
  }
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int track_ctor_loaded() { return 1; }
