// tests/integration/secure-victim.c++ -- a program that misuses malloc and new
// in one way per case (argv[1]), for tests/integration/secure-malloc.sh to run
// under LD_PRELOAD of a libcalloc built with --enable-secure.  It is not linked
// with libcalloc: the preloaded library is its malloc, as for any user program.
// A case that misuses memory must not return (the library aborts, or a guard
// page faults); the "ok-*" cases check correct behaviour and exit 0.
#include <dlfcn.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

namespace {

// Hides a pointer from the optimiser (no folding of malloc/free pairs).
template <class T>
T* launder(T* p) {
  asm volatile("" : "+r"(p) : : "memory");
  return p;
}

int g_global[8];
volatile char g_sink;

using free_sized_fn = void (*)(void*, std::size_t);
using free_aligned_sized_fn = void (*)(void*, std::size_t, std::size_t);

void churn(std::size_t size, int rounds) {
  for (int i = 0; i < rounds; ++i) std::free(launder(std::malloc(size)));
}

bool zero(const void* p, std::size_t n) {
  auto* c = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (c[i]) return false;
  return true;
}

int run(const std::string& c) {
  long page = sysconf(_SC_PAGESIZE);
  // Double frees.
  for (std::size_t size : {std::size_t{24}, std::size_t{20000}, std::size_t{500000}}) {
    std::string name = "double-free-" + std::to_string(size);
    if (c == name) {
      void* p = launder(std::malloc(size));
      std::free(p);
      std::free(launder(p));
      return 0;
    }
  }
  if (c == "double-free-delayed") {
    void* p = launder(std::malloc(40));
    void* q = launder(std::malloc(40));
    std::free(p);
    std::free(q);
    std::free(launder(p));
    return 0;
  }
  if (c == "double-delete") {
    int* p = launder(new int(5));
    delete p;
    delete launder(p);
    return 0;
  }
  // Pointers never returned.
  if (c == "invalid-free-middle") std::free(launder(static_cast<char*>(std::malloc(64))) + 16);
  if (c == "invalid-free-unaligned") std::free(launder(static_cast<char*>(std::malloc(64))) + 1);
  if (c == "invalid-free-one") std::free(launder(reinterpret_cast<void*>(1)));
  if (c == "invalid-free-stack") {
    int local[4];
    std::free(launder(local));
  }
  if (c == "invalid-free-global") std::free(launder(g_global));
  if (c == "invalid-free-protnone")
    std::free(launder(mmap(nullptr, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)));
  if (c == "invalid-free-readonly")
    std::free(launder(mmap(nullptr, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)));
  if (c == "invalid-free-far") std::free(launder(reinterpret_cast<void*>(std::uintptr_t{0x7e0000000000})));
  if (c == "invalid-realloc-middle") g_sink = std::realloc(launder(static_cast<char*>(std::malloc(64))) + 32, 100) != nullptr;
  if (c == "invalid-usable-size-middle")
    g_sink = static_cast<char>(malloc_usable_size(launder(static_cast<char*>(std::malloc(64))) + 32));
  if (c == "usable-size-freed") {
    void* p = launder(std::malloc(64));
    std::free(p);
    g_sink = static_cast<char>(malloc_usable_size(launder(p)));
  }
  // Overflows of the requested size.
  if (c == "overflow-small" || c == "overflow-medium") {
    std::size_t size = c == "overflow-small" ? 13 : 30000;
    char* p = launder(static_cast<char*>(std::malloc(size)));
    p[size] = 'X';
    std::free(p);
  }
  if (c == "overflow-realloc") {
    char* p = launder(static_cast<char*>(std::malloc(100)));
    p[100] = 'X';
    g_sink = std::realloc(p, 200) != nullptr;
  }
  if (c == "overflow-new") {
    char* p = launder(new char[50]);
    p[50] = 'X';
    delete[] p;
  }
  if (c == "overflow-large") {
    char* p = launder(static_cast<char*>(std::malloc(1 << 20)));
    p[1 << 20] = 'X';
  }
  if (c == "underflow-large") {
    char* p = launder(static_cast<char*>(std::malloc(1 << 20)));
    p[-1] = 'X';
  }
  // After free.
  if (c == "write-after-free") {
    char* p = launder(static_cast<char*>(std::malloc(64)));
    std::free(p);
    launder(p)[5] = 'W';
    churn(64, 20000);
  }
  if (c == "read-after-free-large") {
    char* p = launder(static_cast<char*>(std::malloc(400000)));
    std::free(p);
    g_sink = launder(p)[1000];
  }
  if (c == "write-after-free-large") {
    char* p = launder(static_cast<char*>(std::malloc(400000)));
    std::free(p);
    launder(p)[1000] = 1;
  }
  // malloc(0).
  if (c == "malloc0-read") g_sink = *launder(static_cast<char*>(std::malloc(0)));
  if (c == "malloc0-write") *launder(static_cast<char*>(std::malloc(0))) = 1;
  // Sized and aligned deallocation.
  if (c == "delete-size-mismatch") {
    void* p = launder(::operator new(40));
    ::operator delete(p, 48);
  }
  if (c == "delete-align-mismatch") {
    void* p = launder(::operator new(100, std::align_val_t(64)));
    ::operator delete(p, std::align_val_t(32));
  }
  if (c == "delete-aligned-sized-mismatch") {
    void* p = launder(::operator new(100, std::align_val_t(64)));
    ::operator delete(p, 99, std::align_val_t(64));
  }
  if (c == "free-sized-mismatch" || c == "free-aligned-sized-mismatch" || c == "ok-free-sized") {
    auto fs = reinterpret_cast<free_sized_fn>(dlsym(RTLD_DEFAULT, "free_sized"));
    auto fas = reinterpret_cast<free_aligned_sized_fn>(dlsym(RTLD_DEFAULT, "free_aligned_sized"));
    if (!fs || !fas) {
      std::fprintf(stderr, "free_sized or free_aligned_sized is not defined\n");
      return 2;
    }
    void* p = launder(std::malloc(77));
    void* a = launder(std::aligned_alloc(256, 512));
    if (c == "free-sized-mismatch") fs(p, 76);
    if (c == "free-aligned-sized-mismatch") fas(a, 128, 512);
    fs(p, 77);
    fas(a, 256, 512);
    void* z = launder(std::calloc(10, 30));
    fs(z, 300);
    return 0;
  }
  // Correct programs: what they see.
  if (c == "ok-memory") {
    char* a = launder(static_cast<char*>(std::malloc(0)));
    char* b = launder(static_cast<char*>(std::malloc(0)));
    if (!a || !b || a == b) return 3;
    std::free(a);
    std::free(b);
    char* p = launder(static_cast<char*>(std::malloc(200)));
    if (!zero(p, 200)) return 4;  // fresh memory is zero
    std::memset(p, 0x41, 200);
    std::free(p);
    if (!zero(launder(p), 200)) return 5;  // freed memory holds no old data
    char* q = launder(static_cast<char*>(std::realloc(nullptr, 10)));
    std::strcpy(q, "123456789");
    q = launder(static_cast<char*>(std::realloc(q, 100000)));
    if (std::strcmp(q, "123456789") != 0) return 6;
    std::free(q);
    int* n = new int[100]();
    delete[] n;
    auto* big = new std::uint64_t[1000];
    ::operator delete[](big, 8000);
    return 0;
  }
  std::fprintf(stderr, "secure-victim: unknown case or the misuse was not caught: %s\n", c.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: secure-victim CASE\n");
    return 2;
  }
  return run(argv[1]);
}
