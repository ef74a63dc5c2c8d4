// tests/track/plugin.c++ -- a shared object that tests/track/track-demo dlopens
// (mode "dlopen"): its leak must be reported with this function's name and module.
#include <cstdlib>
#include <cstring>

extern "C" __attribute__((visibility("default"), noinline)) void* plugin_leak(std::size_t n) {
  void* p = std::malloc(n);
  std::memset(p, 2, n);
  asm volatile("" : : "r"(p) : "memory");
  return p;
}
