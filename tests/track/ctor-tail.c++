// tests/track/ctor-tail.c++ -- a shared object whose constructor tail-calls
// malloc (jmp, no frame of its own: written in assembly so that every
// optimisation level makes it so) and leaks its 6666 bytes: the allocation's
// first frame is then the dynamic loader's call_init, where the loader calls
// constructors, and the rest of the stack is the loader's and libc's up to
// dlopen, the shape of the loader's own records (tests/integration/track.sh,
// "dlopen-keep").  A leak of the program's all the same.
#if defined(__x86_64__)
// (pushsection/popsection: the compiler's own output after this, a
// sanitizer's module constructor, stays in the section it expects.)
asm(R"(
  .pushsection .text
  .globl ctortail_constructor
  .type ctortail_constructor, @function
ctortail_constructor:
  .cfi_startproc
  movl $6666, %edi
  jmp malloc@PLT
  .cfi_endproc
  .size ctortail_constructor, .-ctortail_constructor
  .popsection
  .pushsection .init_array, "aw"
  .p2align 3
  .quad ctortail_constructor
  .popsection
)");
#else
#include <cstdlib>
extern "C" __attribute__((constructor)) void ctortail_constructor() { static_cast<void>(std::malloc(6666)); }
#endif
