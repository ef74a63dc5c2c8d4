// cxxrt.c++ -- the bridge from libcalloc's C paths to the program's C++ runtime.
//
// libcalloc.so does not depend on libstdc++ (src/cxxrt.h++ says why and how).
// The paths that a C++ program reaches through entry points that C programs
// also have -- operator new's failure path, which asks for the new-handler and
// throws std::bad_alloc, and the tracker's demangler -- find the runtime here:
// the weak references when the runtime is in the global scope (every C++
// program linked with it), else the runtime a C program loaded with
// dlopen(RTLD_LOCAL) for a C++ plugin (found with RTLD_NOLOAD, never loaded
// here).  bad_alloc is thrown through the Itanium C++ ABI (__cxa_throw with
// the runtime's own typeinfo), so the program's catch (std::bad_alloc&)
// matches it whichever way the runtime was found.
#include <dlfcn.h>

#include <cstddef>

#include "config.h"
#include "report.h++"

namespace {

// Weak (src/cxxrt.h++): null when no C++ runtime is in the global scope.
// Strong in libcalloc.a (LCA_CXXRT_STRONG).
#ifdef LCA_CXXRT_STRONG
#define LCA_CXXRT_WEAK
#else
#define LCA_CXXRT_WEAK __attribute__((weak))
#endif
using AllocExceptionFn = void* (*)(std::size_t);
using ThrowFn = void (*)(void*, void*, void (*)(void*));
using DtorFn = void (*)(void*);
using GetHandlerFn = lca::CxxNewHandler (*)();
using DemangleFn = char* (*)(const char*, char*, std::size_t*, int*);
extern "C" void* weak_cxa_allocate_exception(std::size_t) asm("__cxa_allocate_exception") LCA_CXXRT_WEAK;
extern "C" void weak_cxa_throw(void*, void*, void (*)(void*)) asm("__cxa_throw") LCA_CXXRT_WEAK;
extern "C" char weak_bad_alloc_typeinfo[] asm("_ZTISt9bad_alloc") LCA_CXXRT_WEAK;
extern "C" void* weak_bad_alloc_vtable[] asm("_ZTVSt9bad_alloc") LCA_CXXRT_WEAK;
extern "C" void weak_bad_alloc_dtor(void*) asm("_ZNSt9bad_allocD1Ev") LCA_CXXRT_WEAK;
extern "C" lca::CxxNewHandler weak_get_new_handler() asm("_ZSt15get_new_handlerv") LCA_CXXRT_WEAK;
extern "C" char* weak_cxa_demangle(const char*, char*, std::size_t*, int*) asm("__cxa_demangle") LCA_CXXRT_WEAK;

struct Runtime {
  AllocExceptionFn allocate_exception = nullptr;
  ThrowFn throw_exception = nullptr;
  void* bad_alloc_typeinfo = nullptr;
  void** bad_alloc_vtable = nullptr;
  DtorFn bad_alloc_dtor = nullptr;
  GetHandlerFn get_new_handler = nullptr;
  DemangleFn demangle = nullptr;
  bool complete() const {
    return allocate_exception && throw_exception && bad_alloc_typeinfo && bad_alloc_vtable && bad_alloc_dtor;
  }
};

Runtime from_global_scope() {
  Runtime r;
  r.allocate_exception = weak_cxa_allocate_exception;
  r.throw_exception = weak_cxa_throw;
  r.bad_alloc_typeinfo = weak_bad_alloc_typeinfo;
  r.bad_alloc_vtable = weak_bad_alloc_vtable;
  r.bad_alloc_dtor = weak_bad_alloc_dtor;
  r.get_new_handler = weak_get_new_handler;
  r.demangle = weak_cxa_demangle;
  return r;
}

// A runtime already loaded outside the global scope; RTLD_NOLOAD never loads
// one, and the handle's reference is kept (the runtime stays as long as we do).
Runtime from_loaded_library() {
  Runtime r;
  static const char* const kNames[] = {"libstdc++.so.6", "libc++.so.1", "libc++abi.so.1"};
  for (const char* name : kNames) {
    void* h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
    if (!h) continue;
    r.allocate_exception = reinterpret_cast<AllocExceptionFn>(dlsym(h, "__cxa_allocate_exception"));
    r.throw_exception = reinterpret_cast<ThrowFn>(dlsym(h, "__cxa_throw"));
    r.bad_alloc_typeinfo = dlsym(h, "_ZTISt9bad_alloc");
    r.bad_alloc_vtable = static_cast<void**>(dlsym(h, "_ZTVSt9bad_alloc"));
    r.bad_alloc_dtor = reinterpret_cast<DtorFn>(dlsym(h, "_ZNSt9bad_allocD1Ev"));
    r.get_new_handler = reinterpret_cast<GetHandlerFn>(dlsym(h, "_ZSt15get_new_handlerv"));
    r.demangle = reinterpret_cast<DemangleFn>(dlsym(h, "__cxa_demangle"));
    if (r.complete()) return r;
  }
  return Runtime{};
}

Runtime runtime() {
  Runtime r = from_global_scope();
  return r.complete() ? r : from_loaded_library();
}

}  // namespace

namespace lca {

CxxNewHandler cxx_get_new_handler() noexcept {
  GetHandlerFn get = weak_get_new_handler;
  if (get) return get();
  Runtime r = from_loaded_library();
  return r.get_new_handler ? r.get_new_handler() : nullptr;
}

void cxx_throw_bad_alloc() {
  Runtime r = runtime();
  if (!r.complete())
    report_fatal("Out of memory in operator new", nullptr, "no C++ runtime is loaded to throw std::bad_alloc");
  // What `throw std::bad_alloc()` compiles to (Itanium C++ ABI): the object is
  // one vtable pointer, past the vtable's offset-to-top and typeinfo words.
  void* e = r.allocate_exception(sizeof(void*));
  *static_cast<void**>(e) = r.bad_alloc_vtable + 2;
  r.throw_exception(e, r.bad_alloc_typeinfo, r.bad_alloc_dtor);
  __builtin_unreachable();
}

char* cxx_demangle(const char* name) noexcept {
  DemangleFn demangle = weak_cxa_demangle;
  if (!demangle) demangle = from_loaded_library().demangle;
  if (!demangle) return nullptr;
  int status = -1;
  char* out = demangle(name, nullptr, nullptr, &status);
  return status == 0 ? out : nullptr;
}

}  // namespace lca
