// lifecycle.c++ -- a thread heap's life: creation or adoption at a thread's first
// allocation, abandonment at thread exit, and fork().
//
// A thread's first allocation in the process domain adopts an abandoned heap
// whole or creates one; a pthread key's destructor abandons it to the domain at
// thread exit with whatever it still holds (after sending its pending remote
// frees to their owners).  fork() is handled here too, so that the rules for
// which lock is held across it, and what the child inherits, read in one place.
#include "lifecycle.h++"

#include <pthread.h>

#include "large.h++"
#include "sanitizer.h++"
#include "tcache.h++"
#include "vg.h++"

namespace lca {

namespace {

constinit pthread_key_t g_heap_key;
constinit pthread_once_t g_heap_key_once = PTHREAD_ONCE_INIT;

void heap_abandon(Heap* h) {
  Domain* d = h->domain;
  DomainLock lock(d);
  heap_collect_all(h, false);
  h->abandoned = true;
  h->next_abandoned = d->abandoned;
  d->abandoned = h;
}

void on_thread_exit(void* value) {
  VgSerial serial;
  auto* h = static_cast<Heap*>(value);
  remote_batch_flush_all(h);
  if (tls_owned_heap == h) {
    tls_owned_heap = nullptr;
    tls_heap = &g_no_heap;
  }
  heap_abandon(h);
}

void make_heap_key() { pthread_key_create(&g_heap_key, on_thread_exit); }

}  // namespace

Heap* heap_for_thread() {
  Heap* h = thread_heap_if_any();
  if (h) return h;
  pthread_once(&g_heap_key_once, make_heap_key);
  free_guard_init();  // before the first object of any heap can be freed
  vg_init();
  VgSerial serial;
  Domain* d = &g_process_domain;
  {
    DomainLock lock(d);
    h = d->abandoned;
    if (h) {
      d->abandoned = h->next_abandoned;
      h->next_abandoned = nullptr;
      h->abandoned = false;
    } else {
      h = heap_create_locked(d);
    }
  }
  if (!h) return nullptr;
  tls_owned_heap = h;
  if (!on_valgrind()) tls_heap = h;
  pthread_setspecific(g_heap_key, h);
  return h;
}

// In Valgrind mode the serialising lock alone is held across fork(): every other
// lock of libcalloc is that lock there (vg.h++), and the child, whose one thread
// took it, releases it as the parent does (a futex word: no owner to forget) --
// re-initialising held pthread mutexes, as outside Valgrind mode, would leave
// helgrind and DRD believing the parent's threads still hold them.
void domains_prefork() {
  vg_prefork_first();
  if (vg_serialised()) return vg_prefork();
  pthread_mutex_lock(&g_domains_lock);
  for (Domain* d = &g_process_domain; d; d = d->next) pthread_mutex_lock(&d->lock);
  large_lock_all();
  vg_prefork();
}

void domains_postfork_parent() {
  vg_postfork_parent();
  if (vg_serialised()) return;
  large_unlock_all();
  for (Domain* d = &g_process_domain; d; d = d->next) pthread_mutex_unlock(&d->lock);
  pthread_mutex_unlock(&g_domains_lock);
}

void domains_postfork_child() {
  if (!vg_serialised()) {
    large_reinit_after_fork();
    for (Domain* d = &g_process_domain; d; d = d->next) {
      tsan_released_at_fork(&d->lock);
      init_recursive(&d->lock);
    }
    tsan_released_at_fork(&g_domains_lock);
    pthread_mutex_init(&g_domains_lock, nullptr);
  }
  // The other threads are gone in the child, but their heaps are not adopted: a
  // thread heap changes without a lock, so the fork may have caught one in the
  // middle of an operation (a span or arena list half updated), and a thread of
  // the child working on it would corrupt memory.  Their memory stays mapped and
  // unused in the child (frees of their blocks go to their remote lists); heaps
  // that were abandoned before the fork were consistent (the domain lock was
  // held) and stay adoptable.
  vg_postfork_child();
}

}  // namespace lca
