/* libcalloc.h -- the C API of libcalloc.

   Every function here works whether or not libcalloc also replaces the system
   malloc (configure --disable-override keeps glibc's malloc and leaves only these
   lca_* entry points).  Memory from one family must be released by the same family:
   with the override on, lca_free and free are the same function.  */
#ifndef LIBCALLOC_H
#define LIBCALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LCA_EXPORT __attribute__((visibility("default")))
#else
#define LCA_EXPORT
#endif

/* The malloc family.  Failures return NULL with errno = ENOMEM (EINVAL for a
   non-power-of-two alignment); lca_free preserves errno.  Freeing a pointer that
   libcalloc never returned, or freeing a block twice, prints one line naming the
   problem and the address on stderr and aborts.
   lca_free, lca_realloc, lca_reallocarray and lca_usable_size also take the
   blocks of libcalloc's C++ heaps (<custom_alloc/...>) and act on each in the
   heap that owns it: a block of a custom_alloc::SecureAllocator is checked,
   resized and measured there (a realloc that moves gets its new block from that
   SecureAllocator: it stays hardened; its usable size is the size requested),
   a HugePageAllocator's huge block likewise (its usable size is its mapped
   size, and it stays a huge block of its allocator).  A block of an allocator
   destroyed since is nobody's.  */
LCA_EXPORT void *lca_malloc(size_t size);
LCA_EXPORT void *lca_calloc(size_t count, size_t size);
LCA_EXPORT void *lca_realloc(void *ptr, size_t size);
LCA_EXPORT void *lca_reallocarray(void *ptr, size_t count, size_t size);
LCA_EXPORT void lca_free(void *ptr);
LCA_EXPORT void *lca_aligned_alloc(size_t alignment, size_t size);
LCA_EXPORT int lca_posix_memalign(void **result, size_t alignment, size_t size);
LCA_EXPORT void *lca_memalign(size_t alignment, size_t size);
LCA_EXPORT size_t lca_usable_size(const void *ptr);
/* C23 free_sized and free_aligned_sized (exported as those names too, with the
   override): size (and alignment) must be what the block was allocated with.  A
   build configured with --enable-secure checks them and aborts with "Size
   mismatch" or "Alignment mismatch"; otherwise they free like lca_free.  */
LCA_EXPORT void lca_free_sized(void *ptr, size_t size);
LCA_EXPORT void lca_free_aligned_sized(void *ptr, size_t alignment, size_t size);

/* Counters of the process heap (the one behind malloc).  They are kept per thread
   and summed on read: exact when the other threads are quiet.  */
struct lca_stats {
  size_t total_allocated;     /* bytes handed out since start (usable sizes) */
  size_t total_freed;         /* bytes returned since start */
  size_t active_allocations;  /* blocks allocated and not yet freed */
  size_t os_memory_mapped;    /* bytes currently mapped from the OS */
  size_t fragmentation_bytes; /* mapped bytes not holding live data */
  size_t allocation_count;    /* allocations since start */
  size_t free_count;          /* frees since start */
  size_t realloc_in_place;    /* reallocs that kept their address */
  size_t realloc_moved;       /* reallocs that copied to a new block */
  size_t realloc_remapped;    /* large reallocs moved by mremap, no copy */
  size_t large_mappings;      /* live dedicated mappings (blocks > 1 MiB) */
};
LCA_EXPORT void lca_get_stats(struct lca_stats *out);

/* How much of libcalloc's memory huge pages back, for the whole process (every
   heap, the large blocks, every HugePageAllocator), and what purging did about
   huge pages.  The byte figures are computed when asked, from /proc/self/smaps
   (AnonHugePages of each mapping): a read of the whole file, about a millisecond
   per thousand mappings -- not for a hot loop.  Where the kernel merged one of
   libcalloc's mappings with a foreign one (same flags, adjacent), the mapping's
   huge pages are shared out in proportion to the 2 MiB ranges each part holds.  */
struct lca_huge_stats {
  size_t huge_backed_bytes;    /* thp_backed_bytes + hugetlb_bytes */
  size_t thp_backed_bytes;     /* transparent huge pages in libcalloc's mappings: */
  size_t thp_heap_bytes;       /*   in the heaps' 4 MiB chunks */
  size_t thp_large_bytes;      /*   in large blocks (own mappings, > 1 MiB; cached ones too) */
  size_t thp_huge_block_bytes; /*   in HugePageAllocator blocks that are not hugetlb */
  size_t hugetlb_bytes;        /* live HugePageAllocator blocks on hugetlb pages */
  size_t mapped_bytes;         /* everything libcalloc maps now, for comparison */
  size_t hugetlb_fallbacks;    /* allocate_huge calls the hugetlb pool refused (since start) */
  size_t purged_huge_ranges;   /* whole free 2 MiB ranges returned to the OS (since start) */
  size_t purge_kept_ranges;    /* partly used 2 MiB ranges a purge left resident (since start) */
  size_t purge_kept_bytes;     /* the free bytes those ranges kept resident (summed) */
  int smaps_readable;          /* 0: /proc/self/smaps could not be read, the thp_* are 0 */
};
LCA_EXPORT void lca_get_huge_stats(struct lca_huge_stats *out);

/* Writes a human-readable statistics report to the file descriptor fd, with the
   huge-page figures of lca_get_huge_stats.  Used at exit when LIBCALLOC_OPTIONS
   contains stats=1.  */
LCA_EXPORT void lca_print_stats(int fd);

/* Returns cached memory (empty spans, cached large mappings) to the OS.  */
LCA_EXPORT void lca_trim(void);

/* The library's version, e.g. "0.1.0".  */
LCA_EXPORT const char *lca_version(void);

#ifdef __cplusplus
}
#endif

#endif /* LIBCALLOC_H */
