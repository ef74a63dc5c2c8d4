// tests/valgrind/buggy.c++ -- a user program on libcalloc with one deliberate bug
// per run, for tests/integration/valgrind-user.sh to run under memcheck.
//
//   buggy KIND    KIND: clean, use-after-free, overflow, leak, leak-big, uninitialised,
//                 double-free, interior-free, heap-uaf, heap-destroyed, lca-uaf,
//                 threads-clean, race, race-malloc (these three for helgrind),
//                 secure-clean, secure-overflow, secure-canary-read, secure-uaf,
//                 secure-uaf-large, secure-leak, secure-uninitialised,
//                 secure-double-free, secure-destroyed (a SecureAllocator's blocks:
//                 the hardened heap, in every build)
//
// Each bug sits in a function of its own, named after it, so that the script can
// check that memcheck's report shows the user's function in the stack.  The
// program is linked with libcalloc (the shared library): with the override on,
// malloc and operator new are libcalloc's; without it the plain-malloc cases use
// lca_malloc/lca_free instead.
#include <custom_alloc/memory_allocator.h++>
#include <custom_alloc/secure_allocator.h++>
#include <libcalloc.h>

#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"

#ifdef CALLOC_OVERRIDE
#define USER_MALLOC std::malloc
#define USER_FREE std::free
#define USER_REALLOC std::realloc
#define USER_CALLOC std::calloc
#else
#define USER_MALLOC lca_malloc
#define USER_FREE lca_free
#define USER_REALLOC lca_realloc
#define USER_CALLOC lca_calloc
#endif

// The compiler must not see through the bugs (it would fold or drop them).
template <typename T>
T* opaque(T* p) {
  asm volatile("" : "+r"(p));
  return p;
}

__attribute__((noinline)) int use_after_free() {
  auto* p = opaque(static_cast<volatile char*>(USER_MALLOC(32)));
  std::memset(const_cast<char*>(p), 7, 32);
  USER_FREE(const_cast<char*>(p));
  return p[3];  // BUG: read after free
}

__attribute__((noinline)) void heap_overflow() {
  auto* p = opaque(static_cast<volatile char*>(USER_MALLOC(64)));
  p[64] = 1;  // BUG: one byte past the end
  USER_FREE(const_cast<char*>(p));
}

void* g_leak_sink;
__attribute__((noinline)) void leak_a_block() {
  g_leak_sink = opaque(USER_MALLOC(48));
  static_cast<char*>(g_leak_sink)[0] = 1;
  g_leak_sink = nullptr;  // BUG: the only pointer to the block is gone
}

// A medium (arena) block and a large (mapped) one: libcalloc's tables must not
// make them look reachable.
__attribute__((noinline)) void leak_big_blocks() {
  g_leak_sink = opaque(USER_MALLOC(200000));
  static_cast<char*>(g_leak_sink)[0] = 1;
  g_leak_sink = opaque(USER_MALLOC(3 << 20));
  static_cast<char*>(g_leak_sink)[0] = 1;
  g_leak_sink = nullptr;  // BUG: the only pointers to both blocks are gone
}

__attribute__((noinline)) int read_uninitialised() {
  auto* p = opaque(static_cast<volatile char*>(USER_MALLOC(16)));
  int r = 0;
  if (p[3] == 42) {  // BUG: p[3] was never written
    std::puts("forty-two");
    r = 1;
  }
  USER_FREE(const_cast<char*>(p));
  return r;
}

__attribute__((noinline)) void free_twice() {
  void* p = opaque(USER_MALLOC(24));
  USER_FREE(p);
  USER_FREE(opaque(p));  // BUG: double free
}

__attribute__((noinline)) void free_interior() {
  char* p = opaque(static_cast<char*>(USER_MALLOC(80)));
  USER_FREE(opaque(p + 16));  // BUG: not the start of the block
}

__attribute__((noinline)) int use_after_free_in_heap() {
  custom_alloc::MemoryAllocator heap;
  auto* p = opaque(static_cast<volatile char*>(heap.allocate(200)));
  std::memset(const_cast<char*>(p), 5, 200);
  heap.deallocate(const_cast<char*>(p));
  return p[100];  // BUG: read after free, in an independent heap
}

