// custom_alloc.h++ -- the C++ API of libcalloc (namespace custom_alloc).
#ifndef CUSTOM_ALLOC_HXX
#define CUSTOM_ALLOC_HXX
#include <custom_alloc/memory_allocator.h++>
#include <custom_alloc/huge_page_allocator.h++>
#include <custom_alloc/secure_allocator.h++>
// Allocation tracking (symbols only in --enable-tracking builds).
#include <custom_alloc/allocation_tracker.h++>
#include <custom_alloc/numa_allocator.h++>
// Smart pointers and standard-library adapters (issue 16).
#include <custom_alloc/memory.h++>
// Defragmentation: installed only when libcalloc was built with it (--enable-defrag).
#if __has_include(<custom_alloc/defrag.h++>)
#include <custom_alloc/defrag.h++>
#include <custom_alloc/handle_ptr.h++>
#endif
#endif
