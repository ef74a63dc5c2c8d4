// custom_alloc/memory.h++ -- smart pointers and standard-library adapters over
// libcalloc heaps.
//
/// @file
/// Smart pointers and standard-library adapters over libcalloc heaps.
///
/// This header owns the C++ ownership types of libcalloc: unique_ptr (also T[] and
/// custom deleters), shared_ptr and weak_ptr (also T[] and T[N]; thread-safe
/// counts, a correct weak count, aliasing, conversions to base classes),
/// make_unique and make_shared (object or array and control block in one
/// allocation), the standard Allocator
/// custom_alloc::allocator<T> (every std container, std::allocate_shared) and
/// heap_resource, a std::pmr::memory_resource.  Each works with any heap
/// instance (a MemoryAllocator&: the process heap by default, or an independent
/// `MemoryAllocator heap;`, or a heap with a policy derived from it): the `_in`
/// forms -- make_unique_in(heap, ...), make_shared_in(heap, ...) -- and the
/// constructors that take a heap say where memory comes from.
///
/// Header-only: nothing here is compiled into libcalloc, so it adds no exported
/// symbol.  Errors follow the standard library's: a failed allocation throws
/// std::bad_alloc (std::bad_array_new_length for an array too large to size),
/// shared_ptr from an expired weak_ptr throws std::bad_weak_ptr.  The memory of
/// a smart pointer goes back with MemoryAllocator::deallocate, which routes a
/// block to the heap that owns it; destroying a heap destroys the blocks still
/// in it, so a smart pointer must not outlive its heap.
///
/// These types hold raw addresses, so they never point to an object that may
/// move: on a HandleAllocator they own its raw-pointer blocks, which never move.
/// Owners of movable objects in a HandleAllocator are unique_handle and
/// shared_handle (custom_alloc/handle_ptr.h++), which pin or resolve through
/// the handle on every access.
#ifndef CUSTOM_ALLOC_MEMORY_HXX
#define CUSTOM_ALLOC_MEMORY_HXX

// One line instead of dozens of errors about operator<=> and concepts.
#if __cplusplus < 201709L
#error "<custom_alloc/memory.h++> (and <custom_alloc.h++>) need C++20: compile with -std=c++20"
#else

#include <custom_alloc/memory_allocator.h++>
#include <libcalloc.h>

#include <atomic>
#include <cerrno>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <memory_resource>
#include <new>
#include <type_traits>
#include <typeinfo>
#include <utility>

#if defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>  // __libc_single_threaded (glibc 2.32)
#define CUSTOM_ALLOC_HAVE_SINGLE_THREADED 1
#endif
#endif

namespace custom_alloc {

namespace detail {

/// The heap a default-constructed pointer or allocator uses.
inline MemoryAllocator& process_heap() noexcept { return MemoryAllocator::instance(); }

/// The process heap takes the malloc fast path (lca_malloc / lca_free: 2.5x
// faster than the virtual MemoryAllocator::allocate / deallocate pair, see
// docs/design.md); any other heap, whose class may override allocate and
// deallocate (a heap with a policy), is called through its members.
inline bool is_process_heap(const MemoryAllocator& heap) noexcept { return &heap == &MemoryAllocator::instance(); }

// Memory from `heap` or std::bad_alloc.
inline void* allocate_or_throw(MemoryAllocator& heap, std::size_t size, std::size_t alignment) {
  void* p;
  if (alignment <= ALIGNMENT && is_process_heap(heap))
    p = lca_malloc(size);
  else
    p = heap.allocate(size, alignment < ALIGNMENT ? ALIGNMENT : alignment);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// Returns a block to `heap`.
inline void release(MemoryAllocator& heap, void* p) noexcept {
  if (is_process_heap(heap))
    lca_free(p);
  else
    heap.deallocate(p);
}

// The address a block was allocated at, given a pointer to (a base of) the
/// object in it: for a polymorphic type the most-derived object's address, so
/// that deleting through a secondary base class frees the right block.
template <class T>
inline void* block_address(T* p) noexcept {
  if constexpr (std::is_polymorphic_v<T>)
    return const_cast<void*>(dynamic_cast<const volatile void*>(p));
  else
    return const_cast<void*>(static_cast<const volatile void*>(p));
}

/// Array blocks made by make_unique<T[]>: a header before the elements records
/// the element count, so that the deleter can destroy them (like the C++ ABI's
/// array cookie).  Elements start at the header's size rounded to alignof(T).
template <class T>
struct array_layout {
  static constexpr std::size_t alignment = alignof(T) > ALIGNMENT ? alignof(T) : ALIGNMENT;
  static constexpr std::size_t header = alignment;  // >= sizeof(std::size_t)
  static_assert(header >= sizeof(std::size_t));
  static std::size_t* count_of(T* elements) noexcept {
    return reinterpret_cast<std::size_t*>(reinterpret_cast<char*>(elements) - header);
  }
  static void* block_of(T* elements) noexcept { return reinterpret_cast<char*>(elements) - header; }
};

}  // namespace detail

// --- deleters --------------------------------------------------------------------

/// Destroys the object and returns its block to its heap.  Converts from the
/// deleter of a derived class, as std::default_delete does.
template <class T>
struct heap_delete {
  MemoryAllocator* heap = nullptr;  // informational: deallocate routes to the owner

  constexpr heap_delete() noexcept = default;
  explicit constexpr heap_delete(MemoryAllocator& h) noexcept : heap(&h) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  constexpr heap_delete(const heap_delete<U>& other) noexcept : heap(other.heap) {}

  void operator()(T* p) const noexcept {
    static_assert(sizeof(T) > 0, "cannot delete a pointer to an incomplete type");
    if (p == nullptr) return;
    void* block = detail::block_address(p);
    p->~T();
    detail::release(heap ? *heap : detail::process_heap(), block);
  }
};

/// For arrays made by make_unique<T[]> / make_unique_in<T[]>: destroys the
/// elements (their count is in the block's header) and frees the block.
template <class T>
struct heap_delete<T[]> {
  MemoryAllocator* heap = nullptr;

  constexpr heap_delete() noexcept = default;
  explicit constexpr heap_delete(MemoryAllocator& h) noexcept : heap(&h) {}

