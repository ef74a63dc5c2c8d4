// placement.h++ -- where the code every program runs goes in libcalloc.so's text.
//
// The kernel maps a shared library's text in 64 KiB fault-around windows: the
// first execution fault in a window maps every page of it that is in the page
// cache (16 pages, clamped to the mapping; for a fault in the first 64 KiB of the
// text mapping, the 16 pages from its start).  So the RSS that libcalloc's code
// costs a program is 64 KiB per window its running code touches, not the size
// of that code.  The code that any program runs -- start-up and exit, the
// malloc family's entry points and their slow paths for small, medium and large
// blocks, chunk and span management, the OS layer, and a thread's exit -- is
// given the section below; GNU ld puts .text.hot.* at the start of .text, right
// after the PLT, so it all falls in the text mapping's first window (about
// 36 KiB of the 162 KiB of text).  The C++ API classes, the optional modules,
// statistics, reports and the Valgrind and NUMA paths stay in .text, in
// windows a small program never touches (docs/design.md, "Linkage and a small
// program's fixed memory"; tests/integration/small-rss.sh checks it).  A
// function given the section is never split into hot and cold parts.  A new
// function on those common paths needs the attribute too, or the test sees a
// second window mapped.
#ifndef LCA_PLACEMENT_HXX
#define LCA_PLACEMENT_HXX

#if defined(__ELF__)
#define LCA_CORE_TEXT __attribute__((section(".text.hot.lca_core")))
#else
#define LCA_CORE_TEXT
#endif

#endif  // LCA_PLACEMENT_HXX
