// custom_alloc/handle_ptr.h++ -- typed owning pointers to movable objects in a
// HandleAllocator (configure --enable-defrag, the default).
//
/// @file
/// Typed owning pointers to movable objects in a HandleAllocator.
///
/// This header owns the typed face of the handle heap: unique_handle<T> and
/// shared_handle<T> own one object of type T that lives in a HandleAllocator and
/// may move while they exist, made by make_unique_handle<T>(heap, args...) and
/// make_shared_handle<T>(heap, args...); pinned<T> is a pin that keeps one such
/// object in place and gives it a typed face.  They hold a Handle, never an
/// address: every access goes through the heap, by one of two doors --
///  - `p->member` and `p.pin()` pin the object: `p->f()` keeps it in place for the
///    whole expression, even when f() calls into the heap or runs for long;
///    `auto g = p.pin();` keeps it in place for as long as `g` lives.
///  - `p.get()` resolves without pinning: the pointer stays valid until this
///    thread's next call into the same heap (the heap's validity rule, see
///    defrag.h++).  It is the cheap door, for a read or write that makes no such
///    call.
/// There is deliberately no `operator*`: a plain reference could not keep the
/// object in place; write `*p.pin()` or `*p.get()` to say which door is meant.
///
/// WHAT MAY LIVE THERE.  The mover moves an object by copying its bytes, so T
/// must stay correct when its bytes are copied to a new address and the old
/// ones are dropped without a destructor call: no pointer into itself, no address
/// registered elsewhere.  Every trivially copyable type qualifies;
/// handle_relocatable<T> says which types do, and a program may specialise it to
/// std::true_type for a type it knows to be relocatable by copying bytes (a
/// struct of plain fields and a std::unique_ptr, say).  make_*_handle refuses
/// other types at compile time, and types aligned to more than 16 bytes (the
/// heap's alignment).
///
/// Construction and destruction happen pinned, so constructors and destructors
/// may call into the heap.  A failed allocation throws std::bad_alloc; a throwing
/// constructor frees the handle and lets the exception through.  shared_handle's
/// count is thread-safe (copies in any thread); its count lives in the object's
/// block and moves with it.  There is no weak form: a freed handle's memory goes
/// back to the heap at once, so nothing could be read through a weak reference
/// to learn whether the object is still alive.  A stale handle (used after its
/// owner freed it, e.g. through release()) aborts as the heap's calls do
/// ("libcalloc: Stale handle of 0x...").  Like every smart pointer of
/// libcalloc, these must not outlive their heap (one that does, used or
/// destroyed while the heap object's memory is still intact, aborts with
/// "libcalloc: Invalid handle heap of 0x...: its HandleAllocator was destroyed").
#ifndef CUSTOM_ALLOC_HANDLE_PTR_HXX
#define CUSTOM_ALLOC_HANDLE_PTR_HXX

