// stats.h++ -- statistics snapshots and the report printed at exit.
#ifndef LCA_STATS_HXX
#define LCA_STATS_HXX

#include <libcalloc.h>
#include "tcache.h++"

namespace lca {

void stats_fill(Domain* d, lca_stats* out);
// Process-wide; reads /proc/self/smaps (huge.h++, huge_coverage).
void huge_stats_fill(lca_huge_stats* out);
void stats_print(Domain* d, int fd);

}  // namespace lca

#endif