  void operator()(T* p) const noexcept {
    if (p == nullptr) return;
    using layout = detail::array_layout<T>;
    if constexpr (!std::is_trivially_destructible_v<T>) {
      std::size_t n = *layout::count_of(p);
      while (n > 0) p[--n].~T();
    }
    detail::release(heap ? *heap : detail::process_heap(), layout::block_of(p));
  }
};

// --- unique_ptr ------------------------------------------------------------------

/// Sole ownership, like std::unique_ptr; the default deleter returns the object
/// to its libcalloc heap.  unique_ptr<T>(p) takes a pointer to an object
/// constructed in memory from a libcalloc heap (MemoryAllocator::allocate or
/// malloc with the override on).
template <class T, class D = heap_delete<T>>
class unique_ptr {
 public:
  using pointer = T*;
  using element_type = T;
  using deleter_type = D;

  constexpr unique_ptr() noexcept : ptr_(nullptr), deleter_() {}
  constexpr unique_ptr(std::nullptr_t) noexcept : unique_ptr() {}
  explicit unique_ptr(T* ptr) noexcept : ptr_(ptr), deleter_() {}
  unique_ptr(T* ptr, const D& d) noexcept : ptr_(ptr), deleter_(d) {}
  unique_ptr(T* ptr, D&& d) noexcept : ptr_(ptr), deleter_(std::move(d)) {}

  unique_ptr(unique_ptr&& other) noexcept : ptr_(other.release()), deleter_(std::move(other.deleter_)) {}
  /// From a unique_ptr to a derived class.
  template <class U, class E,
            class = std::enable_if_t<std::is_convertible_v<U*, T*> && !std::is_array_v<U> &&
                                     std::is_convertible_v<E, D>>>
  unique_ptr(unique_ptr<U, E>&& other) noexcept
      : ptr_(other.release()), deleter_(std::forward<E>(other.get_deleter())) {}

  ~unique_ptr() { reset(); }

  unique_ptr& operator=(unique_ptr&& other) noexcept {
    if (this != &other) {
      reset(other.release());
      deleter_ = std::move(other.deleter_);
    }
    return *this;
  }
  template <class U, class E,
            class = std::enable_if_t<std::is_convertible_v<U*, T*> && !std::is_array_v<U> &&
                                     std::is_assignable_v<D&, E&&>>>
  unique_ptr& operator=(unique_ptr<U, E>&& other) noexcept {
    reset(other.release());
    deleter_ = std::forward<E>(other.get_deleter());
    return *this;
  }
  unique_ptr& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }
  unique_ptr(const unique_ptr&) = delete;
  unique_ptr& operator=(const unique_ptr&) = delete;

  T* get() const noexcept { return ptr_; }
  T* operator->() const noexcept { return ptr_; }
  std::add_lvalue_reference_t<T> operator*() const noexcept { return *ptr_; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  D& get_deleter() noexcept { return deleter_; }
  const D& get_deleter() const noexcept { return deleter_; }

  /// Gives up ownership without destroying.
  T* release() noexcept { return std::exchange(ptr_, nullptr); }
  /// Destroys the owned object (if any) and owns `ptr` instead.  The old object
  /// is destroyed after the new pointer is stored, as std::unique_ptr does.
  void reset(T* ptr = nullptr) noexcept {
    T* old = std::exchange(ptr_, ptr);
    if (old) deleter_(old);
  }
  void swap(unique_ptr& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(deleter_, other.deleter_);
  }

 private:
  T* ptr_;
  [[no_unique_address]] D deleter_;
};

/// Arrays: operator[] instead of -> and *, and no conversion from derived types.
template <class T, class D>
class unique_ptr<T[], D> {
 public:
  using pointer = T*;
  using element_type = T;
  using deleter_type = D;

  constexpr unique_ptr() noexcept : ptr_(nullptr), deleter_() {}
  constexpr unique_ptr(std::nullptr_t) noexcept : unique_ptr() {}
  unique_ptr(T* ptr, const D& d) noexcept : ptr_(ptr), deleter_(d) {}
  unique_ptr(T* ptr, D&& d) noexcept : ptr_(ptr), deleter_(std::move(d)) {}
  /// Only with a deleter that knows how the array was made: heap_delete<T[]>
  /// expects make_unique<T[]>'s layout, so the raw-pointer constructor exists
  /// only for custom deleters.
  template <class DD = D, class = std::enable_if_t<!std::is_same_v<DD, heap_delete<T[]>>>>
  explicit unique_ptr(T* ptr) noexcept : ptr_(ptr), deleter_() {}

  unique_ptr(unique_ptr&& other) noexcept : ptr_(other.release()), deleter_(std::move(other.deleter_)) {}
  ~unique_ptr() { reset(); }
  unique_ptr& operator=(unique_ptr&& other) noexcept {
    if (this != &other) {
      reset(other.release());
      deleter_ = std::move(other.deleter_);
    }
    return *this;
  }
  unique_ptr& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }
  unique_ptr(const unique_ptr&) = delete;
  unique_ptr& operator=(const unique_ptr&) = delete;

