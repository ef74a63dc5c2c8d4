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

// Constant data that every program reads (start-up included) goes in the
// RELRO page, not in .rodata.  .rodata, .eh_frame_hdr and .eh_frame make one
// read-only mapping of about 37 KiB, all of it in one fault-around window: the
// first read of any constant there maps its 10 pages (40 KiB).  The RELRO page
// (.data.rel.ro, .dynamic, .got) is resident in every program already: the
// loader reads .dynamic and writes the GOT.  So a constant read on a common
// path -- a string literal passed to a libc function, a table the fast or slow
// paths index -- carries this attribute instead of being a literal (the
// compiler puts literals, and switch jump tables, in .rodata).  A common path
// that reads .rodata costs each program 40 KiB; tests/integration/small-rss.sh
// checks that none does.  One section per variable (name): GCC puts an inline
// variable in a COMDAT group of its section, and a second inline variable given
// the same section lands in the first one's group (a duplicate definition at
// the link).
#if defined(__ELF__)
#define LCA_CORE_RODATA(name) __attribute__((section(".data.rel.ro.lca_core." #name)))
#else
#define LCA_CORE_RODATA(name)
#endif

// Big zero-initialised tables that a small program touches a page of or none
// (the chunk registry, the orphan pools, the quarantines, the secure heap's
// radix tree, the NUMA topology) go in x86-64's .lbss, which GNU ld puts after
// all of .bss: the small globals every program writes (locks, once-flags,
// counters) then share the pages of .bss, the first of them the page .data ends
// in, instead of being spread between the tables over 3-4 pages.  Elsewhere
// plain .bss.
#if defined(__ELF__) && defined(__x86_64__)
#define LCA_BIG_BSS(name) __attribute__((section(".lbss.lca." #name)))
#else
#define LCA_BIG_BSS(name)
#endif

// Small zero-initialised variables that every program writes or reads at
// start-up or on its first allocation (once-flags, keys, mode flags) go in
// .data, not .bss.  libcalloc's writable segment is .data.rel.ro, .dynamic,
// .got, .data, then .bss and .lbss: the pages of it that are in the file
// (through the end of .data) come in with the loader's first read of .dynamic
// (one fault-around window), but .bss runs past the last of them, onto a page
// that is anonymous and becomes resident only when something on it is touched.
// A variable of .bss lands there or not by the link order of its object file:
// those that every program touches carry this attribute, so that the page
// stays untouched in a program that uses neither large blocks nor the optional
// modules (tests/integration/small-rss.sh checks it).  One section per variable
// (name), as for LCA_CORE_RODATA.  Elsewhere (not ELF) plain .bss.
#if defined(__ELF__)
#define LCA_CORE_DATA(name) __attribute__((section(".data.lca_core." #name)))
#else
#define LCA_CORE_DATA(name)
#endif

// GCC merges neighbouring constant stores (or increments) into one 16-byte
// vector store (or add) of a constant it puts in .rodata: on a common path, a
// read of .rodata like any other.  A compiler barrier between them keeps them
// scalar (on slow paths only: it also makes the compiler reload what it held).
#define LCA_SPLIT_STORES() asm volatile("" ::: "memory")

#endif  // LCA_PLACEMENT_HXX
