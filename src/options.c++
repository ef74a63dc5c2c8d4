// options.c++ -- LIBCALLOC_OPTIONS parsing.
//
// Runs from the library constructor, before main; it must not allocate, so it
// walks the string in place.
#include "options.h++"
#include "placement.h++"

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <sys/auxv.h>

#include "config.h"
#include "report.h++"

namespace lca {

constinit Options g_options{};

namespace {

// n == 0: a bare key (options_parse refuses "key=" before this).
bool parse_bool(const char* v, std::size_t n, bool* out) {
  auto is = [&](const char* word) { return std::strlen(word) == n && std::strncmp(v, word, n) == 0; };
  if (n == 0 || is("1") || is("true") || is("yes") || is("on")) return *out = true, true;
  if (is("0") || is("false") || is("no") || is("off")) return *out = false, true;
  return false;
}

// Whether profile_signal may name sig (0: none).  Not SIGKILL or SIGSTOP, which
// cannot be caught, nor the C library's own signals below SIGRTMIN (glibc: 32
// and 33), for which sigaction fails: either way no profile was ever written,
// and nothing said so.  Not a fault (SIGSEGV, SIGBUS, SIGILL, SIGFPE) either:
// the handler only sets a flag and returns to the faulting instruction, which
// faults again, so a crash became an endless loop (tests/unit/track,
// test_options_refuse_unusable_profile_signals).
// Constants, not SIGRTMIN and SIGRTMAX, which are calls into glibc: each call
// through the PLT is one more .got.plt slot, which ends at a 64-byte boundary of
// .data today, so one more slot moves .data and .bss and puts g_empty_span,
// which every program reads, on a page of .bss a small program never touches
// otherwise (tests/integration/small-rss.sh failed: 0 -> 4 KiB).  glibc's
// threads keep 32 and 33 (SIGRTMIN is 34); the last signal is 64.
constexpr int kFirstRealtimeSignal = 34;
constexpr unsigned long long kSampleMax = 1ull << 40;  // the largest sample= (bytes)
constexpr int kLastSignal = 64;
bool usable_profile_signal(int sig) {
  if (sig == 0) return true;
  if (sig == SIGKILL || sig == SIGSTOP || sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE)
    return false;
  return sig < 32 || (sig >= kFirstRealtimeSignal && sig <= kLastSignal);
}

// Tracking options (values that are not booleans).  True when key is one of
// them; problems are counted in *problems.
// name: the key as a string, for the warning of a build without tracking.
bool parse_tracking_option(const char* key, std::size_t key_len, [[maybe_unused]] const char* name, const char* v,
                           std::size_t n, Options* out, int* problems) {
  auto key_is = [&](const char* k) { return std::strlen(k) == key_len && std::strncmp(key, k, key_len) == 0; };
  auto is = [&](const char* word) { return std::strlen(word) == n && std::strncmp(v, word, n) == 0; };
  auto copy_path = [&](char* dst, std::size_t cap) {
    bool flag;
    if (parse_bool(v, n, &flag)) {
      std::strcpy(dst, flag ? "-" : "");
    } else if (n >= cap) {
      report_warning("LIBCALLOC_OPTIONS: path too long for ", key_len == 7 ? "profile" : "leak_report");
      ++*problems;
    } else {
      std::memcpy(dst, v, n);
      dst[n] = 0;
    }
  };
  auto number = [&](unsigned long long* dst, const char* what) {
    unsigned long long x = 0;
    std::size_t i = 0;
    for (; i < n && v[i] >= '0' && v[i] <= '9' && x < (1ull << 50); ++i) x = x * 10 + static_cast<unsigned>(v[i] - '0');
    if (n == 0 || i != n) {
      report_warning("LIBCALLOC_OPTIONS: expected a number for ", what);
      ++*problems;
      return false;
    }
    *dst = x;
    return true;
  };
  if (key_is("leak_report")) {
    copy_path(out->leak_report, sizeof out->leak_report);
  } else if (key_is("profile")) {
    copy_path(out->profile, sizeof out->profile);
  } else if (key_is("profile_format")) {
    if (is("text")) out->profile_format = 0;
    else if (is("collapsed")) out->profile_format = 1;
    else if (is("pprof")) out->profile_format = 2;
    else {
      report_warning("LIBCALLOC_OPTIONS: expected text, collapsed or pprof for ", "profile_format");
      ++*problems;
    }
  } else if (key_is("sample")) {
    // At most 1 TiB: a block's weight is about 2^16 x sample / size in a
    // 64-bit integer (track.c++, sample_weight), which a mean interval above
    // ~2^48 bytes overflowed for small blocks (undefined behaviour).
    unsigned long long bytes = 0;
    if (number(&bytes, "sample")) {
      // 0 meant "unset" without a word: leak_report then tracked every
      // allocation and profile sampled one per 512 KiB, where one reading
      // of 0 is "no sampling" (every allocation: jemalloc's lg_prof_sample:0)
      // and another "no profile" (tcmalloc's sample parameter 0).  Refused,
      // as other bad values are: the default applies, and the warning says
      // how to ask for every allocation.
      if (bytes == 0) {
        report_warning("LIBCALLOC_OPTIONS: 0 is no rate, ignored (sample=1 records every allocation; "
                       "without sample= the default applies): ", "sample");
        ++*problems;
      } else if (bytes > kSampleMax) {
        report_warning("LIBCALLOC_OPTIONS: more than 1 TiB (1099511627776) for ", "sample");
        ++*problems;
      } else {
        out->sample = bytes;
      }
    }
  } else if (key_is("profile_signal")) {
    unsigned long long sig = 0;
    if (number(&sig, "profile_signal")) {
      if (sig > static_cast<unsigned long long>(kLastSignal)) {
        report_warning("LIBCALLOC_OPTIONS: no such signal for ", "profile_signal");
        ++*problems;
      } else if (!usable_profile_signal(static_cast<int>(sig))) {
        report_warning("LIBCALLOC_OPTIONS: a signal that cannot be caught, the C library's own or a fault for ",
                       "profile_signal");
        ++*problems;
      } else {
        out->profile_signal = static_cast<int>(sig);
      }
    }
  } else {
    return false;
  }
#if !CALLOC_TRACKING
  report_warning("LIBCALLOC_OPTIONS: allocation tracking is not built in (configure --enable-tracking), ignored: ",
                 name);
#endif
  return true;
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
    if (key_len != 0 && eq && value_len == 0) {
      // "key=" with nothing after it: a script's empty variable
      // (stats=$STATS, leak_report=$FILE).  It read as a bare key, so it
      // switched stats on, or sent the leak report to stderr, without a word
      // (tests/unit/capi, test_options_parse).  Warned about and ignored.
      report_warning("LIBCALLOC_OPTIONS: no value after '=', ignored (a key alone means 1): ", name);
      ++problems;
    } else if (parse_tracking_option(p, key_len, name, value, value_len, out, &problems)) {
      // done
    } else if (key_len == 0) {
      // empty item, e.g. a trailing comma
    } else if (!target) {
      report_warning("LIBCALLOC_OPTIONS: unknown option ", name);
      ++problems;
    } else if (!parse_bool(value, value_len, target)) {
      // The words parse_bool takes (libcalloc(7)); "0 or 1" read as if true,
      // yes and on were refused.
      report_warning("LIBCALLOC_OPTIONS: expected 1, true, yes, on, 0, false, no or off for ", name);
      ++problems;
    } else if (target == &huge_heap_value) {
      out->huge_heap = huge_heap_value ? 1 : 0;
    }
    p = end ? end + 1 : nullptr;
  }
#if CALLOC_TRACKING
  // leak_report and profile naming one file: the profile, written second at
  // exit, truncated it and the leak report was lost without a word
  // (tests/unit/track, test_options_leak_report_and_profile_in_one_file).
  if (out->leak_report[0] && std::strcmp(out->leak_report, "-") != 0 &&
      std::strcmp(out->leak_report, out->profile) == 0) {
    report_warning("LIBCALLOC_OPTIONS: leak_report and profile name the same file, the leak report goes to stderr: ",
                   out->profile);
    std::strcpy(out->leak_report, "-");
    ++problems;
  }
#endif
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

// Not a literal: .rodata would be mapped at start-up for it (placement.h++).
LCA_CORE_RODATA(options_variable) constinit const char kOptionsVariable[] = "LIBCALLOC_OPTIONS";

// Not in secure-execution mode (a set-user-ID or set-group-ID program, or one
// with file capabilities: AT_SECURE), as glibc's malloc ignores its MALLOC_
// variables there: the variable is the invoking user's, the rights the
// program's owner's, and leak_report=PATH and profile=PATH made a set-user-ID
// root program linked with a tracking build create or truncate any file at
// exit (tests/unit/capi, test_options_ignored_when_setuid).  getauxval only
// when the variable is set: not secure_getenv, whose code lies in a 64 KiB
// window of libc's text that a program without the variable never maps
// (placement.h++).
LCA_CORE_TEXT void options_init() {
  const char* text = std::getenv(kOptionsVariable);
  if (text && getauxval(AT_SECURE) == 0) options_parse(text, &g_options);
}

}  // namespace lca