  T* get() const noexcept { return ptr_; }
  T& operator[](std::size_t i) const noexcept { return ptr_[i]; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  D& get_deleter() noexcept { return deleter_; }
  const D& get_deleter() const noexcept { return deleter_; }
  T* release() noexcept { return std::exchange(ptr_, nullptr); }
  void reset(std::nullptr_t = nullptr) noexcept {
    T* old = std::exchange(ptr_, nullptr);
    if (old) deleter_(old);
  }
  void swap(unique_ptr& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(deleter_, other.deleter_);
  }

 private:
  T* ptr_;
  [[no_unique_address]] D deleter_;
};

template <class T, class D>
void swap(unique_ptr<T, D>& a, unique_ptr<T, D>& b) noexcept {
  a.swap(b);
}
template <class T, class D, class U, class E>
bool operator==(const unique_ptr<T, D>& a, const unique_ptr<U, E>& b) noexcept {
  return a.get() == b.get();
}
template <class T, class D>
bool operator==(const unique_ptr<T, D>& a, std::nullptr_t) noexcept {
  return !a;
}
template <class T, class D, class U, class E>
auto operator<=>(const unique_ptr<T, D>& a, const unique_ptr<U, E>& b) noexcept {
  return std::compare_three_way()(a.get(), b.get());
}

/// make_unique_in<T>(heap, args...): a T constructed in `heap`.
/// make_unique_in<T[]>(heap, n): n value-initialised elements in `heap`.
template <class T, class... Args>
std::enable_if_t<!std::is_array_v<T>, unique_ptr<T>> make_unique_in(MemoryAllocator& heap, Args&&... args) {
  void* mem = detail::allocate_or_throw(heap, sizeof(T), alignof(T));
  T* obj;
  try {
    obj = ::new (mem) T(std::forward<Args>(args)...);
  } catch (...) {
    detail::release(heap, mem);
    throw;
  }
  return unique_ptr<T>(obj, heap_delete<T>(heap));
}

template <class T>
std::enable_if_t<std::is_unbounded_array_v<T>, unique_ptr<T>> make_unique_in(MemoryAllocator& heap,
                                                                               std::size_t n) {
  using E = std::remove_extent_t<T>;
  using layout = detail::array_layout<E>;
  if (n > (std::numeric_limits<std::size_t>::max() - layout::header) / sizeof(E))
    throw std::bad_array_new_length();
  void* block = detail::allocate_or_throw(heap, layout::header + n * sizeof(E), layout::alignment);
  E* elements = reinterpret_cast<E*>(static_cast<char*>(block) + layout::header);
  std::size_t made = 0;
  try {
    for (; made < n; ++made) ::new (static_cast<void*>(elements + made)) E();
  } catch (...) {
    while (made > 0) elements[--made].~E();
    detail::release(heap, block);
    throw;
  }
  *layout::count_of(elements) = n;
  return unique_ptr<T>(elements, heap_delete<T>(heap));
}

/// make_unique on the process heap (the heap behind malloc).
template <class T, class... Args>
std::enable_if_t<!std::is_array_v<T>, unique_ptr<T>> make_unique(Args&&... args) {
  return make_unique_in<T>(detail::process_heap(), std::forward<Args>(args)...);
}
template <class T>
std::enable_if_t<std::is_unbounded_array_v<T>, unique_ptr<T>> make_unique(std::size_t n) {
  return make_unique_in<T>(detail::process_heap(), n);
}
template <class T, class... Args>
std::enable_if_t<std::extent_v<T> != 0> make_unique(Args&&...) = delete;
template <class T, class... Args>
std::enable_if_t<std::extent_v<T> != 0> make_unique_in(MemoryAllocator&, Args&&...) = delete;

// --- shared_ptr and weak_ptr -----------------------------------------------------

namespace detail {

/// The shared state: strong count (owners), weak count (weak_ptrs, plus one for
/// all the owners together, so the block lives until the last of either goes).
/// Lives in a libcalloc heap; destroy_self returns it there.
///
/// Both counts are one atomic word (strong in the low 32 bits, weak in the high
/// 32, as many owners as libstdc++'s int counts allow), so that one load sees
/// both at the same instant: the last owner's shortcut below needs that.  Each
/// half only ever changes by adding or taking 1 from a count that is at least 1
/// before a decrement, so no carry or borrow crosses from one half to the other.
class control_block {
  static constexpr std::uint64_t kStrong = 1;
  static constexpr std::uint64_t kWeak = std::uint64_t{1} << 32;
  static constexpr std::uint64_t strong_of(std::uint64_t c) noexcept { return c & 0xffffffffu; }
  static constexpr std::uint64_t weak_of(std::uint64_t c) noexcept { return c >> 32; }

 public:
  explicit control_block(MemoryAllocator& heap) noexcept : heap_(&heap) {}
  control_block(const control_block&) = delete;
  control_block& operator=(const control_block&) = delete;

  void add_strong() noexcept { add(kStrong); }
  // weak_ptr::lock: a new owner unless the object is already gone.
  bool add_strong_if_alive() noexcept {
    std::uint64_t c = counts_.load(std::memory_order_relaxed);
    while (strong_of(c) != 0)
      if (counts_.compare_exchange_weak(c, c + kStrong, std::memory_order_acq_rel, std::memory_order_relaxed))
        return true;
    return false;
  }
  void release_strong() noexcept {
    // The sole reference (one owner, no weak_ptr): nobody else can add one, so
    // a load replaces two locked decrements (as libstdc++ does; the decrements
    // were 84 % of a make_shared<int> + drop loop).  The two counts must be read
    // in one load: read one after the other (as they were, two atomics), a
    // weak_ptr's lock() and its destruction in another thread could fall
    // between the reads -- strong read as 1 before the lock, weak as 1 after
    // the weak_ptr went -- and the object and block were destroyed under the
    // new owner (review 24).
    if (counts_.load(std::memory_order_acquire) == (kStrong | kWeak)) {
      dispose();
      destroy_self();
      return;
    }
    if (strong_of(take(kStrong)) == 0) {
      dispose();
      release_weak();
    }
  }
  void add_weak() noexcept { add(kWeak); }
  void release_weak() noexcept {
    if (weak_of(take(kWeak)) == 0) destroy_self();
  }
  long use_count() const noexcept {
    return static_cast<long>(strong_of(counts_.load(std::memory_order_relaxed)));
  }
  /// weak_ptrs alive (the owners' shared reference is not counted).
  long weak_count() const noexcept {
    std::uint64_t c = counts_.load(std::memory_order_relaxed);
    long w = static_cast<long>(weak_of(c));
    return strong_of(c) > 0 ? w - 1 : w;
  }
  virtual void* get_deleter(const std::type_info&) noexcept { return nullptr; }

 protected:
  virtual ~control_block() = default;
  virtual void dispose() noexcept = 0;  // destroys the object
  /// Destroys the control block and returns its memory to its heap.
  virtual void destroy_self() noexcept = 0;
  MemoryAllocator& heap() const noexcept { return *heap_; }

