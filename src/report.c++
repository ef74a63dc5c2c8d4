// report.c++ -- how libcalloc tells the user that something is wrong.
//
// Every fatal report goes through report_fatal: one line on stderr, then abort().
// The allocator's state may be corrupt at that point, so nothing here allocates or
// takes a lock.
#include "report.h++"

#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace lca {

Writer& Writer::str(const char* s) {
  while (s && *s && len + 1 < cap) buf[len++] = *s++;
  return *this;
}

Writer& Writer::num(unsigned long long v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  while (n && len + 1 < cap) buf[len++] = tmp[--n];
  return *this;
}

Writer& Writer::hex(unsigned long long v) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  while (n && len + 1 < cap) buf[len++] = tmp[--n];
  return *this;
}

Writer& Writer::ptr(const void* p) {
  if (!p) return str("(nil)");
  str("0x");
  return hex(reinterpret_cast<unsigned long long>(p));
}

Writer& Writer::fixed(double v, int decimals) {
  if (v < 0) {
    str("-");
    v = -v;
  }
  unsigned long long scale = 1;
  for (int i = 0; i < decimals; ++i) scale *= 10;
  auto scaled = static_cast<unsigned long long>(v * static_cast<double>(scale) + 0.5);
  num(scaled / scale);
  if (decimals) {
    str(".");
    unsigned long long frac = scaled % scale;
    for (unsigned long long d = scale / 10; d; d /= 10) {
      num(frac / d);
      frac %= d;
    }
  }
  return *this;
}

void Writer::flush_to(int fd) {
  std::size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, buf + off, len - off);
    if (w <= 0) break;
    off += static_cast<std::size_t>(w);
  }
  len = 0;
}

void report_fatal(const char* problem, const void* addr, const char* detail) {
  char line[256];
  Writer w{line, sizeof line};
  w.str("libcalloc: ").str(problem).str(" of ").ptr(addr);
  if (detail && *detail) w.str(": ").str(detail);
  w.str("\n");
  w.flush_to(2);
  abort();
}

void report_warning(const char* text, const char* arg) {
  char line[256];
  Writer w{line, sizeof line};
  w.str("libcalloc: warning: ").str(text);
  if (arg) w.str(arg);
  w.str("\n");
  w.flush_to(2);
}

}  // namespace lca
