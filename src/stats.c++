// stats.c++ -- summing per-thread counters into snapshots, and printing them.
//
// Counters are kept per heap and written without atomic read-modify-writes; a
// snapshot adds them up under the domain lock, so it is exact when the threads are
// quiet and close otherwise.
#include "stats.h++"

#include "huge.h++"
#include "os.h++"
#include "report.h++"

namespace lca {

void stats_fill(Domain* d, lca_stats* out) {
  DomainStats s = domain_stats(d);
  std::size_t live_bytes = s.total_allocated > s.total_freed ? s.total_allocated - s.total_freed : 0;
  out->total_allocated = s.total_allocated;
  out->total_freed = s.total_freed;
  out->active_allocations = s.allocation_count > s.free_count ? s.allocation_count - s.free_count : 0;
  out->os_memory_mapped = s.os_memory_mapped;
  out->fragmentation_bytes = s.os_memory_mapped > live_bytes ? s.os_memory_mapped - live_bytes : 0;
  out->allocation_count = s.allocation_count;
  out->free_count = s.free_count;
  out->realloc_in_place = s.realloc_in_place;
  out->realloc_moved = s.realloc_moved;
  out->realloc_remapped = s.realloc_remapped;
  out->large_mappings = s.large_mappings;
}

void huge_stats_fill(lca_huge_stats* out) {
  HugeCoverage cov = huge_coverage();
  HugePurgeCounters purge = huge_purge_counters();
  *out = lca_huge_stats{};
  out->thp_heap_bytes = cov.thp_heap;
  out->thp_large_bytes = cov.thp_large;
  out->thp_huge_block_bytes = cov.thp_blocks;
  out->thp_backed_bytes = cov.thp_heap + cov.thp_large + cov.thp_blocks;
  out->hugetlb_bytes = cov.hugetlb;
  out->huge_backed_bytes = out->thp_backed_bytes + cov.hugetlb;
  out->mapped_bytes = os_mapped_bytes();
  out->hugetlb_fallbacks = huge_total_hugetlb_fallbacks();
  out->purged_huge_ranges = purge.purged_ranges;
  out->purge_kept_ranges = purge.kept_ranges;
  out->purge_kept_bytes = purge.kept_bytes;
  out->smaps_readable = cov.smaps_read ? 1 : 0;
}

void stats_print(Domain* d, int fd) {
  lca_stats s{};
  stats_fill(d, &s);
  lca_huge_stats hs{};
  huge_stats_fill(&hs);
  char buf[3072];
  Writer w{buf, sizeof buf};
  auto line = [&](const char* name, std::size_t v) { w.str("libcalloc:   ").str(name).str(" ").num(v).str("\n"); };
  w.str("libcalloc: statistics of the process heap\n");
  line("allocations          ", s.allocation_count);
  line("frees                ", s.free_count);
  line("active allocations   ", s.active_allocations);
  line("bytes allocated      ", s.total_allocated);
  line("bytes freed          ", s.total_freed);
  line("live bytes           ", s.total_allocated - s.total_freed);
  line("OS memory mapped     ", s.os_memory_mapped);
  line("fragmentation bytes  ", s.fragmentation_bytes);
  line("realloc in place     ", s.realloc_in_place);
  line("realloc moved        ", s.realloc_moved);
  line("realloc by mremap    ", s.realloc_remapped);
  line("large mappings       ", s.large_mappings);
  line("chunks (4 MiB)       ", registry_chunk_count());
  w.str("libcalloc: huge pages, whole process").str(hs.smaps_readable ? "" : " (/proc/self/smaps unreadable)").str("\n");
  line("huge-page backed     ", hs.huge_backed_bytes);
  line("  THP, heap chunks   ", hs.thp_heap_bytes);
  line("  THP, large blocks  ", hs.thp_large_bytes);
  line("  THP, huge blocks   ", hs.thp_huge_block_bytes);
  line("  hugetlb blocks     ", hs.hugetlb_bytes);
  line("mapped by libcalloc  ", hs.mapped_bytes);
  line("hugetlb fallbacks    ", hs.hugetlb_fallbacks);
  line("2 MiB ranges purged  ", hs.purged_huge_ranges);
  line("partly used, kept    ", hs.purge_kept_ranges);
  line("  free bytes kept    ", hs.purge_kept_bytes);
  w.flush_to(fd);
}

}  // namespace lca