 private:
  // While the process has a single thread (glibc's __libc_single_threaded, what
  // libstdc++'s shared_ptr also consults) the counts need no locked
  // instructions: make_shared<int> + a copy took 2.4x std::make_shared's CPU
  // time without this in a program that never started a thread.
  static bool single_threaded() noexcept {
#ifdef CUSTOM_ALLOC_HAVE_SINGLE_THREADED
    return __libc_single_threaded != 0;
#else
    return false;
#endif
  }
  void add(std::uint64_t unit) noexcept {
    if (single_threaded())
      counts_.store(counts_.load(std::memory_order_relaxed) + unit, std::memory_order_relaxed);
    else
      counts_.fetch_add(unit, std::memory_order_relaxed);
  }
  // Returns the new value of both counts.
  std::uint64_t take(std::uint64_t unit) noexcept {
    if (single_threaded()) {
      std::uint64_t c = counts_.load(std::memory_order_relaxed) - unit;
      counts_.store(c, std::memory_order_relaxed);
      return c;
    }
    return counts_.fetch_sub(unit, std::memory_order_acq_rel) - unit;
  }

  std::atomic<std::uint64_t> counts_{kStrong | kWeak};
  MemoryAllocator* heap_;
};

/// Owns a separately allocated object through a deleter.
template <class P, class D>
class control_block_pointer final : public control_block {
 public:
  control_block_pointer(MemoryAllocator& heap, P p, D d) noexcept
      : control_block(heap), ptr_(p), deleter_(std::move(d)) {}
  void* get_deleter(const std::type_info& type) noexcept override {
    return type == typeid(D) ? static_cast<void*>(&deleter_) : nullptr;
  }

 private:
  void dispose() noexcept override { deleter_(ptr_); }
  void destroy_self() noexcept override {
    MemoryAllocator& h = heap();
    this->~control_block_pointer();
    release(h, this);
  }
  P ptr_;
  [[no_unique_address]] D deleter_;
};

/// Holds the object itself, after the counts: make_shared's single allocation.
template <class T>
class control_block_inplace final : public control_block {
 public:
  template <class... Args>
  explicit control_block_inplace(MemoryAllocator& heap, Args&&... args) : control_block(heap) {
    ::new (static_cast<void*>(&storage_)) T(std::forward<Args>(args)...);
  }
  T* object() noexcept { return std::launder(reinterpret_cast<T*>(&storage_)); }

 private:
  void dispose() noexcept override { object()->~T(); }
  void destroy_self() noexcept override {
    MemoryAllocator& h = heap();
    this->~control_block_inplace();
    release(h, this);
  }
  alignas(T) unsigned char storage_[sizeof(T)];
};

/// make_shared<T[]>'s single allocation: the counts, then `count` objects of B,
/// the array's scalar type (std::remove_all_extents_t<T> without cv: a T[n][m]
/// is n * m of them).  Elements are built first to last and destroyed last to
/// first, which for a multidimensional array is the order std requires.
template <class B>
class control_block_array final : public control_block {
 public:
  /// Where the elements start: after the block, at B's alignment.
  static constexpr std::size_t elements_offset() noexcept {
    return (sizeof(control_block_array) + alignof(B) - 1) / alignof(B) * alignof(B);
  }
  /// The alignment of the whole block.
  static constexpr std::size_t alignment() noexcept {
    return alignof(B) > alignof(control_block_array) ? alignof(B) : alignof(control_block_array);
  }
  /// `init(elements, made)` constructs the `count` elements in order and counts
  /// each one built in `made`; if it throws, the ones built are destroyed, last
  /// first, and the exception goes on (the caller frees the memory).
  template <class Init>
  control_block_array(MemoryAllocator& heap, std::size_t count, Init& init) : control_block(heap), count_(count) {
    std::size_t made = 0;
    try {
      init(elements(), made);
    } catch (...) {
      destroy(elements(), made);
      throw;
    }
  }
  B* elements() noexcept { return reinterpret_cast<B*>(reinterpret_cast<char*>(this) + elements_offset()); }

 private:
  static void destroy(B* e, std::size_t n) noexcept {
    if constexpr (!std::is_trivially_destructible_v<B>)
      while (n > 0) e[--n].~B();
  }
  void dispose() noexcept override { destroy(elements(), count_); }
  void destroy_self() noexcept override {
    MemoryAllocator& h = heap();
    this->~control_block_array();
    release(h, this);
  }
  std::size_t count_;
};

/// std's "Y* is compatible with T*": Y* converts to T*, or Y is U[N] and T is
/// cv U[].  Governs the conversions between shared_ptrs and weak_ptrs.
template <class Y, class T>
inline constexpr bool sp_compatible = std::is_convertible_v<Y*, T*>;
template <class U, std::size_t N, class V>
inline constexpr bool sp_compatible<U[N], V[]> = std::is_convertible_v<U (*)[N], V (*)[N]>;

/// Which raw pointers a shared_ptr<T> takes: Y* converting to T*, and for an
/// array T only a pointer to its own element type (no derived-to-base
/// conversion, whose element size would differ), as std says.
template <class Y, class T>
inline constexpr bool sp_pointer_ok = std::is_convertible_v<Y*, T*>;
template <class Y, class U, std::size_t N>
inline constexpr bool sp_pointer_ok<Y, U[N]> = std::is_convertible_v<Y (*)[N], U (*)[N]>;
template <class Y, class U>
inline constexpr bool sp_pointer_ok<Y, U[]> = std::is_convertible_v<Y (*)[], U (*)[]>;

struct shared_access;

}  // namespace detail

template <class T>
class weak_ptr;
template <class T>
class shared_ptr;
template <class T>
class enable_shared_from_this;

namespace detail {
template <class T, class U>
void hook_shared_from_this(const shared_ptr<T>& owner, U* p) noexcept;
}

/// Shared ownership, like std::shared_ptr: the object is destroyed when the last
/// owner goes, the control block when the last weak_ptr goes as well.  Counts
/// are atomic: copies of one shared_ptr may be made and dropped concurrently.
///
/// Arrays as in C++20's std: shared_ptr<U[]> and shared_ptr<U[N]> own an array
/// (made by make_shared<U[]>(n) or make_shared<U[N]>(), taken over from a
/// unique_ptr<U[]>, or given with a deleter), point at its first element
/// (element_type is U), have operator[] and no operator* or operator->.  A
/// shared_ptr<U[N]> converts to shared_ptr<U[]> (and const is added), never to
/// an array of a base class.
template <class T>
class shared_ptr {
  template <class U>
  using compatible = std::enable_if_t<detail::sp_compatible<U, T>>;
  template <class U>
  using pointer_ok = std::enable_if_t<detail::sp_pointer_ok<U, T>>;
  template <class U, class D>
  using from_unique = std::enable_if_t<detail::sp_compatible<U, T> &&
                                       std::is_convertible_v<typename unique_ptr<U, D>::pointer, std::remove_extent_t<T>*>>;

