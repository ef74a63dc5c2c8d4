// options.c++ -- LIBCALLOC_OPTIONS parsing.
//
// Runs from the library constructor, before main; it must not allocate, so it
// walks the string in place.
#include "options.h++"

#include <cstdlib>
#include <cstring>

#include "report.h++"

namespace lca {

constinit Options g_options{};

namespace {

bool parse_bool(const char* v, std::size_t n, bool* out) {
  auto is = [&](const char* word) { return std::strlen(word) == n && std::strncmp(v, word, n) == 0; };
  if (n == 0 || is("1") || is("true") || is("yes") || is("on")) return *out = true, true;
  if (is("0") || is("false") || is("no") || is("off")) return *out = false, true;
  return false;
}

}  // namespace

int options_parse(const char* text, Options* out) {
  int problems = 0;
  const char* p = text;
  while (p && *p) {
    const char* end = std::strchr(p, ',');
    std::size_t len = end ? static_cast<std::size_t>(end - p) : std::strlen(p);
    const char* eq = static_cast<const char*>(std::memchr(p, '=', len));
    std::size_t key_len = eq ? static_cast<std::size_t>(eq - p) : len;
    const char* value = eq ? eq + 1 : p + len;
    std::size_t value_len = eq ? len - key_len - 1 : 0;
    auto key_is = [&](const char* k) { return std::strlen(k) == key_len && std::strncmp(p, k, key_len) == 0; };
    bool* target = key_is("stats") ? &out->stats : key_is("verbose") ? &out->verbose : nullptr;
    if (key_is("numa")) target = &out->numa;
    bool huge_heap_value = false;
    if (key_is("huge_heap")) target = &huge_heap_value;
    char name[64];
    std::size_t copy = key_len < sizeof name - 1 ? key_len : sizeof name - 1;
    std::memcpy(name, p, copy);
    name[copy] = 0;
    if (key_len == 0) {
      // empty item, e.g. a trailing comma
    } else if (!target) {
      report_warning("LIBCALLOC_OPTIONS: unknown option ", name);
      ++problems;
    } else if (!parse_bool(value, value_len, target)) {
      report_warning("LIBCALLOC_OPTIONS: expected 0 or 1 for ", name);
      ++problems;
    } else if (target == &huge_heap_value) {
      out->huge_heap = huge_heap_value ? 1 : 0;
    }
    p = end ? end + 1 : nullptr;
  }
  return problems;
}

void options_print(const Options& o, const char* version, int fd) {
  char line[128];
  Writer w{line, sizeof line};
  w.str("libcalloc ").str(version).str(": options stats=").num(o.stats).str(" verbose=").num(o.verbose);
  w.str(" huge_heap=");
  if (o.huge_heap < 0) w.str("system");
  else w.num(static_cast<unsigned>(o.huge_heap));
  w.str(" numa=").num(o.numa);
  w.str("\n");
  w.flush_to(fd);
}

void options_init() {
  const char* text = std::getenv("LIBCALLOC_OPTIONS");
  if (text) options_parse(text, &g_options);
}

}  // namespace lca
