// huge.c++ -- huge-page blocks: the placement policy behind HugePageAllocator.
//
// huge_alloc tries, in order: the hugetlbfs pool of the requested page size
// (MAP_HUGETLB | MAP_HUGE_2MB/1GB; the kernel reserves the pages at mmap time, so
// an empty or exhausted pool is a clean ENOMEM here, never a SIGBUS at first
// touch), then an ordinary mapping aligned to the page size and advised
// MADV_HUGEPAGE (transparent huge pages, when the system mode is `always` or
// `madvise` and the process has not switched THP off), then the same mapping
// advised MADV_NOHUGEPAGE, so that a block reported as `normal` really is made of
// 4 KiB pages even when the system mode is `always`.  Each block is recorded in
// its allocator's table (see huge.h++).  Reading /sys and /proc uses fixed
// buffers: nothing here calls malloc.
#include "huge.h++"
#include "placement.h++"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <new>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "chunk.h++"
#include "config.h"
#include "large.h++"
#include "lifecycle.h++"
#include "module.h++"
#include "os.h++"
#include "report.h++"
#include "sanitizer.h++"
#include "vg.h++"

namespace lca {

struct HugeState {
  pthread_mutex_t lock;
  // fork(): the forking thread's token while another thread forks, stored under
  // the lock by the prepare handler, which then releases the lock
  // (huge_lock_all); nullptr otherwise.  Beside the lock: state_lock reads it.
  std::atomic<const void*> forking;
  HugeBlock* slots;      // capacity entries; base == nullptr marks a free slot
  std::size_t capacity;  // a power of two
  std::size_t count;
  unsigned try_mask;
  HugeCounters counters;
  HugeState* next;  // every live HugeState, for huge_coverage()
  HugeState* prev;
};

namespace {

#ifdef CALLOC_HUGE
constexpr unsigned kBuiltBackings = kHugeTryAll;
#else
constexpr unsigned kBuiltBackings = 0;
#endif

int backing_slot(HugeBacking b) { return static_cast<int>(b) - 1; }

// Every live HugeState (huge_coverage walks them), and what outlives them.
constinit pthread_mutex_t g_states_lock = PTHREAD_MUTEX_INITIALIZER;
constinit HugeState* g_states = nullptr;

// state_lock found s->forking set, s's lock held: unless this thread is the
// forking one, it lets go and waits for g_states_lock, which the forking thread
// holds from before it set the flag until after it cleared it, then takes the
// lock again.  (A thread holding g_states_lock cannot find the flag set: the
// forking thread set it holding g_states_lock.)
__attribute__((noinline, cold)) void state_lock_wait_fork(HugeState* s) {
  fork_wait(s->forking, &s->lock, &g_states_lock);
}

// Takes s's lock; waits while another thread forks (the prepare handler holds
// no HugeState's lock across the fork: huge_lock_all).
inline void state_lock(const HugeState* cs) {
  auto* s = const_cast<HugeState*>(cs);
  lca_mutex_lock(&s->lock);
  if (__builtin_expect(s->forking.load(std::memory_order_relaxed) != nullptr, 0)) state_lock_wait_fork(s);
}
constinit std::atomic<std::size_t> g_hugetlb_fallbacks{0};

// huge_thp_policy(), once read: bit 0 valid, bit 1 usable, bit 2 always.
constinit std::atomic<unsigned> g_thp_policy{0};

constinit std::atomic<std::size_t> g_purged_ranges{0};
constinit std::atomic<std::size_t> g_kept_ranges{0};
constinit std::atomic<std::size_t> g_kept_bytes{0};

std::size_t slot_of(const void* p, std::size_t capacity) {
  // Blocks start at least 2 MiB-aligned: the low bits carry no information.
  auto a = reinterpret_cast<std::uintptr_t>(p) >> 21;
  return static_cast<std::size_t>((a * 0x9E3779B97F4A7C15ull) >> 20) & (capacity - 1);
}

HugeBlock* alloc_slots(std::size_t capacity) {
  return static_cast<HugeBlock*>(os_map(capacity * sizeof(HugeBlock)));  // zero-filled
}

// The slot holding p, or the free slot where p would go.
std::size_t find_slot(const HugeState* s, const void* p) {
  std::size_t i = slot_of(p, s->capacity);
  while (s->slots[i].base && s->slots[i].base != p) i = (i + 1) & (s->capacity - 1);
  return i;
}

// Called with the lock held; false when a bigger table cannot be mapped.
bool table_insert(HugeState* s, const HugeBlock& b) {
  if ((s->count + 1) * 2 > s->capacity) {
    std::size_t new_capacity = s->capacity * 2;
    HugeBlock* fresh = alloc_slots(new_capacity);
    if (!fresh) return false;
    HugeBlock* old = s->slots;
    std::size_t old_capacity = s->capacity;
    s->slots = fresh;
    s->capacity = new_capacity;
    for (std::size_t i = 0; i < old_capacity; ++i)
      if (old[i].base) s->slots[find_slot(s, old[i].base)] = old[i];
    os_unmap(old, old_capacity * sizeof(HugeBlock));
  }
  s->slots[find_slot(s, b.base)] = b;
  ++s->count;
  return true;
}

// Called with the lock held: empties slot i and shifts back the entries of its
// probe chain that would no longer be found.
void table_remove(HugeState* s, std::size_t i) {
  const std::size_t mask = s->capacity - 1;
  std::size_t hole = i;
  for (std::size_t j = (i + 1) & mask; s->slots[j].base; j = (j + 1) & mask) {
    std::size_t home = slot_of(s->slots[j].base, s->capacity);
    // Move j into the hole unless its home lies cyclically in (hole, j].
    bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (!stays) {
      s->slots[hole] = s->slots[j];
      hole = j;
    }
  }
  s->slots[hole] = HugeBlock{};
  --s->count;
}

// The first chunk of every program reads the THP mode (open, read, close) and
// asks prctl whether THP is off for the process.  libc's open64 and prctl are in
// 64 KiB windows of its text that a small C program does not otherwise map: at
// 6 of libc's 16 load offsets mod 64 KiB, one more window of libc resident
// (docs/design.md, "libc's pages").  On x86-64 Linux these calls are made here
// as system calls, returning -errno on failure (no errno written, no
// cancellation point: none of them waits).  Elsewhere, libc's.
namespace {
#if defined(__x86_64__) && defined(__linux__)
[[gnu::always_inline]] inline long raw_syscall(long nr, long a, long b = 0, long c = 0, long d = 0, long e = 0) {
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  long ret;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
               : "rcx", "r11", "memory");
  return ret;
}
[[gnu::always_inline]] inline int sys_open_read(const char* path) {
  return static_cast<int>(raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC));
}
[[gnu::always_inline]] inline long sys_read(int fd, void* buf, std::size_t n) {
  return raw_syscall(SYS_read, fd, reinterpret_cast<long>(buf), static_cast<long>(n));
}
[[gnu::always_inline]] inline void sys_close(int fd) { raw_syscall(SYS_close, fd); }
[[gnu::always_inline]] inline long sys_prctl(int option) { return raw_syscall(SYS_prctl, option); }
#else
inline int sys_open_read(const char* path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}
inline long sys_read(int fd, void* buf, std::size_t n) {
  ssize_t r = read(fd, buf, n);
  return r < 0 ? -errno : r;
}
inline void sys_close(int fd) { close(fd); }
inline long sys_prctl(int option) {
  int r = prctl(option, 0, 0, 0, 0);
  return r < 0 ? -errno : r;
}
#endif
}  // namespace