 public:
  /// T, or U for an array T of U.
  using element_type = std::remove_extent_t<T>;
  using weak_type = weak_ptr<T>;

  constexpr shared_ptr() noexcept = default;
  constexpr shared_ptr(std::nullptr_t) noexcept {}

  /// Takes ownership of p (an object in a libcalloc heap); the control block
  /// comes from the process heap.  If it cannot be allocated, p is destroyed and
  /// std::bad_alloc thrown.  Not for arrays (as for unique_ptr<T[]>): a raw
  /// pointer does not say how its array was made, so a shared_ptr<U[]> takes a
  /// deleter with it (the next constructor), or comes from make_shared<U[]> or
  /// a unique_ptr<U[]>.
  template <class U, class = std::enable_if_t<!std::is_array_v<T> && std::is_convertible_v<U*, T*>>>
  explicit shared_ptr(U* p) : shared_ptr(p, heap_delete<U>(), detail::process_heap()) {}
  /// With a deleter of the caller's (called as d(p) by the last owner), and the
  /// heap for the control block.  For shared_ptr<U[]> and shared_ptr<U[N]>, p
  /// points to the first U of the array.
  template <class U, class D, class = pointer_ok<U>>
  shared_ptr(U* p, D d, MemoryAllocator& heap = detail::process_heap()) : ptr_(p) {
    using block = detail::control_block_pointer<U*, D>;
    void* mem;
    try {
      mem = detail::allocate_or_throw(heap, sizeof(block), alignof(block));
    } catch (...) {
      d(p);
      throw;
    }
    control_ = ::new (mem) block(heap, p, std::move(d));
    if constexpr (!std::is_array_v<T>) detail::hook_shared_from_this(*this, p);
  }
  template <class D>
  shared_ptr(std::nullptr_t, D d, MemoryAllocator& heap = detail::process_heap())
      : shared_ptr(static_cast<element_type*>(nullptr), std::move(d), heap) {}

  /// Aliasing: shares r's ownership but points at p (a member of r's object,
  /// typically).
  template <class U>
  shared_ptr(const shared_ptr<U>& r, element_type* p) noexcept : ptr_(p), control_(r.control_) {
    if (control_) control_->add_strong();
  }
  template <class U>
  shared_ptr(shared_ptr<U>&& r, element_type* p) noexcept : ptr_(p), control_(std::exchange(r.control_, nullptr)) {
    r.ptr_ = nullptr;
  }

  shared_ptr(const shared_ptr& r) noexcept : ptr_(r.ptr_), control_(r.control_) {
    if (control_) control_->add_strong();
  }
  template <class U, class = compatible<U>>
  shared_ptr(const shared_ptr<U>& r) noexcept : ptr_(r.ptr_), control_(r.control_) {
    if (control_) control_->add_strong();
  }
  shared_ptr(shared_ptr&& r) noexcept
      : ptr_(std::exchange(r.ptr_, nullptr)), control_(std::exchange(r.control_, nullptr)) {}
  template <class U, class = compatible<U>>
  shared_ptr(shared_ptr<U>&& r) noexcept
      : ptr_(std::exchange(r.ptr_, nullptr)), control_(std::exchange(r.control_, nullptr)) {}

  /// From a weak_ptr: throws std::bad_weak_ptr when the object is gone.
  template <class U, class = compatible<U>>
  explicit shared_ptr(const weak_ptr<U>& r) : ptr_(r.ptr_), control_(r.control_) {
    if (control_ == nullptr || !control_->add_strong_if_alive()) throw std::bad_weak_ptr();
  }
  /// From a unique_ptr: takes over its object (or array) and deleter.
  template <class U, class D, class = from_unique<U, D>>
  shared_ptr(unique_ptr<U, D>&& r) : ptr_(nullptr) {
    if (r.get() != nullptr) {
      typename unique_ptr<U, D>::pointer raw = r.get();
      shared_ptr tmp(raw, std::move(r.get_deleter()));
      r.release();
      swap(tmp);
    }
  }

  ~shared_ptr() {
    if (control_) control_->release_strong();
  }

  shared_ptr& operator=(const shared_ptr& r) noexcept {
    shared_ptr(r).swap(*this);
    return *this;
  }
  template <class U, class = compatible<U>>
  shared_ptr& operator=(const shared_ptr<U>& r) noexcept {
    shared_ptr(r).swap(*this);
    return *this;
  }
  shared_ptr& operator=(shared_ptr&& r) noexcept {
    shared_ptr(std::move(r)).swap(*this);
    return *this;
  }
  template <class U, class = compatible<U>>
  shared_ptr& operator=(shared_ptr<U>&& r) noexcept {
    shared_ptr(std::move(r)).swap(*this);
    return *this;
  }
  template <class U, class D, class = from_unique<U, D>>
  shared_ptr& operator=(unique_ptr<U, D>&& r) {
    shared_ptr(std::move(r)).swap(*this);
    return *this;
  }

  void reset() noexcept { shared_ptr().swap(*this); }
  template <class U, class = std::enable_if_t<!std::is_array_v<T> && std::is_convertible_v<U*, T*>>>
  void reset(U* p) {
    shared_ptr(p).swap(*this);
  }
  template <class U, class D, class = pointer_ok<U>>
  void reset(U* p, D d, MemoryAllocator& heap = detail::process_heap()) {
    shared_ptr(p, std::move(d), heap).swap(*this);
  }
  void swap(shared_ptr& r) noexcept {
    std::swap(ptr_, r.ptr_);
    std::swap(control_, r.control_);
  }

