/* tests/integration/nostdcxx-c.c -- a C program on libcalloc maps no C++ runtime.
 *
 * Run by nostdcxx.sh under LD_PRELOAD of libcalloc.so, and linked with
 * libcalloc (nostdcxx-linked).  It allocates through the malloc family, checks
 * that the malloc it got is libcalloc's, then scans /proc/self/maps: any
 * libstdc++ or libgcc_s mapping fails (exit 1, naming it).  With "dlopen PLUGIN"
 * it also loads PLUGIN (a C++ shared object) with RTLD_LOCAL, as Python loads a
 * C++ extension, and runs its cxx_plugin_check(): operator new must still throw
 * std::bad_alloc, call the new-handler and return null in its nothrow forms,
 * though the C++ runtime is outside the global scope. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mapped(const char* what) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  if (!f) {
    perror("/proc/self/maps");
    exit(2);
  }
  while (fgets(line, sizeof line, f))
    if (strstr(line, what)) {
      fprintf(stderr, "mapped: %s", line);
      found = 1;
    }
  fclose(f);
  return found;
}

int main(int argc, char** argv) {
  void* blocks[1000];
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 1000; ++i) {
      blocks[i] = malloc((size_t)(16 + (i * 37) % 2000));
      if (!blocks[i]) return 2;
      memset(blocks[i], i, 16);
    }
    for (int i = 0; i < 1000; ++i) blocks[i] = realloc(blocks[i], (size_t)(i % 300) + 1);
    for (int i = 0; i < 1000; ++i) free(blocks[i]);
  }
  char* z = calloc(100, 100);
  if (!z || z[9999] != 0) return 2;
  free(z);
  /* The malloc in use is libcalloc's (a preload that did not take would pass the
   * map check with glibc's). */
  if (!dlsym(RTLD_DEFAULT, "lca_malloc")) {
    fprintf(stderr, "libcalloc is not loaded\n");
    return 1;
  }
  int bad = mapped("libstdc++") | mapped("libgcc_s");
  if (bad) return 1;
  if (argc == 3 && strcmp(argv[1], "dlopen") == 0) {
    void* h = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fprintf(stderr, "dlopen: %s\n", dlerror());
      return 2;
    }
    int (*check)(void) = (int (*)(void))dlsym(h, "cxx_plugin_check");
    if (!check) return 2;
    if (!mapped("libstdc++")) return 2; /* the plugin brought the runtime */
    int rc = check();
    if (rc != 0) {
      fprintf(stderr, "cxx_plugin_check failed: %d\n", rc);
      return 1;
    }
  }
  puts("ok");
  return 0;
}