#include <custom_alloc/defrag.h++>

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace custom_alloc {

/// True for the types the handle heap may move by copying their bytes; a
/// program may specialise it to std::true_type for a type of its own that is
/// relocatable that way (no pointer into itself, no address kept elsewhere).
template <class T>
struct handle_relocatable : std::is_trivially_copyable<T> {};

/// A pin of one object of type T in a HandleAllocator: the object stays where
/// it is, and get() stays valid, until the pin is destroyed or released.
template <class T>
class pinned {
 public:
  pinned() = default;
  /// Takes over a pin whose object is a T at `offset` bytes into the block.
  pinned(HandleAllocator::PinGuard guard, std::size_t offset) noexcept
      : guard_(std::move(guard)), ptr_(reinterpret_cast<T*>(static_cast<char*>(guard_.get()) + offset)) {}
  pinned(pinned&&) noexcept = default;
  pinned& operator=(pinned&&) noexcept = default;

  /// The object, valid while the pin is held.
  T* get() const noexcept { return guard_ ? ptr_ : nullptr; }
  T* operator->() const noexcept { return get(); }
  T& operator*() const noexcept { return *get(); }
  explicit operator bool() const noexcept { return static_cast<bool>(guard_); }
  /// Lets the object move again; get() is nullptr afterwards.
  void release() noexcept { guard_.release(); }

 private:
  HandleAllocator::PinGuard guard_;
  T* ptr_ = nullptr;
};

namespace detail {

// The checks every make_*_handle makes of its T.
template <class T>
constexpr void check_handle_type() {
  static_assert(!std::is_array_v<T>, "a handle owns one object: no array form");
  static_assert(handle_relocatable<T>::value,
                "the handle heap moves objects by copying their bytes: T must be trivially copyable, "
                "or custom_alloc::handle_relocatable<T> specialised to say it is relocatable that way");
  static_assert(alignof(T) <= 16, "the handle heap aligns objects to 16 bytes");
}

// Allocates a block of `size` bytes and constructs a T at `offset` in it, pinned
// (the constructor may call into the heap).  `before` runs first on the block's
// start (shared_handle's count).  Frees the handle and rethrows if T's
// constructor throws; std::bad_alloc if the heap has no memory.
template <class T, class Before, class... Args>
Handle construct_in_handle(HandleAllocator& heap, std::size_t size, std::size_t offset, Before before,
                           Args&&... args) {
  Handle h = heap.allocate_handle(size);
  if (!h) throw std::bad_alloc();
  {
    HandleAllocator::PinGuard g = heap.pin(h);
    char* base = static_cast<char*>(g.get());
    before(base);
    try {
      ::new (static_cast<void*>(base + offset)) T(std::forward<Args>(args)...);
    } catch (...) {
      g.release();
      heap.deallocate_handle(h);
      throw;
    }
  }
  return h;
}

// Destroys the T at `offset` in h's block, pinned (the destructor may call into
// the heap), then frees the handle.
template <class T>
void destroy_in_handle(HandleAllocator& heap, Handle h, std::size_t offset) noexcept {
  {
    HandleAllocator::PinGuard g = heap.pin(h);
    std::destroy_at(reinterpret_cast<T*>(static_cast<char*>(g.get()) + offset));
  }
  heap.deallocate_handle(h);
}

}  // namespace detail

/// Sole owner of one T in a HandleAllocator; the object may move while it lives.
template <class T>
class unique_handle {
 public:
  using element_type = T;

  unique_handle() noexcept = default;
  /// Adopts `h`, which must hold a T constructed at the block's start (as by
  /// release() of another unique_handle<T> of the same heap).
  unique_handle(HandleAllocator& heap, Handle h) noexcept : heap_(&heap), h_(h) {}
  unique_handle(unique_handle&& o) noexcept : heap_(o.heap_), h_(std::exchange(o.h_, 0)) {}
  unique_handle& operator=(unique_handle&& o) noexcept {
    if (this != &o) {
      reset();
      heap_ = o.heap_;
      h_ = std::exchange(o.h_, 0);
    }
    return *this;
  }
  unique_handle(const unique_handle&) = delete;
  unique_handle& operator=(const unique_handle&) = delete;
  ~unique_handle() { reset(); }

  /// The object's address now: valid until this thread's next call into the heap.
  T* get() const { return h_ ? static_cast<T*>(heap_->resolve(h_)) : nullptr; }
  /// A pin: the object stays in place while the returned guard lives.
  pinned<T> pin() const { return h_ ? pinned<T>(heap_->pin(h_), 0) : pinned<T>(); }
  /// `p->member`: pinned for the whole full-expression.
  pinned<T> operator->() const { return pin(); }

  explicit operator bool() const noexcept { return h_ != 0; }
  Handle handle() const noexcept { return h_; }
  HandleAllocator* heap() const noexcept { return heap_; }

  /// Gives up ownership without destroying: the caller owns the handle.
  Handle release() noexcept { return std::exchange(h_, 0); }
  /// Destroys the object (pinned, so ~T may call into the heap) and frees it.
  void reset() noexcept {
    if (Handle h = std::exchange(h_, 0)) detail::destroy_in_handle<T>(*heap_, h, 0);
  }
  void swap(unique_handle& o) noexcept {
    std::swap(heap_, o.heap_);
    std::swap(h_, o.h_);
  }

  friend bool operator==(const unique_handle& a, const unique_handle& b) noexcept { return a.h_ == b.h_; }
  friend bool operator==(const unique_handle& a, std::nullptr_t) noexcept { return a.h_ == 0; }

 private:
  HandleAllocator* heap_ = nullptr;
  Handle h_ = 0;
};

/// Makes a T in `heap` from `args` and returns its sole owner.
template <class T, class... Args>
unique_handle<T> make_unique_handle(HandleAllocator& heap, Args&&... args) {
  detail::check_handle_type<T>();
  Handle h = detail::construct_in_handle<T>(
      heap, sizeof(T), 0, [](char*) {}, std::forward<Args>(args)...);
  return unique_handle<T>(heap, h);
}

/// One of several owners of one T in a HandleAllocator; the last owner destroys
/// it.  The count sits in the object's block, before the T, and moves with it.
template <class T>
class shared_handle {
  using Count = std::atomic<std::size_t>;
  // The T's place in the block: after the count, at T's alignment.
  static constexpr std::size_t kOffset = (sizeof(Count) + alignof(T) - 1) / alignof(T) * alignof(T);

 public:
  using element_type = T;

  shared_handle() noexcept = default;
  shared_handle(const shared_handle& o) : heap_(o.heap_), h_(o.h_) {
    if (h_) count()->fetch_add(1, std::memory_order_relaxed);
  }
  shared_handle(shared_handle&& o) noexcept : heap_(o.heap_), h_(std::exchange(o.h_, 0)) {}
  shared_handle& operator=(const shared_handle& o) {
    shared_handle(o).swap(*this);
    return *this;
  }
  shared_handle& operator=(shared_handle&& o) noexcept {
    shared_handle(std::move(o)).swap(*this);
    return *this;
  }
  ~shared_handle() { reset(); }

  /// The object's address now: valid until this thread's next call into the heap.
  T* get() const {
    return h_ ? reinterpret_cast<T*>(static_cast<char*>(heap_->resolve(h_)) + kOffset) : nullptr;
  }
  /// A pin: the object stays in place while the returned guard lives.
  pinned<T> pin() const { return h_ ? pinned<T>(heap_->pin(h_), kOffset) : pinned<T>(); }
  /// `p->member`: pinned for the whole full-expression.
  pinned<T> operator->() const { return pin(); }

  /// The number of owners (a snapshot when other threads copy or drop theirs).
  std::size_t use_count() const { return h_ ? count()->load(std::memory_order_relaxed) : 0; }
  explicit operator bool() const noexcept { return h_ != 0; }
  Handle handle() const noexcept { return h_; }
  HandleAllocator* heap() const noexcept { return heap_; }

  /// Drops this owner; the last one destroys the object (pinned) and frees it.
  void reset() noexcept {
    Handle h = std::exchange(h_, 0);
    if (!h) return;
    auto* c = static_cast<Count*>(heap_->resolve(h));
    if (c->fetch_sub(1, std::memory_order_acq_rel) == 1) detail::destroy_in_handle<T>(*heap_, h, kOffset);
  }
  void swap(shared_handle& o) noexcept {
    std::swap(heap_, o.heap_);
    std::swap(h_, o.h_);
  }

  friend bool operator==(const shared_handle& a, const shared_handle& b) noexcept { return a.h_ == b.h_; }
  friend bool operator==(const shared_handle& a, std::nullptr_t) noexcept { return a.h_ == 0; }

 private:
  template <class U, class... Args>
  friend shared_handle<U> make_shared_handle(HandleAllocator& heap, Args&&... args);
  shared_handle(HandleAllocator& heap, Handle h) noexcept : heap_(&heap), h_(h) {}
  Count* count() const { return static_cast<Count*>(heap_->resolve(h_)); }

  HandleAllocator* heap_ = nullptr;
  Handle h_ = 0;
};

/// Makes a T in `heap` from `args`, count and object in one handle, and returns
/// its first owner.
template <class T, class... Args>
shared_handle<T> make_shared_handle(HandleAllocator& heap, Args&&... args) {
  detail::check_handle_type<T>();
  using Count = typename shared_handle<T>::Count;
  static_assert(Count::is_always_lock_free, "the count must survive a copy of its bytes");
  constexpr std::size_t offset = shared_handle<T>::kOffset;
  Handle h = detail::construct_in_handle<T>(
      heap, offset + sizeof(T), offset, [](char* base) { ::new (static_cast<void*>(base)) Count(1); },
      std::forward<Args>(args)...);
  return shared_handle<T>(heap, h);
}

}  // namespace custom_alloc

#endif
