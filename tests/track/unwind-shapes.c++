// tests/track/unwind-shapes.c++ -- frames of varied shapes for the track-unwind
// suite, built into several shared objects that it dlopens (tests/local.mk):
// libunwindshape-fp (-fno-omit-frame-pointer: CFA = rbp+16), -nofp
// (-fomit-frame-pointer: CFA = rsp+k, k changing through each function), and
// -big1 / -big2, the same code but for the size of shape_frame's buffer
// (SHAPE_BUF), so that after dlclose of one and dlopen of the other at the same
// address the same return address has another frame rule.  Each function calls
// back `cb`, where the suite captures the stack both ways.
#include <alloca.h>
#include <cstddef>
#include <cstring>

#ifndef SHAPE_BUF
#define SHAPE_BUF 64
#endif

using ShapeCb = void (*)(void*);
#define SHAPE_API extern "C" __attribute__((visibility("default"), noinline))

// Keeps a buffer (and the call after it) from being optimised away.
#define SHAPE_USE(p) asm volatile("" : : "r"(p) : "memory")

SHAPE_API int shape_recurse(int depth, ShapeCb cb, void* arg) {
  volatile int here = depth;
  if (depth <= 0)
    cb(arg);
  else
    (void)shape_recurse(depth - 1, cb, arg);
  return here + 1;  // not a tail call
}

SHAPE_API int shape_alloca(std::size_t n, ShapeCb cb, void* arg) {
  char* p = static_cast<char*>(alloca(n));
  std::memset(p, 1, n);
  SHAPE_USE(p);
  cb(arg);
  SHAPE_USE(p);
  return p[n - 1];
}

SHAPE_API int shape_vla(std::size_t n, ShapeCb cb, void* arg) {
  char v[n];
  std::memset(v, 2, n);
  SHAPE_USE(v);
  cb(arg);
  SHAPE_USE(v);
  return v[0];
}

// No memset (inlined differently for each size): big1 and big2 differ only in
// immediates and displacements of the same lengths, so the code has one
// layout and the return address after cb one offset.
SHAPE_API int shape_frame(ShapeCb cb, void* arg) {
  char buf[SHAPE_BUF];
  buf[SHAPE_BUF / 2] = 3;
  SHAPE_USE(buf);
  cb(arg);
  SHAPE_USE(buf);
  return buf[SHAPE_BUF - 1];
}

// Mixed: a chain of alloca (odd depths) and VLA (even) frames down to
// shape_frame, so one stack holds every shape.
SHAPE_API int shape_mixed(int depth, ShapeCb cb, void* arg) {
  if (depth <= 0) return shape_frame(cb, arg);
  std::size_t n = static_cast<std::size_t>(depth) * 40 + 8;
  if (depth % 2) {
    char* p = static_cast<char*>(alloca(n));
    std::memset(p, 4, n);
    SHAPE_USE(p);
    int r = shape_mixed(depth - 1, cb, arg);
    SHAPE_USE(p);
    return r + p[0];
  }
  char v[n];
  std::memset(v, 5, n);
  SHAPE_USE(v);
  int r = shape_mixed(depth - 1, cb, arg);
  SHAPE_USE(v);
  return r + v[0];
}