  /// The object, or for an array its first element.
  element_type* get() const noexcept { return ptr_; }
  template <class U = T, class = std::enable_if_t<!std::is_void_v<U> && !std::is_array_v<U>>>
  U& operator*() const noexcept {
    return *ptr_;
  }
  template <class U = T, class = std::enable_if_t<!std::is_array_v<U>>>
  element_type* operator->() const noexcept {
    return ptr_;
  }
  /// Element i of an owned array (0 <= i, and i < N for T = U[N]).
  template <class U = T, class = std::enable_if_t<std::is_array_v<U>>>
  std::remove_extent_t<U>& operator[](std::ptrdiff_t i) const noexcept {
    return ptr_[i];
  }
  long use_count() const noexcept { return control_ ? control_->use_count() : 0; }
  /// How many weak_ptrs share this object's control block (not in std).
  long weak_count() const noexcept { return control_ ? control_->weak_count() : 0; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  template <class U>
  bool owner_before(const shared_ptr<U>& r) const noexcept {
    return std::less<const void*>()(control_, r.control_);
  }
  template <class U>
  bool owner_before(const weak_ptr<U>& r) const noexcept {
    return std::less<const void*>()(control_, r.control_);
  }

 private:
  template <class U>
  friend class shared_ptr;
  template <class U>
  friend class weak_ptr;
  friend struct detail::shared_access;
  template <class D, class U>
  friend D* get_deleter(const shared_ptr<U>& p) noexcept;

  element_type* ptr_ = nullptr;
  detail::control_block* control_ = nullptr;
};

/// Observes a shared_ptr's object without owning it: lock() gives an owner
/// while the object lives, an empty shared_ptr after.  weak_ptr<U[]> and
/// weak_ptr<U[N]> observe arrays, with shared_ptr's conversions.
template <class T>
class weak_ptr {
  template <class U>
  using compatible = std::enable_if_t<detail::sp_compatible<U, T>>;

 public:
  /// T, or U for an array T of U.
  using element_type = std::remove_extent_t<T>;

  constexpr weak_ptr() noexcept = default;
  template <class U, class = compatible<U>>
  weak_ptr(const shared_ptr<U>& r) noexcept : ptr_(r.ptr_), control_(r.control_) {
    if (control_) control_->add_weak();
  }
  weak_ptr(const weak_ptr& r) noexcept : ptr_(r.ptr_), control_(r.control_) {
    if (control_) control_->add_weak();
  }
  template <class U, class = compatible<U>>
  weak_ptr(const weak_ptr<U>& r) noexcept : control_(r.control_) {
    // r's object may be gone: convert the pointer only through an owner, as
    // std does (a virtual base could otherwise be read from freed memory).
    if (control_) {
      control_->add_weak();
      ptr_ = r.lock().get();
    }
  }
  weak_ptr(weak_ptr&& r) noexcept
      : ptr_(std::exchange(r.ptr_, nullptr)), control_(std::exchange(r.control_, nullptr)) {}
  ~weak_ptr() {
    if (control_) control_->release_weak();
  }
  weak_ptr& operator=(const weak_ptr& r) noexcept {
    weak_ptr(r).swap(*this);
    return *this;
  }
  weak_ptr& operator=(weak_ptr&& r) noexcept {
    weak_ptr(std::move(r)).swap(*this);
    return *this;
  }
  template <class U, class = compatible<U>>
  weak_ptr& operator=(const shared_ptr<U>& r) noexcept {
    weak_ptr(r).swap(*this);
    return *this;
  }

  void reset() noexcept { weak_ptr().swap(*this); }
  void swap(weak_ptr& r) noexcept {
    std::swap(ptr_, r.ptr_);
    std::swap(control_, r.control_);
  }
  long use_count() const noexcept { return control_ ? control_->use_count() : 0; }
  bool expired() const noexcept { return use_count() == 0; }
  /// An owner of the object, or an empty shared_ptr if it is gone; safe against
  /// the last owner going away in another thread at the same moment.
  shared_ptr<T> lock() const noexcept {
    shared_ptr<T> r;
    if (control_ && control_->add_strong_if_alive()) {
      r.ptr_ = ptr_;
      r.control_ = control_;
    }
    return r;
  }
  template <class U>
  bool owner_before(const weak_ptr<U>& r) const noexcept {
    return std::less<const void*>()(control_, r.control_);
  }
  template <class U>
  bool owner_before(const shared_ptr<U>& r) const noexcept {
    return std::less<const void*>()(control_, r.control_);
  }

 private:
  template <class U>
  friend class shared_ptr;
  template <class U>
  friend class weak_ptr;
  friend class enable_shared_from_this<T>;

  element_type* ptr_ = nullptr;
  detail::control_block* control_ = nullptr;
};

/// Derive from it to get shared_from_this() in objects owned by shared_ptr.
template <class T>
class enable_shared_from_this {
 public:
  shared_ptr<T> shared_from_this() { return shared_ptr<T>(weak_this_); }
  shared_ptr<const T> shared_from_this() const { return shared_ptr<const T>(weak_this_); }
  weak_ptr<T> weak_from_this() noexcept { return weak_this_; }

 protected:
  constexpr enable_shared_from_this() noexcept = default;
  enable_shared_from_this(const enable_shared_from_this&) noexcept {}
  enable_shared_from_this& operator=(const enable_shared_from_this&) noexcept { return *this; }
  ~enable_shared_from_this() = default;