// Not a bug: destroying an independent heap frees every block still in it, so
// memcheck must report no leak for them.
__attribute__((noinline)) void heap_destroyed_with_blocks() {
  custom_alloc::MemoryAllocator heap;
  for (int i = 0; i < 100; i++) static_cast<char*>(heap.allocate(16 + 37 * i))[0] = 1;
  static_cast<char*>(heap.allocate(3 << 20))[0] = 1;  // a large mapping too
}

__attribute__((noinline)) int use_after_free_lca() {
  auto* p = opaque(static_cast<volatile char*>(lca_malloc(40)));
  std::memset(const_cast<char*>(p), 9, 40);
  lca_free(const_cast<char*>(p));
  return p[39];  // BUG: read after free (lca_malloc is never intercepted by Valgrind)
}

// The same bugs on a SecureAllocator (issue 13): memcheck must see them as on
// the core heap, although the hardened heap checks misuse itself.  The heap is a
// global one, never destroyed, so that its leaked blocks stay leaked.
custom_alloc::SecureAllocator& secure_heap() {
  static auto* heap = new custom_alloc::SecureAllocator;
  return *heap;
}

__attribute__((noinline)) void secure_overflow() {
  auto* p = opaque(static_cast<volatile char*>(secure_heap().allocate(40)));
  p[40] = 1;  // BUG: one byte past the end (onto the canary: the free aborts too)
  secure_heap().deallocate(const_cast<char*>(p));
}

__attribute__((noinline)) int secure_canary_read() {
  auto* p = opaque(static_cast<volatile char*>(secure_heap().allocate(40)));
  std::memset(const_cast<char*>(p), 1, 40);
  int r = p[41];  // BUG: reads the canary after the block
  secure_heap().deallocate(const_cast<char*>(p));
  return r;
}

__attribute__((noinline)) int secure_use_after_free() {
  auto* p = opaque(static_cast<volatile char*>(secure_heap().allocate(72)));
  std::memset(const_cast<char*>(p), 7, 72);
  secure_heap().deallocate(const_cast<char*>(p));
  return p[10];  // BUG: read after free (the block waits in the quarantine)
}

__attribute__((noinline)) int secure_use_after_free_large() {
  auto* p = opaque(static_cast<volatile char*>(secure_heap().allocate(300000)));
  std::memset(const_cast<char*>(p), 7, 300000);
  secure_heap().deallocate(const_cast<char*>(p));
  return p[1000];  // BUG: read after free (memcheck reports it, then the read faults)
}

__attribute__((noinline)) void secure_leak() {
  g_leak_sink = opaque(secure_heap().allocate(56));
  static_cast<char*>(g_leak_sink)[0] = 1;
  g_leak_sink = opaque(secure_heap().allocate(250000));
  static_cast<char*>(g_leak_sink)[0] = 1;
  g_leak_sink = nullptr;  // BUG: the only pointers to both blocks are gone
}

__attribute__((noinline)) int secure_read_uninitialised() {
  auto* p = opaque(static_cast<volatile char*>(secure_heap().allocate(24)));
  int r = 0;
  // BUG: p[5] was never written (the hardened heap zeroes fresh blocks, but a
  // program may not rely on that: memcheck reports it as for malloc)
  if (p[5] == 42) {
    std::puts("forty-two");
    r = 1;
  }
  secure_heap().deallocate(const_cast<char*>(p));
  return r;
}

__attribute__((noinline)) void secure_free_twice() {
  void* p = opaque(secure_heap().allocate(24));
  secure_heap().deallocate(p);
  secure_heap().deallocate(opaque(p));  // BUG: double free
}

// Not a bug: a SecureAllocator destroyed with blocks in it frees them all.
__attribute__((noinline)) void secure_destroyed_with_blocks() {
  custom_alloc::SecureAllocator heap;
  for (int i = 0; i < 100; i++) static_cast<char*>(heap.allocate(16 + 37 * i))[0] = 1;
  static_cast<char*>(heap.allocate(3 << 20))[0] = 1;  // a large block too
}

