// lifecycle.h++ -- thread exit, heap adoption and fork() for every domain
// (lifecycle.c++).  heap_for_thread() is declared in tcache.h++ with the
// allocation paths that call it.
#ifndef LCA_LIFECYCLE_HXX
#define LCA_LIFECYCLE_HXX

#include <atomic>
#include <pthread.h>

namespace lca {

// pthread_atfork handlers, registered once by malloc.c++.
void domains_prefork();
void domains_postfork_parent();
void domains_postfork_child();

// The handle heaps' part of them (handle.c++, built with --enable-defrag):
// called last by the prepare handler (the table list's lock held across the
// fork, each table's lock passed with a flag), first by the parent handler,
// first (the list's lock let go) and last by the child handler (the other
// threads' records, locks and batch in flight).
void handles_prefork();
void handles_postfork_parent();
void handles_postfork_child_unlock();
void handles_postfork_child();

// fork(): the prepare handler takes some locks only once, storing its
// fork_token() in a `forking` word beside each (under it) and releasing it;
// whoever takes such a lock later finds the word set.  fork_token: what
// identifies the calling thread there (any address of its own will do).
const void* fork_token();
// With `held` taken and `forking` found set: unless the fork is the calling
// thread's own (a pthread_atfork handler of another library, run between
// libcalloc's, may allocate), lets go of `held`, waits for `gate` -- a lock the
// forking thread holds from before it set the word until after it cleared it,
// so the waiter sleeps rather than spins -- and takes `held` again, until the
// word is clear.  Used for the heaps' statistics locks (gate: their domain's
// lock), the private domains' locks and the domain list's lock when a flagged
// domain leaves it (the domains' fork gate), the hardened heaps' class locks
// (their heap list's) and the huge-page tables' (their list's).
void fork_wait(const std::atomic<const void*>& forking, pthread_mutex_t* held, pthread_mutex_t* gate);

}  // namespace lca

#endif