 private:
  template <class U, class V>
  friend void detail::hook_shared_from_this(const shared_ptr<U>&, V*) noexcept;
  mutable weak_ptr<T> weak_this_;
};

namespace detail {
/// Declared only: deduces X when U derives (unambiguously) from
/// enable_shared_from_this<X>.
template <class X>
X* shared_from_this_base(const enable_shared_from_this<X>*);

/// A new owner of an object that derives from enable_shared_from_this records
/// itself in the object (the first owner wins, as in std).
template <class T, class U>
void hook_shared_from_this(const shared_ptr<T>& owner, U* p) noexcept {
  if constexpr (requires { detail::shared_from_this_base(p); }) {
    using X = std::remove_pointer_t<decltype(detail::shared_from_this_base(p))>;
    if (p == nullptr) return;
    X* object = static_cast<X*>(const_cast<std::remove_cv_t<U>*>(p));
    enable_shared_from_this<X>* base = object;
    if (base->weak_this_.expired()) base->weak_this_ = shared_ptr<X>(owner, object);
  }
}
}  // namespace detail

namespace detail {
/// Builds a shared_ptr from parts: the make_shared functions' way in.
struct shared_access {
  template <class T>
  static shared_ptr<T> adopt(typename shared_ptr<T>::element_type* p, control_block* c) noexcept {
    shared_ptr<T> r;
    r.ptr_ = p;
    r.control_ = c;
    return r;
  }
};

/// Copy-constructs the scalars of `value` (an element of the array being made,
/// itself an array for a multidimensional one) at e[made], e[made + 1], ...
template <class B, class V>
void construct_copies(B* e, std::size_t& made, const V& value) {
  if constexpr (std::is_array_v<V>) {
    for (const auto& sub : value) construct_copies(e, made, sub);
  } else {
    ::new (static_cast<void*>(e + made)) B(value);
    ++made;
  }
}

/// The block of make_shared_in<T>(heap, ...) for an array type T of `n`
/// elements (n is N for T = U[N]): the counts, then the elements,
/// value-initialised or, if `value` is not null, copies of *value.  On any
/// failure nothing is left allocated.
template <class T>
shared_ptr<T> make_shared_array(MemoryAllocator& heap, std::size_t n, const std::remove_extent_t<T>* value) {
  using E = std::remove_extent_t<T>;
  using B = std::remove_cv_t<std::remove_all_extents_t<T>>;
  using block = control_block_array<B>;
  if (n > (std::numeric_limits<std::size_t>::max() - block::elements_offset()) / sizeof(E))
    throw std::bad_array_new_length();
  const std::size_t count = n * (sizeof(E) / sizeof(B));
  auto init = [n, count, value](B* e, std::size_t& made) {
    if (value == nullptr)
      for (; made < count; ++made) ::new (static_cast<void*>(e + made)) B();
    else
      for (std::size_t i = 0; i < n; ++i) construct_copies(e, made, *value);
  };
  void* mem = allocate_or_throw(heap, block::elements_offset() + n * sizeof(E), block::alignment());
  block* b;
  try {
    b = ::new (mem) block(heap, count, init);
  } catch (...) {
    release(heap, mem);
    throw;
  }
  return shared_access::adopt<T>(reinterpret_cast<E*>(b->elements()), b);
}
}  // namespace detail

/// make_shared_in<T>(heap, args...): a T and its control block in one block of
/// `heap`.  The memory goes back when the last owner and the last weak_ptr are
/// gone (a weak_ptr keeps the whole block, as with std::make_shared).
template <class T, class... Args>
std::enable_if_t<!std::is_array_v<T>, shared_ptr<T>> make_shared_in(MemoryAllocator& heap, Args&&... args) {
  using block = detail::control_block_inplace<T>;
  void* mem = detail::allocate_or_throw(heap, sizeof(block), alignof(block));
  block* b;
  try {
    b = ::new (mem) block(heap, std::forward<Args>(args)...);
  } catch (...) {
    detail::release(heap, mem);
    throw;
  }
  shared_ptr<T> r = detail::shared_access::adopt<T>(b->object(), b);
  detail::hook_shared_from_this(r, r.get());
  return r;
}

/// make_shared_in<U[]>(heap, n): n value-initialised U and the counts in one
/// block of `heap`.  The elements are constructed in order; if a constructor
/// throws, those already made are destroyed in reverse order, the block is
/// freed and the exception goes on.  The last owner destroys the elements in
/// reverse order; the block goes back with the last weak_ptr.  Throws
/// std::bad_array_new_length if the size cannot be represented.
template <class T>
std::enable_if_t<std::is_unbounded_array_v<T>, shared_ptr<T>> make_shared_in(MemoryAllocator& heap,
                                                                               std::size_t n) {
  return detail::make_shared_array<T>(heap, n, nullptr);
}
/// make_shared_in<U[]>(heap, n, value): n copies of value (for U = V[M], each
/// element's M scalars are copies of value's), as make_shared_in<U[]>(heap, n).
template <class T>
std::enable_if_t<std::is_unbounded_array_v<T>, shared_ptr<T>> make_shared_in(MemoryAllocator& heap, std::size_t n,
                                                                               const std::remove_extent_t<T>& value) {
  return detail::make_shared_array<T>(heap, n, std::addressof(value));
}
/// make_shared_in<U[N]>(heap): N value-initialised U, as make_shared_in<U[]>.
template <class T>
std::enable_if_t<std::is_bounded_array_v<T>, shared_ptr<T>> make_shared_in(MemoryAllocator& heap) {
  return detail::make_shared_array<T>(heap, std::extent_v<T>, nullptr);
}
/// make_shared_in<U[N]>(heap, value): N copies of value, as make_shared_in<U[]>.
template <class T>
std::enable_if_t<std::is_bounded_array_v<T>, shared_ptr<T>> make_shared_in(MemoryAllocator& heap,
                                                                             const std::remove_extent_t<T>& value) {
  return detail::make_shared_array<T>(heap, std::extent_v<T>, std::addressof(value));
}

/// make_shared on the process heap (the heap behind malloc): make_shared<T>(args...),
/// make_shared<U[]>(n), make_shared<U[]>(n, value), make_shared<U[N]>() and
/// make_shared<U[N]>(value), as the make_shared_in forms.
template <class T, class... Args>
std::enable_if_t<!std::is_array_v<T>, shared_ptr<T>> make_shared(Args&&... args) {
  return make_shared_in<T>(detail::process_heap(), std::forward<Args>(args)...);
}
template <class T>
std::enable_if_t<std::is_unbounded_array_v<T>, shared_ptr<T>> make_shared(std::size_t n) {
  return make_shared_in<T>(detail::process_heap(), n);
}
template <class T>
std::enable_if_t<std::is_unbounded_array_v<T>, shared_ptr<T>> make_shared(std::size_t n,
                                                                            const std::remove_extent_t<T>& value) {
  return make_shared_in<T>(detail::process_heap(), n, value);
}
template <class T>
std::enable_if_t<std::is_bounded_array_v<T>, shared_ptr<T>> make_shared() {
  return make_shared_in<T>(detail::process_heap());
}
template <class T>
std::enable_if_t<std::is_bounded_array_v<T>, shared_ptr<T>> make_shared(const std::remove_extent_t<T>& value) {
  return make_shared_in<T>(detail::process_heap(), value);
}

template <class D, class T>
D* get_deleter(const shared_ptr<T>& p) noexcept {
  return p.control_ ? static_cast<D*>(p.control_->get_deleter(typeid(D))) : nullptr;
}

template <class T, class U>
shared_ptr<T> static_pointer_cast(const shared_ptr<U>& r) noexcept {
  return shared_ptr<T>(r, static_cast<typename shared_ptr<T>::element_type*>(r.get()));
}
template <class T, class U>
shared_ptr<T> const_pointer_cast(const shared_ptr<U>& r) noexcept {
  return shared_ptr<T>(r, const_cast<typename shared_ptr<T>::element_type*>(r.get()));
}
template <class T, class U>
shared_ptr<T> reinterpret_pointer_cast(const shared_ptr<U>& r) noexcept {
  return shared_ptr<T>(r, reinterpret_cast<typename shared_ptr<T>::element_type*>(r.get()));
}
template <class T, class U>
shared_ptr<T> dynamic_pointer_cast(const shared_ptr<U>& r) noexcept {
  if (auto* p = dynamic_cast<typename shared_ptr<T>::element_type*>(r.get())) return shared_ptr<T>(r, p);
  return shared_ptr<T>();
}

template <class T>
void swap(shared_ptr<T>& a, shared_ptr<T>& b) noexcept {
  a.swap(b);
}
template <class T>
void swap(weak_ptr<T>& a, weak_ptr<T>& b) noexcept {
  a.swap(b);
}
template <class T, class U>
bool operator==(const shared_ptr<T>& a, const shared_ptr<U>& b) noexcept {
  return a.get() == b.get();
}
template <class T>
bool operator==(const shared_ptr<T>& a, std::nullptr_t) noexcept {
  return !a;
}
template <class T, class U>
auto operator<=>(const shared_ptr<T>& a, const shared_ptr<U>& b) noexcept {
  return std::compare_three_way()(a.get(), b.get());
}

// --- the standard Allocator ------------------------------------------------------

/// custom_alloc::allocator<T>: a standard Allocator over a libcalloc heap, for
/// every std container and std::allocate_shared.  A default-constructed one uses
/// the process heap; allocator<T>(heap) another.  Two allocators are equal when
/// they use the same heap.  Copies, moves and swaps of containers take the heap
/// with them (propagate_on_container_* are true).
template <class T>
class allocator {
 public:
  using value_type = T;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  using propagate_on_container_copy_assignment = std::true_type;
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;
  using is_always_equal = std::false_type;
  template <class U>
  struct rebind {
    using other = allocator<U>;
  };