// Reads a small /sys file into buf (NUL-terminated); false when it cannot.
LCA_CORE_TEXT bool read_small_file(const char* path, char* buf, std::size_t cap) {
  int fd = sys_open_read(path);
  if (fd < 0) return false;
  std::size_t len = 0;
  while (len + 1 < cap) {
    long n = sys_read(fd, buf + len, cap - 1 - len);
    if (n == -EINTR) continue;
    if (n <= 0) break;
    len += static_cast<std::size_t>(n);
  }
  sys_close(fd);
  buf[len] = 0;
  return true;
}

bool read_number_file(const char* path, std::size_t* out) {
  char buf[64];
  if (!read_small_file(path, buf, sizeof buf)) return false;
  std::size_t v = 0;
  const char* p = buf;
  if (*p < '0' || *p > '9') return false;
  for (; *p >= '0' && *p <= '9'; ++p) v = v * 10 + static_cast<std::size_t>(*p - '0');
  *out = v;
  return true;
}

// "/sys/kernel/mm/hugepages/hugepages-2048kB/" + leaf
void pool_path(char* out, std::size_t cap, std::size_t page_size, const char* leaf) {
  char digits[24];
  int n = 0;
  std::size_t kb = page_size >> 10;
  do {
    digits[n++] = static_cast<char>('0' + kb % 10);
    kb /= 10;
  } while (kb);
  std::size_t len = 0;
  auto put = [&](const char* s) {
    while (*s && len + 1 < cap) out[len++] = *s++;
  };
  put("/sys/kernel/mm/hugepages/hugepages-");
  while (n && len + 1 < cap) out[len++] = digits[--n];
  put("kB/");
  put(leaf);
  out[len] = 0;
}

