// tests/integration/nostdcxx-cxx.c++ -- operator new keeps the standard's
// failure behaviour on a libcalloc.so that does not link libstdc++.
//
// Built twice: as a program run by nostdcxx.sh under LD_PRELOAD (the C++ runtime
// is in the global scope), and as a plugin (NOSTDCXX_PLUGIN) that a C program
// loads with dlopen(RTLD_LOCAL) (the runtime is found by src/cxxrt.c++).  Each
// check returns a distinct non-zero code on failure.
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <new>

namespace {
int handler_calls = 0;
void handler() {
  ++handler_calls;
  std::set_new_handler(nullptr);  // the next failure throws
}

// An impossible request, hidden from the optimiser.
volatile std::size_t g_huge = static_cast<std::size_t>(-1) / 2;

int run() {
  // 1. operator new throws std::bad_alloc, caught by type.
  try {
    void* p = ::operator new(g_huge);
    std::printf("operator new returned %p\n", p);
    return 10;
  } catch (const std::bad_alloc& e) {
    if (!e.what()) return 11;
  } catch (...) {
    return 12;
  }
  // 2. new[] and the aligned form too.
  try {
    char* p = new char[g_huge];
    std::printf("new[] returned %p\n", static_cast<void*>(p));
    return 20;
  } catch (const std::bad_alloc&) {
  }
  try {
    void* p = ::operator new(g_huge, std::align_val_t{64});
    std::printf("aligned new returned %p\n", p);
    return 21;
  } catch (const std::bad_alloc&) {
  }
  // 3. The new-handler is called, then (uninstalled by itself) bad_alloc.
  std::set_new_handler(handler);
  try {
    (void)::operator new(g_huge);
    return 30;
  } catch (const std::bad_alloc&) {
  }
  if (handler_calls != 1) return 31;
  // 4. nothrow forms return null; a handler that throws is caught there too.
  if (::operator new(g_huge, std::nothrow) != nullptr) return 40;
  if (::operator new[](g_huge, std::nothrow) != nullptr) return 41;
  if (::operator new(g_huge, std::align_val_t{64}, std::nothrow) != nullptr) return 42;
#ifndef NOSTDCXX_PLUGIN
  // (Not in the plugin: there libcalloc's own frames have no personality
  // routine, so its catch cannot run; docs/design.md, "Linkage", limits.)
  std::set_new_handler([] { throw std::bad_alloc(); });
  if (::operator new(g_huge, std::nothrow) != nullptr) return 43;
  std::set_new_handler(nullptr);
#endif
  // 5. Ordinary allocations work.
  for (int i = 0; i < 1000; ++i) delete new int(i);
  return 0;
}
}  // namespace

#ifdef NOSTDCXX_PLUGIN
extern "C" __attribute__((visibility("default"))) int cxx_plugin_check() { return run(); }
#else
int main() {
  int rc = run();
  if (rc == 0) std::puts("ok");
  return rc;
}
#endif