  allocator() noexcept : heap_(&detail::process_heap()) {}
  explicit allocator(MemoryAllocator& heap) noexcept : heap_(&heap) {}
  template <class U>
  allocator(const allocator<U>& other) noexcept : heap_(&other.heap()) {}

  [[nodiscard]] T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(detail::allocate_or_throw(*heap_, n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, std::size_t) noexcept { detail::release(*heap_, p); }

  MemoryAllocator& heap() const noexcept { return *heap_; }

  template <class U>
  bool operator==(const allocator<U>& other) const noexcept {
    return heap_ == &other.heap();
  }

 private:
  MemoryAllocator* heap_;
};

// --- std::pmr ----------------------------------------------------------------------

/// What heap_resource::allocate throws for an alignment that is not a power of
/// two (std::pmr::memory_resource::allocate requires one): a std::bad_alloc,
/// as the standard resources throw, whose what() names the alignment --
/// "custom_alloc::heap_resource: alignment 24 is not a power of two" -- and
/// errno is EINVAL, as MemoryAllocator::allocate reports a bad alignment.
class bad_alignment : public std::bad_alloc {
 public:
  explicit bad_alignment(std::size_t alignment) noexcept : alignment_(alignment) {
    static constexpr char head[] = "custom_alloc::heap_resource: alignment ";
    static constexpr char tail[] = " is not a power of two";
    char digits[24];
    std::size_t n = 0;
    do digits[n++] = static_cast<char>('0' + alignment % 10);
    while ((alignment /= 10) != 0);
    std::size_t len = 0;
    for (char c : head)
      if (c) text_[len++] = c;
    while (n) text_[len++] = digits[--n];
    for (char c : tail) text_[len++] = c;  // with its terminating zero
  }
  const char* what() const noexcept override { return text_; }
  std::size_t alignment() const noexcept { return alignment_; }

 private:
  std::size_t alignment_;
  char text_[96];
};

/// A std::pmr::memory_resource over a libcalloc heap: std::pmr containers and
/// std::pmr::polymorphic_allocator take their memory from it.  Any power-of-two
/// alignment is honoured; any other (3, 12, 24, 0...) throws bad_alignment, a
/// std::bad_alloc naming it.  Two heap_resources are equal when they use the
/// same heap.  The resource does not own the heap.
class heap_resource : public std::pmr::memory_resource {
 public:
  heap_resource() noexcept : heap_(&detail::process_heap()) {}
  explicit heap_resource(MemoryAllocator& heap) noexcept : heap_(&heap) {}
  MemoryAllocator& heap() const noexcept { return *heap_; }

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    // (Below 16 a bad alignment was rounded up to 16 and served; above, the
    // heap's EINVAL became a std::bad_alloc that did not say why.)
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
      errno = EINVAL;
      throw bad_alignment(alignment);
    }
    return detail::allocate_or_throw(*heap_, bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t, std::size_t) override { detail::release(*heap_, p); }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    const heap_resource* o = dynamic_cast<const heap_resource*>(&other);
    return o != nullptr && o->heap_ == heap_;
  }

  MemoryAllocator* heap_;
};

/// The resource of the process heap (one per program; never destroyed, so it
/// may serve static objects' destructors).
inline heap_resource* process_heap_resource() noexcept {
  alignas(heap_resource) static unsigned char storage[sizeof(heap_resource)];
  static heap_resource* r = ::new (static_cast<void*>(storage)) heap_resource();
  return r;
}

}  // namespace custom_alloc

// Hashes of the smart pointers, by address, as for the std ones.
/// @cond
namespace std {
template <class T, class D>
struct hash<custom_alloc::unique_ptr<T, D>> {
  size_t operator()(const custom_alloc::unique_ptr<T, D>& p) const noexcept { return hash<T*>()(p.get()); }
};
template <class T>
struct hash<custom_alloc::shared_ptr<T>> {
  size_t operator()(const custom_alloc::shared_ptr<T>& p) const noexcept {
    return hash<typename custom_alloc::shared_ptr<T>::element_type*>()(p.get());
  }
};
}  // namespace std
/// @endcond

#endif  // C++20
#endif
