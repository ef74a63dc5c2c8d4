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
   problem and the address on stderr and aborts.  */
LCA_EXPORT void *lca_malloc(size_t size);
LCA_EXPORT void *lca_calloc(size_t count, size_t size);
LCA_EXPORT void *lca_realloc(void *ptr, size_t size);
LCA_EXPORT void *lca_reallocarray(void *ptr, size_t count, size_t size);
LCA_EXPORT void lca_free(void *ptr);
LCA_EXPORT void *lca_aligned_alloc(size_t alignment, size_t size);
LCA_EXPORT int lca_posix_memalign(void **result, size_t alignment, size_t size);
LCA_EXPORT void *lca_memalign(size_t alignment, size_t size);
LCA_EXPORT size_t lca_usable_size(const void *ptr);

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

/* Writes a human-readable statistics report to the file descriptor fd.  Used at
   exit when LIBCALLOC_OPTIONS contains stats=1.  */
LCA_EXPORT void lca_print_stats(int fd);

/* Returns cached memory (empty spans, cached large mappings) to the OS.  */
LCA_EXPORT void lca_trim(void);

/* The library's version, e.g. "0.1.0".  */
LCA_EXPORT const char *lca_version(void);

#ifdef __cplusplus
}
#endif

#endif /* LIBCALLOC_H */
