/* tests/integration/small-rss.c -- a small C program for small-rss.sh: what a
 * small program runs of libcalloc (under LD_PRELOAD), then the resident size
 * of libcalloc.so's mappings, read from /proc/self/smaps.
 *
 *   small-rss none   allocates nothing (a program like true(1))
 *   small-rss all    small blocks of several classes, a medium and a large
 *                    one, calloc, realloc, the aligned forms,
 *                    malloc_usable_size, a thread that allocates and exits,
 *                    fork, then frees everything
 *
 * Prints "text_kb=N lib_kb=M rodata_kb=R text_start=0xADDR text_offset=0xOFF
 * bss_kb=B lbss_kb=L": the Rss of libcalloc's executable mapping, of all of its
 * mappings and of its read-only data mapping (the first read-only one after the
 * text: .rodata, .eh_frame_hdr, .eh_frame), where the executable one starts
 * (address and file offset), and the resident pages (/proc/self/pagemap) of
 * .bss past the file-backed part of the writable segment and of .lbss (the
 * section headers of the mapped file say where they are; -1 when the file has
 * no such section).  Exit 0, or 1 when libcalloc is not mapped or a call
 * failed. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <elf.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static void* thread_main(void* arg) {
  (void)arg;
  void* volatile p[64];
  for (int i = 0; i < 64; ++i) p[i] = malloc(16 + 8 * (size_t)i);
  for (int i = 0; i < 64; ++i) free(p[i]);
  return NULL;
}

static int exercise(void) {
  void* volatile small[256];
  for (int i = 0; i < 256; ++i) {
    small[i] = malloc(8 + 4 * (size_t)i);
    if (!small[i]) return 1;
    memset(small[i], i, 8);
  }
  char* medium = malloc(20000);
  char* large = malloc(1 << 20);
  char* zeroed = calloc(100, 100);
  char* grown = malloc(10);
  if (!medium || !large || !zeroed || !grown) return 1;
  large[0] = medium[0] = 1;
  for (size_t n = 100; n <= 200000; n *= 3) {
    grown = realloc(grown, n);
    if (!grown) return 1;
  }
  void* aligned = NULL;
  if (posix_memalign(&aligned, 4096, 100) != 0) return 1;
  void* aligned2 = aligned_alloc(64, 640);
  if (!aligned2 || malloc_usable_size(aligned2) < 640) return 1;
  pthread_t t;
  if (pthread_create(&t, NULL, thread_main, NULL) != 0 || pthread_join(t, NULL) != 0) return 1;
  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    free(malloc(100));
    _exit(0);
  }
  int status;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  for (int i = 0; i < 256; ++i) free(small[i]);
  free(medium);
  free(large);
  free(zeroed);
  free(grown);
  free(aligned);
  free(aligned2);
  return 0;
}

/* Address and size of the section called name in the ELF file path; 0 if none. */
static int elf_section(const char* path, const char* name, unsigned long* addr, unsigned long* size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  Elf64_Ehdr eh;
  int found = 0;
  if (pread(fd, &eh, sizeof eh, 0) == (ssize_t)sizeof eh && eh.e_shentsize == sizeof(Elf64_Shdr) && eh.e_shnum < 256) {
    Elf64_Shdr sh[256], strsh;
    size_t n = eh.e_shnum;
    if (pread(fd, sh, n * sizeof sh[0], (off_t)eh.e_shoff) == (ssize_t)(n * sizeof sh[0]) && eh.e_shstrndx < n) {
      strsh = sh[eh.e_shstrndx];
      for (size_t i = 0; i < n && !found; ++i) {
        char buf[32] = "";
        if (pread(fd, buf, sizeof buf - 1, (off_t)(strsh.sh_offset + sh[i].sh_name)) > 0 && strcmp(buf, name) == 0) {
          *addr = sh[i].sh_addr;
          *size = sh[i].sh_size;
          found = 1;
        }
      }
    }
  }
  close(fd);
  return found;
}

/* KiB of the pages of [start, end) present in this process (pagemap bit 63). */
static long resident_kb(unsigned long start, unsigned long end) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return -1;
  long kb = 0;
  for (unsigned long a = start & ~4095UL; a < end; a += 4096) {
    uint64_t e = 0;
    if (pread(fd, &e, sizeof e, (off_t)(a / 4096 * 8)) != (ssize_t)sizeof e) {
      kb = -1;
      break;
    }
    if (e >> 63) kb += 4;
  }
  close(fd);
  return kb;
}

int main(int argc, char** argv) {
  if (argc != 2 || (strcmp(argv[1], "none") != 0 && strcmp(argv[1], "all") != 0)) {
    fprintf(stderr, "usage: small-rss none|all\n");
    return 1;
  }
  if (strcmp(argv[1], "all") == 0 && exercise() != 0) {
    fprintf(stderr, "small-rss: an allocation call failed\n");
    return 1;
  }
  FILE* f = fopen("/proc/self/smaps", "r");
  if (!f) return 1;
  char line[512];
  int in_lib = 0, in_text = 0, in_rodata = 0, after_text = 0;
  long text_kb = -1, lib_kb = 0, rodata_kb = -1;
  unsigned long text_start = 0, text_offset = 0, base = 0;
  char path[256] = "";
  while (fgets(line, sizeof line, f)) {
    unsigned long start, end, offset;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s %lx", &start, &end, perms, &offset) == 4 && strchr(line, '-') < strchr(line, ' ')) {
      in_lib = strstr(line, "/libcalloc.so") != NULL;
      if (in_lib && offset == 0 && !path[0]) {
        base = start;
        const char* p = strchr(line, '/');
        snprintf(path, sizeof path, "%s", p);
        path[strcspn(path, "\n")] = 0;
      }
      in_text = in_lib && perms[2] == 'x';
      in_rodata = in_lib && after_text && perms[0] == 'r' && perms[1] == '-' && perms[2] == '-';
      if (in_rodata) {
        rodata_kb = 0;
        after_text = 0;
      }
      if (in_text) after_text = 1;
      if (in_text) {
        text_start = start;
        text_offset = offset;
        text_kb = 0;
      }
      continue;
    }
    long kb;
    if (in_lib && sscanf(line, "Rss: %ld kB", &kb) == 1) {
      lib_kb += kb;
      if (in_text) text_kb += kb;
      if (in_rodata) rodata_kb += kb;
    }
  }
  fclose(f);
  if (text_kb < 0) {
    fprintf(stderr, "small-rss: libcalloc.so is not mapped\n");
    return 1;
  }
  /* .bss from the first page that is not in the file (the page .data ends in is
     the file's), and .lbss from the first page past .bss. */
  unsigned long bss = 0, bss_size = 0, lbss = 0, lbss_size = 0;
  long bss_kb = -1, lbss_kb = -1;
  unsigned long bss_end = 0;
  if (elf_section(path, ".bss", &bss, &bss_size)) {
    bss_end = (bss + bss_size + 4095) & ~4095UL;
    bss_kb = resident_kb(base + ((bss + 4095) & ~4095UL), base + bss_end);
  }
  if (elf_section(path, ".lbss", &lbss, &lbss_size)) {
    unsigned long from = lbss > bss_end ? lbss : bss_end;
    lbss_kb = resident_kb(base + from, base + lbss + lbss_size);
  }
  printf("text_kb=%ld lib_kb=%ld rodata_kb=%ld text_start=0x%lx text_offset=0x%lx bss_kb=%ld lbss_kb=%ld\n", text_kb,
         lib_kb, rodata_kb, text_start, text_offset, bss_kb, lbss_kb);
  return 0;
}
