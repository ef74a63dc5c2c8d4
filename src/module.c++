// module.c++ -- the table of the module heaps' functions (module.h++), and the
// core's calls into it for a pointer that no core heap owns.
//
// Nothing here is on a correct call's path: the core's entry points come here
// only where they reported an invalid pointer before (session 20).
#include "module.h++"

#include <atomic>

#include "report.h++"
#include "tcache.h++"

namespace lca {

namespace {

constinit std::atomic<const ModuleOps*> g_modules[static_cast<int>(ModuleHeap::count)] = {};

// The registered tables in order (secure, then huge), one at a time.
template <class F>
bool each_module(F f) {
  for (auto& slot : g_modules)
    if (const ModuleOps* ops = slot.load(std::memory_order_acquire); ops && f(*ops)) return true;
  return false;
}

}  // namespace

void register_module(ModuleHeap m, const ModuleOps* ops) noexcept {
  g_modules[static_cast<int>(m)].store(ops, std::memory_order_release);
}

__attribute__((noinline, cold)) bool module_free(void* p) {
  return each_module([p](const ModuleOps& m) { return m.free(p, "free"); });
}

__attribute__((noinline, cold)) void free_unowned(void* p) {
  if (!module_free(p)) report_unowned(p, "free");
}

__attribute__((noinline, cold)) std::size_t usable_size_unowned(const void* p, const char* what) {
  std::size_t n = 0;
  if (!each_module([&](const ModuleOps& m) { return m.usable_size(p, &n, what); })) report_unowned(p, what);
  return n;
}

__attribute__((noinline, cold)) void* resize_unowned(void* p, std::size_t size, bool may_move, ResizeResult* how) {
  void* q = nullptr;
  if (!each_module([&](const ModuleOps& m) { return m.resize(p, size, may_move, &q); }))
    report_unowned(p, "realloc");
  *how = !q ? ResizeResult::failed : q == p ? ResizeResult::in_place : ResizeResult::moved;
  return q;
}

}  // namespace lca
