// report.h++ -- fatal error and warning messages.
//
// Messages are one line on stderr, written with write(2) (no stdio, no malloc),
// starting with "libcalloc: " and naming the problem and the address, e.g.
//   libcalloc: Double free of 0x7f3a12c40040 (a block of 64 bytes)
// The problem names are stable: tests and users match on them.
#ifndef LCA_REPORT_HXX
#define LCA_REPORT_HXX

#include <cstddef>

namespace lca {

// Prints "libcalloc: PROBLEM of ADDR: DETAIL" and aborts.
[[noreturn]] void report_fatal(const char* problem, const void* addr, const char* detail);
// Prints "libcalloc: warning: TEXT".
void report_warning(const char* text, const char* arg = nullptr);

// Minimal formatting into a caller's buffer (no malloc).
struct Writer {
  char* buf;
  std::size_t cap;
  std::size_t len = 0;
  Writer& str(const char* s);
  Writer& num(unsigned long long v);
  Writer& hex(unsigned long long v);
  Writer& ptr(const void* p);
  Writer& fixed(double v, int decimals);
  void flush_to(int fd);
};

}  // namespace lca

#endif