unsigned page_shift_of(std::size_t page_size) { return static_cast<unsigned>(__builtin_ctzll(page_size)); }

// Thread cancellation off while it lives: open, read and close are
// cancellation points, and a thread cancelled in one of smaps_for_each's reads
// left the file open (tests/unit/threads, test_cancelled_threads_leave_nothing:
// 54-59 descriptors left open for 60 threads cancelled).  Not a cancellation
// point then.
class NoCancel {
 public:
  NoCancel() { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old_); }
  ~NoCancel() { pthread_setcancelstate(old_, nullptr); }
  NoCancel(const NoCancel&) = delete;
  NoCancel& operator=(const NoCancel&) = delete;

 private:
  int old_ = PTHREAD_CANCEL_ENABLE;
};

// One pass over /proc/self/smaps: calls fn(start, end, anon_huge_bytes) for every
// mapping.  Lines are read into a fixed buffer; an over-long line (a long path
// name) is cut, which loses nothing: only the address range at its start matters.
template <class Fn>
bool smaps_for_each(Fn&& fn) {
  NoCancel no_cancel;
  int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[8192];
  std::size_t have = 0;
  bool in_vma = false, skipping = false, eof = false;
  std::uintptr_t start = 0, end = 0;
  std::size_t anon_huge = 0;
  auto flush = [&] {
    if (in_vma) fn(start, end, anon_huge);
    in_vma = false;
  };
  auto hexval = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  auto handle_line = [&](const char* line, std::size_t len) {
    std::size_t i = 0;
    std::uintptr_t a = 0;
    while (i < len && hexval(line[i]) >= 0) a = a * 16 + static_cast<std::uintptr_t>(hexval(line[i++]));
    if (i > 0 && i < len && line[i] == '-') {  // "start-end perms ..."
      flush();
      std::uintptr_t b = 0;
      ++i;
      while (i < len && hexval(line[i]) >= 0) b = b * 16 + static_cast<std::uintptr_t>(hexval(line[i++]));
      start = a;
      end = b;
      anon_huge = 0;
      in_vma = true;
      return;
    }
    static const char key[] = "AnonHugePages:";
    if (len > sizeof key - 1 && std::memcmp(line, key, sizeof key - 1) == 0) {
      std::size_t k = sizeof key - 1, kb = 0;
      while (k < len && line[k] == ' ') ++k;
      while (k < len && line[k] >= '0' && line[k] <= '9') kb = kb * 10 + static_cast<std::size_t>(line[k++] - '0');
      anon_huge = kb << 10;
    }
  };
  while (!eof || have) {
    if (!eof && have < sizeof buf) {
      ssize_t n = read(fd, buf + have, sizeof buf - have);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) eof = true;
      else have += static_cast<std::size_t>(n);
    }
    std::size_t pos = 0;
    for (;;) {
      char* nl = static_cast<char*>(std::memchr(buf + pos, '\n', have - pos));
      if (!nl) break;
      std::size_t len = static_cast<std::size_t>(nl - (buf + pos));
      if (!skipping) handle_line(buf + pos, len);
      skipping = false;
      pos += len + 1;
    }
    if (pos == 0 && have == sizeof buf) {  // one line fills the buffer: keep its start only
      if (!skipping) handle_line(buf, have);
      skipping = true;
      pos = have;
    }
    if (eof && pos == 0 && have) {  // a last line without newline
      if (!skipping) handle_line(buf, have);
      pos = have;
    }
    std::memmove(buf, buf + pos, have - pos);
    have -= pos;
  }
  close(fd);
  flush();
  return true;
}

