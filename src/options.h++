// options.h++ -- run-time options from LIBCALLOC_OPTIONS.
#ifndef LCA_OPTIONS_HXX
#define LCA_OPTIONS_HXX

namespace lca {

struct Options {
  bool stats = false;    // print statistics at exit
  bool verbose = false;  // print the version and the options in force at start-up
  // huge_heap: 1 advises the heap's chunks MADV_HUGEPAGE (transparent huge pages
  // where the system mode is madvise or always), 0 MADV_NOHUGEPAGE (none even under
  // always); -1, the default, leaves the system's mode alone (chunk.c++).
  signed char huge_heap = -1;
  // Allocation tracking (track.c++; a build without --enable-tracking warns
  // that these are not built in).  leak_report and profile: "" off, "-"
  // stderr, else a path ("%p" becomes the process id).  sample: the mean bytes
  // between samples, 0 when not given (1 means every allocation).
  char leak_report[256] = "";
  char profile[256] = "";
  unsigned char profile_format = 0;  // 0 text, 1 collapsed, 2 pprof
  unsigned long long sample = 0;
  int profile_signal = -1;  // -1: SIGUSR2 when profile is set; 0: none
  // numa: node-local thread heaps in the process heap (numa.h++); no effect on a
  // machine with one usable node or when built with --disable-numa.
  bool numa = false;
};

extern Options g_options;

// Parses LIBCALLOC_OPTIONS ("key=value,key=value"; a bare key means 1) once.
// Unknown keys and bad values are warned about on stderr and ignored.
void options_init();
// Parses one option string (exposed for tests).  Returns the number of problems.
int options_parse(const char* text, Options* out);
// Writes "libcalloc VERSION: options stats=N verbose=N huge_heap=N|system numa=N" to fd.
void options_print(const Options& o, const char* version, int fd);

}  // namespace lca

#endif