// A correct program on a SecureAllocator: every size tier, realloc in place and
// moving, freed blocks reused.
__attribute__((noinline)) int secure_correct_program() {
  custom_alloc::SecureAllocator heap;
  std::vector<char*> blocks;
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 200; i++) {
      std::size_t size = static_cast<std::size_t>(i) * 331 % 70000 + 1;
      auto* p = static_cast<char*>(heap.allocate(size));
      if (!p) return 1;
      std::memset(p, i & 255, size);
      blocks.push_back(p);
    }
    for (std::size_t i = 0; i < blocks.size(); i++) {
      std::size_t size = i % 200 * 331 % 70000 + 1;
      auto* q = static_cast<char*>(heap.reallocate(blocks[i], size + 3));  // in place, mostly
      if (!q || q[size - 1] != static_cast<char>(i % 200 & 255)) return 1;
      q[size + 2] = 0;
      blocks[i] = q;
    }
    for (char* p : blocks) heap.deallocate(p);
    blocks.clear();
  }
  return 0;
}

// For helgrind.  Not a bug: six threads (more than the machine's cores) allocate
// blocks of every tier and hand them, under a mutex, to the next thread, which
// frees them (remote frees) -- helgrind must report nothing of libcalloc.
__attribute__((noinline)) int threads_handing_blocks_over() {
  constexpr int kThreads = 6, kRounds = 200;
  std::mutex lock;
  std::vector<void*> mailbox[kThreads];
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; t++) {
    pool.emplace_back([&, t] {
      for (int r = 0; r < kRounds; r++) {
        std::size_t size = static_cast<std::size_t>(r * 131 + t * 7) % 3000 + 1;
        if (r % 50 == 0) size = static_cast<std::size_t>(200000 + (r % 3) * (1 << 20));
        auto* p = static_cast<unsigned char*>(USER_MALLOC(size));
        std::memset(p, t, size);
        std::vector<void*> mine;
        {
          std::lock_guard<std::mutex> g(lock);
          mailbox[(t + 1) % kThreads].push_back(p);
          mine.swap(mailbox[t]);
        }
        for (void* q : mine) USER_FREE(q);
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& box : mailbox)
    for (void* q : box) USER_FREE(q);
  return 0;
}

// For helgrind.  BUG: two threads increment a counter in a malloc'd block without
// a lock; helgrind must report the race, in this function.  They start together
// (a barrier) and call no allocator function while they race.
pthread_barrier_t g_race_start;
__attribute__((noinline)) void racy_increment(int* counter) {
  pthread_barrier_wait(&g_race_start);
  for (int i = 0; i < 1000; i++) ++*opaque(counter);
}
__attribute__((noinline)) int threads_racing_on_a_block() {
  auto* counter = static_cast<int*>(USER_MALLOC(sizeof(int)));
  *counter = 0;
  pthread_barrier_init(&g_race_start, nullptr, 2);
  std::thread a(racy_increment, counter), b(racy_increment, counter);
  a.join();
  b.join();
  pthread_barrier_destroy(&g_race_start);
  int seen = *counter;
  USER_FREE(counter);
  return seen > 0 ? 0 : 1;
}

// For helgrind.  BUG: as `race', but the two threads take turns (three each),
// handing the turn over through pipes, which helgrind does not take as
// synchronisation, and call malloc and free between taking the turn and their
// increment and again before handing it over -- so only libcalloc's calls lie
// between the two threads' accesses.  Had libcalloc a lock helgrind sees (it
// used to), helgrind would take it as ordering them and report nothing; the race
// must be reported, in this function.
int g_turn[2][2];  // g_turn[t]: the pipe that gives thread t its turn
__attribute__((noinline)) void racy_increment_between_calls(int* counter, int me) {
  char token = 0;
  for (int round = 0; round < 3; round++) {
    if ((me == 1 || round > 0) && read(g_turn[me][0], &token, 1) != 1) return;
    void* scratch = USER_MALLOC(40);
    USER_FREE(opaque(scratch));
    ++*opaque(counter);  // BUG: no lock, and no synchronisation helgrind sees
    scratch = USER_MALLOC(24);
    USER_FREE(opaque(scratch));
    if (write(g_turn[1 - me][1], &token, 1) != 1) return;
  }
}
__attribute__((noinline)) int threads_racing_between_allocations() {
  if (pipe(g_turn[0]) != 0 || pipe(g_turn[1]) != 0) return 1;
  auto* counter = static_cast<int*>(USER_MALLOC(sizeof(int)));
  *counter = 0;
  std::thread a(racy_increment_between_calls, counter, 0), b(racy_increment_between_calls, counter, 1);
  a.join();
  b.join();
  int seen = *counter;
  USER_FREE(counter);
  for (auto& p : g_turn) {
    close(p[0]);
    close(p[1]);
  }
  return seen == 6 ? 0 : 1;
}

// A correct program that exercises every path: sizes from every tier, realloc
// in place and moving, calloc, aligned allocation, operator new, containers.
__attribute__((noinline)) int correct_program() {
  std::vector<void*> blocks;
  for (int i = 0; i < 300; i++) {
    std::size_t size = static_cast<std::size_t>(i) * 97 % 20000 + 1;
    auto* p = static_cast<unsigned char*>(USER_MALLOC(size));
    if (!p) return 1;
    std::memset(p, i & 255, size);
    blocks.push_back(p);
  }
  for (std::size_t i = 0; i < blocks.size(); i++) {
    std::size_t size = i * 97 % 20000 + 1;
    auto* q = static_cast<unsigned char*>(USER_REALLOC(blocks[i], size * 2 + 1));
    if (!q) return 1;
    if (q[size - 1] != (i & 255)) return 1;
    blocks[i] = q;
  }
  for (void* p : blocks) USER_FREE(p);
  auto* z = static_cast<unsigned char*>(USER_CALLOC(1000, 3));
  for (int i = 0; i < 3000; i++)
    if (z[i]) return 1;
  USER_FREE(z);
  void* big = USER_MALLOC(5 << 20);
  std::memset(big, 1, 5 << 20);
  big = USER_REALLOC(big, 9 << 20);  // mremap
  if (static_cast<unsigned char*>(big)[(5 << 20) - 1] != 1) return 1;
  USER_FREE(big);
  void* a = nullptr;
  if (lca_posix_memalign(&a, 4096, 1000) != 0) return 1;
  std::memset(a, 3, 1000);
  lca_free(a);
  std::string s;
  for (int i = 0; i < 1000; i++) s += std::to_string(i);
  auto* v = new std::vector<int>(1000, 4);
  int sum = 0;
  for (int x : *v) sum += x;
  delete v;
  custom_alloc::MemoryAllocator heap;
  void* h = heap.allocate(100);
  h = heap.reallocate(h, 5000);
  heap.deallocate(h);
  return sum == 4000 && s.size() > 1000 ? 0 : 1;
}

int main(int argc, char** argv) {
  std::string kind = argc > 1 ? argv[1] : "clean";
  if (kind == "clean") return correct_program();
  if (kind == "use-after-free") return use_after_free() == 99;
  if (kind == "overflow") heap_overflow();
  if (kind == "leak") leak_a_block();
  if (kind == "leak-big") leak_big_blocks();
  if (kind == "uninitialised") return read_uninitialised();
  if (kind == "double-free") free_twice();
  if (kind == "interior-free") free_interior();
  if (kind == "heap-uaf") return use_after_free_in_heap() == 99;
  if (kind == "heap-destroyed") heap_destroyed_with_blocks();
  if (kind == "lca-uaf") return use_after_free_lca() == 99;
  if (kind == "threads-clean") return threads_handing_blocks_over();
  if (kind == "secure-clean") return secure_correct_program();
  if (kind == "secure-overflow") secure_overflow();
  if (kind == "secure-canary-read") return secure_canary_read();
  if (kind == "secure-uaf") return secure_use_after_free() == 99;
  if (kind == "secure-uaf-large") return secure_use_after_free_large() == 99;
  if (kind == "secure-leak") secure_leak();
  if (kind == "secure-uninitialised") return secure_read_uninitialised();
  if (kind == "secure-double-free") secure_free_twice();
  if (kind == "secure-destroyed") secure_destroyed_with_blocks();
  if (kind == "race") return threads_racing_on_a_block();
  if (kind == "race-malloc") return threads_racing_between_allocations();
  return 0;
}
