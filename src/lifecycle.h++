// lifecycle.h++ -- thread exit, heap adoption and fork() for every domain
// (lifecycle.c++).  heap_for_thread() is declared in tcache.h++ with the
// allocation paths that call it.
#ifndef LCA_LIFECYCLE_HXX
#define LCA_LIFECYCLE_HXX

namespace lca {

// pthread_atfork handlers, registered once by malloc.c++.
void domains_prefork();
void domains_postfork_parent();
void domains_postfork_child();

}  // namespace lca

#endif
