// stats.h++ -- statistics snapshots and the report printed at exit.
#ifndef LCA_STATS_HXX
#define LCA_STATS_HXX

#include <libcalloc.h>
#include "tcache.h++"

namespace lca {

void stats_fill(Domain* d, lca_stats* out);
void stats_print(Domain* d, int fd);

}  // namespace lca

#endif
