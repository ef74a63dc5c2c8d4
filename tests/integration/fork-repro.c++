// fork-repro.c++ -- the two fork() scenarios of issue 11, as a program that runs
// on whichever malloc it gets: glibc's when run as is, libcalloc's under
// LD_PRELOAD (tests/integration/fork-deadlock.sh runs both, under `timeout`).
//
//   fork-repro stdio SECONDS   4 threads read a file of 2 MiB lines with getline
//                              (stdio holds the FILE lock while getline reallocs),
//                              1 thread calls fflush(NULL) in a loop (stdio's list
//                              lock, then each FILE lock), 2 threads fork in a loop
//                              (each child _exits at once).
//   fork-repro signal SECONDS  single-threaded: a 1 ms interval timer whose SIGALRM
//                              handler forks, while the main loop forks, mallocs
//                              (small, medium and large blocks) and frees.
//
// Prints one line "scenario=... seconds=... forks=N" and exits 0; a deadlock is
// what the caller's timeout catches.  Every child does a malloc/free before it
// _exits (the child of a fork can allocate at once), except the child of the
// handler's fork: the interrupted code may hold a malloc lock there, with glibc
// too, and malloc is not async-signal-safe.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

std::atomic<bool> g_stop{false};
std::atomic<long> g_forks{0};
volatile sig_atomic_t g_handler_forks = 0;
const char* g_path = nullptr;

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fork-repro: %s: %s\n", what, std::strerror(errno));
  std::exit(2);
}

// A child that allocates and frees before it leaves.
void child_allocates_and_exits() {
  void* p = std::malloc(100);
  void* q = std::malloc(300000);
  if (!p || !q) _exit(3);
  std::memset(p, 1, 100);
  std::memset(q, 2, 300000);
  std::free(q);
  std::free(p);
  _exit(0);
}

void reap(pid_t pid) {
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) die("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "fork-repro: a child failed (status %d)\n", status);
    std::exit(4);
  }
}

void* reader(void*) {
  FILE* f = std::fopen(g_path, "r");
  if (!f) die("fopen");
  char* line = nullptr;
  std::size_t cap = 0;
  while (!g_stop.load(std::memory_order_relaxed)) {
    // A fresh buffer now and then, so that getline's realloc keeps growing it.
    std::free(line);
    line = nullptr;
    cap = 0;
    if (getline(&line, &cap, f) < 0) std::rewind(f);
  }
  std::free(line);
  std::fclose(f);
  return nullptr;
}

void* flusher(void*) {
  while (!g_stop.load(std::memory_order_relaxed)) std::fflush(nullptr);
  return nullptr;
}

void* forker(void*) {
  while (!g_stop.load(std::memory_order_relaxed)) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) child_allocates_and_exits();
    reap(pid);
    g_forks.fetch_add(1, std::memory_order_relaxed);
  }
  return nullptr;
}

int run_stdio(double seconds) {
  char path[] = "/tmp/fork-repro-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) die("mkstemp");
  g_path = path;
  constexpr std::size_t kLine = std::size_t{2} << 20;
  char* buf = static_cast<char*>(std::malloc(kLine));
  if (!buf) die("malloc");
  std::memset(buf, 'x', kLine - 1);
  buf[kLine - 1] = '\n';
  for (int i = 0; i < 4; ++i)
    if (write(fd, buf, kLine) != static_cast<ssize_t>(kLine)) die("write");
  std::free(buf);
  close(fd);
  pthread_t t[7];
  int n = 0;
  for (int i = 0; i < 4; ++i) pthread_create(&t[n++], nullptr, reader, nullptr);
  pthread_create(&t[n++], nullptr, flusher, nullptr);
  for (int i = 0; i < 2; ++i) pthread_create(&t[n++], nullptr, forker, nullptr);
  double start = now_s();
  while (now_s() - start < seconds) usleep(10000);
  g_stop = true;
  for (int i = 0; i < n; ++i) pthread_join(t[i], nullptr);
  unlink(path);
  std::printf("scenario=stdio seconds=%.2f forks=%ld\n", now_s() - start, g_forks.load());
  return 0;
}

void on_alarm(int) {
  int saved = errno;
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  if (pid > 0) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    g_handler_forks = g_handler_forks + 1;
  }
  errno = saved;
}

int run_signal(double seconds) {
  struct sigaction sa {};
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, nullptr);
  itimerval it{{0, 1000}, {0, 1000}};
  setitimer(ITIMER_REAL, &it, nullptr);
  double start = now_s();
  long main_forks = 0;
  static const std::size_t kSizes[] = {24, 200, 5000, 70000, 300000, 3 << 20};
  void* keep[16] = {};
  for (unsigned i = 0; now_s() - start < seconds; ++i) {
    for (unsigned k = 0; k < 16; ++k) {
      std::free(keep[k]);
      keep[k] = std::malloc(kSizes[(i + k) % 6]);
      if (!keep[k]) die("malloc");
      static_cast<char*>(keep[k])[0] = 1;
    }
    if (i % 4 == 0) {
      pid_t pid = fork();
      if (pid < 0) die("fork");
      if (pid == 0) child_allocates_and_exits();
      reap(pid);
      ++main_forks;
    }
  }
  itimerval off{};
  setitimer(ITIMER_REAL, &off, nullptr);
  for (void* p : keep) std::free(p);
  std::printf("scenario=signal seconds=%.2f forks=%ld (main %ld, handler %ld)\n", now_s() - start,
              main_forks + g_handler_forks, main_forks, static_cast<long>(g_handler_forks));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: fork-repro stdio|signal SECONDS\n");
    return 2;
  }
  double seconds = std::atof(argv[2]);
  if (std::strcmp(argv[1], "stdio") == 0) return run_stdio(seconds);
  if (std::strcmp(argv[1], "signal") == 0) return run_signal(seconds);
  std::fprintf(stderr, "fork-repro: unknown scenario %s\n", argv[1]);
  return 2;
}