// Maps size bytes for page_size with the first backing allowed by try_mask that
// works.  *fell_back: hugetlb was tried and refused.
void* map_block(std::size_t size, std::size_t page_size, unsigned try_mask, HugeBacking* backing,
                bool* fell_back) {
  *fell_back = false;
  if (try_mask & kHugeTryHugetlb) {
    if (void* p = os_map_hugetlb(size, page_shift_of(page_size))) {
      *backing = HugeBacking::hugetlb;
      return p;
    }
    *fell_back = true;
  }
  void* p = os_map_aligned(size, page_size);
  if (!p) return nullptr;
  if ((try_mask & kHugeTryTransparent) && huge_thp_usable() && os_advise_huge(p, size, true)) {
    *backing = HugeBacking::transparent;
    return p;
  }
  os_advise_huge(p, size, false);  // fails harmlessly where the kernel has no THP
  *backing = HugeBacking::normal;
  return p;
}

}  // namespace

bool huge_built() { return kBuiltBackings != 0; }

HugeState* huge_state_create() {
  void* mem = os_map(sizeof(HugeState));
  if (!mem) return nullptr;
  auto* s = new (mem) HugeState{};
  pthread_mutex_init(&s->lock, nullptr);
  s->capacity = os_page_size() / sizeof(HugeBlock);
  if (s->capacity < 8) s->capacity = 8;
  s->capacity = std::size_t{1} << (63 - __builtin_clzll(s->capacity));  // a power of two
  s->slots = alloc_slots(s->capacity);
  if (!s->slots) {
    pthread_mutex_destroy(&s->lock);
    os_unmap(mem, sizeof(HugeState));
    return nullptr;
  }
  s->try_mask = kBuiltBackings;
  lca_mutex_lock(&g_states_lock);
  s->next = g_states;
  if (g_states) g_states->prev = s;
  g_states = s;
  lca_mutex_unlock(&g_states_lock);
  return s;
}

void huge_state_destroy(HugeState* s) {
  if (!s) return;
  lca_mutex_lock(&g_states_lock);
  if (s->prev)
    s->prev->next = s->next;
  else
    g_states = s->next;
  if (s->next) s->next->prev = s->prev;
  lca_mutex_unlock(&g_states_lock);
  for (std::size_t i = 0; i < s->capacity; ++i)
    if (s->slots[i].base) os_unmap(s->slots[i].base, s->slots[i].size);
  os_unmap(s->slots, s->capacity * sizeof(HugeBlock));
  pthread_mutex_destroy(&s->lock);
  s->~HugeState();
  os_unmap(s, sizeof(HugeState));
}

// fork(): g_states_lock is held across it; each HugeState's lock is taken and
// released once, its flag set under it: an operation in progress ends first,
// one that takes the lock later waits for the fork (state_lock).  Before
// session 19 every HugeState's lock was held, one a HugePageAllocator.
LCA_CORE_TEXT void huge_lock_all() {
  lca_mutex_lock(&g_states_lock);
  fork_hold(&g_states_lock);
  const void* me = fork_token();
  for (HugeState* s = g_states; s; s = s->next) {
    lca_mutex_lock(&s->lock);
    s->forking.store(me, std::memory_order_relaxed);
    lca_mutex_unlock(&s->lock);
  }
}

LCA_CORE_TEXT void huge_unlock_all() {
  // Before g_states_lock goes: a thread waiting for it tests the flag again.
  for (HugeState* s = g_states; s; s = s->next) s->forking.store(nullptr, std::memory_order_relaxed);
  lca_mutex_unlock(&g_states_lock);
}

// A HugeState's lock is made again although this thread does not hold it: a
// thread the fork did not copy may have held it for the instant between taking
// it and finding the flag (no operation was in progress).
LCA_CORE_TEXT void huge_reinit_after_fork() {
  for (HugeState* s = g_states; s; s = s->next) {
    s->forking.store(nullptr, std::memory_order_relaxed);
    pthread_mutex_init(&s->lock, nullptr);
  }
  tsan_released_at_fork(&g_states_lock);
  pthread_mutex_init(&g_states_lock, nullptr);
}

void* huge_alloc(HugeState* s, std::size_t size, std::size_t page_size) {
  if (page_size != kHugePage2M && page_size != kHugePage1G) {
    errno = EINVAL;
    return nullptr;
  }
  if (size > kHugeMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  if (size == 0) size = 1;
  size = align_up(size, page_size);
  // A backing refused on the way (an empty hugetlb pool: ENOMEM) leaves errno
  // set; a block that fell back is a success, which changes no errno.
  const int saved_errno = errno;
  state_lock(s);
  unsigned try_mask = s->try_mask;
  lca_mutex_unlock(&s->lock);

  HugeBacking backing = HugeBacking::normal;
  bool fell_back = false;
  void* p = map_block(size, page_size, try_mask, &backing, &fell_back);
  if (!p) {
    errno = ENOMEM;
    return nullptr;
  }
  HugeBlock b{p, size, page_size, backing};
  state_lock(s);
  bool recorded = table_insert(s, b);
  if (recorded) {
    HugeCounters& c = s->counters;
    c.live_blocks[backing_slot(backing)] += 1;
    c.live_bytes[backing_slot(backing)] += size;
    c.allocations += 1;
    c.hugetlb_fallbacks += fell_back ? 1 : 0;
  }
  lca_mutex_unlock(&s->lock);
  if (recorded && fell_back) g_hugetlb_fallbacks.fetch_add(1, std::memory_order_relaxed);
  if (!recorded) {
    os_unmap(p, size);
    errno = ENOMEM;
    return nullptr;
  }
  vg_show_clean(p, size);  // the user's memory (the OS layer hid the mapping)
  errno = saved_errno;
  return p;
}

bool huge_free(HugeState* s, void* p) {
  state_lock(s);
  std::size_t i = find_slot(s, p);
  if (!p || s->slots[i].base != p) {
    lca_mutex_unlock(&s->lock);
    return false;
  }
  HugeBlock b = s->slots[i];
  table_remove(s, i);
  HugeCounters& c = s->counters;
  c.live_blocks[backing_slot(b.backing)] -= 1;
  c.live_bytes[backing_slot(b.backing)] -= b.size;
  c.deallocations += 1;
  lca_mutex_unlock(&s->lock);
  os_unmap(b.base, b.size);
  return true;
}

// The HugePageAllocators' functions for their huge blocks given to the core's
// entry points (module.h++).  Each walks the live allocators under g_states_lock
// (then a table's lock, as the fork handler takes them), which it holds to the
// end: the allocator that owns the block is not destroyed meanwhile.  A block
// of a destroyed allocator is in no table: nobody's.
namespace {
// The allocator whose live block starts at p (its entry in *b), g_states_lock held.
HugeState* owner_locked(const void* p, HugeBlock* b) {
  // Huge blocks start at least 2 MiB-aligned.
  if (!p || (reinterpret_cast<std::uintptr_t>(p) & (kHugePage2M - 1)) != 0) return nullptr;
  for (HugeState* s = g_states; s; s = s->next)
    if (huge_lookup(s, p, b)) return s;
  return nullptr;
}

bool module_free(void* p, const char*) {
  if ((reinterpret_cast<std::uintptr_t>(p) & (kHugePage2M - 1)) != 0) return false;
  bool freed = false;
  lca_mutex_lock(&g_states_lock);
  for (HugeState* s = g_states; s && !freed; s = s->next) freed = huge_free(s, p);
  lca_mutex_unlock(&g_states_lock);
  return freed;
}

// The block's mapped size, as huge_allocation_size says.
bool module_usable_size(const void* p, std::size_t* out, const char*) {
  HugeBlock b;
  lca_mutex_lock(&g_states_lock);
  bool found = owner_locked(p, &b) != nullptr;
  lca_mutex_unlock(&g_states_lock);
  if (found) *out = b.size;
  return found;
}

// The sizes round up to the block's page size as allocate_huge's do.  The same
// rounded size: p.  Smaller: the tail's pages are unmapped, p stays (with its
// backing; no copy, no new mapping that could fail).  Larger: a new block of the
// same allocator and page size (its backing chosen anew), the old bytes copied,
// the old block freed; counted as one allocate_huge and one deallocate_huge.
bool module_resize(void* p, std::size_t size, bool may_move, void** out) {
  HugeBlock b;
  lca_mutex_lock(&g_states_lock);
  HugeState* s = owner_locked(p, &b);
  if (!s) {
    lca_mutex_unlock(&g_states_lock);
    return false;
  }
  void* q = p;
  std::size_t want = size > kHugeMaxRequest ? 0 : align_up(size ? size : 1, b.page_size);
  if (want == 0) {
    q = nullptr;
    errno = ENOMEM;
  } else if (want < b.size) {
    state_lock(s);
    std::size_t i = find_slot(s, p);
    bool same = s->slots[i].base == p && s->slots[i].size == b.size;  // (not freed meanwhile)
    if (same) {
      s->slots[i].size = want;
      s->counters.live_bytes[backing_slot(b.backing)] -= b.size - want;
    }
    lca_mutex_unlock(&s->lock);
    if (!same) report_fatal("Use after free", p, "realloc: the huge block was freed");
    os_unmap(static_cast<char*>(p) + want, b.size - want);
  } else if (want > b.size) {
    q = may_move ? huge_alloc(s, want, b.page_size) : nullptr;
    if (q) {
      std::memcpy(q, p, b.size);
      huge_free(s, p);
    } else if (may_move) {
      errno = ENOMEM;
    }
  }
  lca_mutex_unlock(&g_states_lock);
  *out = q;
  return true;
}

constinit const ModuleOps kHugeModule{module_free, module_usable_size, module_resize};
}  // namespace

const ModuleOps* huge_module() { return &kHugeModule; }

bool huge_lookup(const HugeState* s, const void* p, HugeBlock* out) {
  auto* m = const_cast<pthread_mutex_t*>(&s->lock);
  state_lock(s);
  std::size_t i = find_slot(s, p);
  bool found = p && s->slots[i].base == p;
  if (found) *out = s->slots[i];
  lca_mutex_unlock(m);
  return found;
}

HugeCounters huge_counters(const HugeState* s) {
  auto* m = const_cast<pthread_mutex_t*>(&s->lock);
  state_lock(s);
  HugeCounters c = s->counters;
  lca_mutex_unlock(m);
  return c;
}

void huge_set_backings(HugeState* s, unsigned try_mask) {
  state_lock(s);
  s->try_mask = try_mask & kBuiltBackings;
  lca_mutex_unlock(&s->lock);
}

unsigned huge_backings(const HugeState* s) {
  auto* m = const_cast<pthread_mutex_t*>(&s->lock);
  state_lock(s);
  unsigned mask = s->try_mask;
  lca_mutex_unlock(m);
  return mask;
}

std::size_t huge_resident_huge_bytes(const HugeState* s, HugeBacking of) {
  auto* m = const_cast<pthread_mutex_t*>(&s->lock);
  std::size_t total = 0;
  if (of == HugeBacking::none || of == HugeBacking::hugetlb) {
    state_lock(s);
    total += s->counters.live_bytes[backing_slot(HugeBacking::hugetlb)];
    lca_mutex_unlock(m);
  }
  if (of == HugeBacking::hugetlb) return total;
  // A mapping counts when it starts inside one of our transparent or normal
  // blocks: blocks are advised as a whole, so the kernel splits mappings at their
  // edges (two neighbouring blocks with the same advice may merge into one mapping,
  // which then starts in the first of them and is counted once).
  smaps_for_each([&](std::uintptr_t start, std::uintptr_t, std::size_t anon_huge) {
    if (anon_huge == 0) return;
    state_lock(s);
    for (std::size_t i = 0; i < s->capacity; ++i) {
      const HugeBlock& b = s->slots[i];
      if (!b.base || b.backing == HugeBacking::hugetlb) continue;
      if (of != HugeBacking::none && b.backing != of) continue;
      auto base = reinterpret_cast<std::uintptr_t>(b.base);
      if (start >= base && start < base + b.size) {
        total += anon_huge;
        break;
      }
    }
    lca_mutex_unlock(m);
  });
  return total;
}

std::size_t huge_smaps_anon_huge_bytes(const void* start, std::size_t size) {
  auto lo = reinterpret_cast<std::uintptr_t>(start);
  std::size_t total = 0;
  smaps_for_each([&](std::uintptr_t vma_start, std::uintptr_t, std::size_t anon_huge) {
    if (vma_start >= lo && vma_start < lo + size) total += anon_huge;
  });
  return total;
}

std::size_t huge_heap_anon_huge_bytes() { return huge_coverage().thp_heap; }

namespace {

// Whole 2 MiB ranges of registered chunks inside [lo, hi).
std::size_t chunk_ranges_in(std::uintptr_t lo, std::uintptr_t hi) {
  constexpr std::uintptr_t kTop = std::uintptr_t{1} << kAddressBits;
  if (hi > kTop) hi = kTop;
  std::size_t n = 0;
  for (std::uintptr_t c = lo & ~(std::uintptr_t{kChunkSize} - 1); c < hi; c += kChunkSize) {
    if (chunk_kind_of(reinterpret_cast<void*>(c)) == ChunkKind{}) continue;
    n += huge_whole_ranges(c > lo ? c : lo, c + kChunkSize < hi ? c + kChunkSize : hi);
  }
  return n;
}

// Whole 2 MiB ranges of transparent and normal blocks of every HugeState inside
// [lo, hi) (hugetlb mappings report no AnonHugePages).
std::size_t block_ranges_in(std::uintptr_t lo, std::uintptr_t hi) {
  std::size_t n = 0;
  lca_mutex_lock(&g_states_lock);
  for (HugeState* s = g_states; s; s = s->next) {
    state_lock(s);
    for (std::size_t i = 0; i < s->capacity; ++i) {
      const HugeBlock& b = s->slots[i];
      if (!b.base || b.backing == HugeBacking::hugetlb) continue;
      auto base = reinterpret_cast<std::uintptr_t>(b.base);
      std::uintptr_t a = base > lo ? base : lo, z = base + b.size < hi ? base + b.size : hi;
      if (a < z) n += huge_whole_ranges(a, z);
    }
    lca_mutex_unlock(&s->lock);
  }
  lca_mutex_unlock(&g_states_lock);
  return n;
}

}  // namespace

HugeCoverage huge_coverage() {
  HugeCoverage cov{};
  cov.smaps_read = smaps_for_each([&](std::uintptr_t start, std::uintptr_t end, std::size_t anon_huge) {
    if (anon_huge == 0) return;
    std::size_t total = huge_whole_ranges(start, end);
    if (total == 0) return;
    std::size_t ranges[3] = {chunk_ranges_in(start, end), large_huge_ranges_in(start, end),
                             block_ranges_in(start, end)};
    std::size_t pages = anon_huge / kHugePage2M;
    std::size_t share[3], given = 0, ours = 0, biggest = 0;
    for (int k = 0; k < 3; ++k) {
      share[k] = pages * ranges[k] / total;
      given += share[k];
      ours += ranges[k];
      if (ranges[k] > ranges[biggest]) biggest = k;
    }
    // A mapping of ours alone: the rounding remainder is ours too.
    if (ours >= total && given < pages) share[biggest] += pages - given;
    cov.thp_heap += share[0] * kHugePage2M;
    cov.thp_large += share[1] * kHugePage2M;
    cov.thp_blocks += share[2] * kHugePage2M;
  });
  lca_mutex_lock(&g_states_lock);
  for (HugeState* s = g_states; s; s = s->next) {
    state_lock(s);
    cov.hugetlb += s->counters.live_bytes[backing_slot(HugeBacking::hugetlb)];
    lca_mutex_unlock(&s->lock);
  }
  lca_mutex_unlock(&g_states_lock);
  return cov;
}

std::size_t huge_total_hugetlb_fallbacks() { return g_hugetlb_fallbacks.load(std::memory_order_relaxed); }

LCA_CORE_TEXT ThpPolicy huge_thp_policy() {
  unsigned bits = g_thp_policy.load(std::memory_order_relaxed);
  if (__builtin_expect(!(bits & 1), 0)) {
    ThpMode mode = huge_thp_mode();
    bool usable = (mode == ThpMode::always || mode == ThpMode::madvise) && !huge_thp_disabled_for_process();
    bits = 1u | (usable ? 2u : 0u) | (mode == ThpMode::always ? 4u : 0u);
    g_thp_policy.store(bits, std::memory_order_relaxed);  // racing first calls store the same
  }
  return ThpPolicy{(bits & 2u) != 0, (bits & 4u) != 0};
}

void huge_count_purge(std::size_t purged_ranges, std::size_t kept_ranges, std::size_t kept_bytes) {
  if (purged_ranges) g_purged_ranges.fetch_add(purged_ranges, std::memory_order_relaxed);
  if (kept_ranges) g_kept_ranges.fetch_add(kept_ranges, std::memory_order_relaxed);
  if (kept_bytes) g_kept_bytes.fetch_add(kept_bytes, std::memory_order_relaxed);
}

HugePurgeCounters huge_purge_counters() {
  return HugePurgeCounters{g_purged_ranges.load(std::memory_order_relaxed),
                           g_kept_ranges.load(std::memory_order_relaxed),
                           g_kept_bytes.load(std::memory_order_relaxed)};
}

// Read at the first chunk of every program: not literals, which would map
// libcalloc's .rodata for them (placement.h++).
struct ThpModeWords {
  char path[44];
  char always[9];
  char madvise[10];
  char never[8];
};
LCA_CORE_RODATA(thp_mode_words)
constinit const ThpModeWords kThpModeWords{"/sys/kernel/mm/transparent_hugepage/enabled", "[always]", "[madvise]",
                                           "[never]"};

LCA_CORE_TEXT ThpMode huge_thp_mode() {
  char buf[128];
  if (!read_small_file(kThpModeWords.path, buf, sizeof buf))
    return ThpMode::unsupported;
  // The bracketed word, by hand: strstr and its kin are in 64 KiB windows of
  // libc's text that a C program does not otherwise map (placement.h++).
  const char* p = buf;
  while (*p && *p != '[') ++p;
  auto is = [p](const char* word) {
    std::size_t i = 0;
    for (; word[i]; ++i)
      if (p[i] != word[i]) return false;
    return true;
  };
  if (is(kThpModeWords.always)) return ThpMode::always;
  if (is(kThpModeWords.madvise)) return ThpMode::madvise;
  if (is(kThpModeWords.never)) return ThpMode::never;
  return ThpMode::unsupported;
}

LCA_CORE_TEXT bool huge_thp_disabled_for_process() {
#ifdef PR_GET_THP_DISABLE
  return sys_prctl(PR_GET_THP_DISABLE) == 1;
#else
  return false;
#endif
}

bool huge_thp_usable() {
  ThpMode mode = huge_thp_mode();
  return (mode == ThpMode::always || mode == ThpMode::madvise) && !huge_thp_disabled_for_process();
}

bool huge_thp_enable_for_process() {
#ifdef PR_SET_THP_DISABLE
  return prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0) == 0 && !huge_thp_disabled_for_process();
#else
  return true;
#endif
}

HugePool huge_pool(std::size_t page_size) {
  HugePool pool{};
  char path[128];
  pool_path(path, sizeof path, page_size, "nr_hugepages");
  std::size_t v = 0;
  if (!read_number_file(path, &v)) return pool;
  pool.supported = true;
  pool.total = v;
  pool_path(path, sizeof path, page_size, "free_hugepages");
  std::size_t free_pages = 0, reserved = 0;
  if (read_number_file(path, &v)) free_pages = v;
  // Pages promised to existing mappings but not faulted in yet are still counted
  // as free by the kernel; a new mapping cannot have them.
  pool_path(path, sizeof path, page_size, "resv_hugepages");
  if (read_number_file(path, &v)) reserved = v;
  pool.free = free_pages > reserved ? free_pages - reserved : 0;
  return pool;
}

}  // namespace lca
