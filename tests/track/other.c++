// tests/track/other.c++ -- a shared object that tests/track/track-demo loads
// (mode "dlclose-reload") where libtrackplugin.so lay before its dlclose:
// other_function starts near plugin_leak's address and runs 1 KiB past it, so
// the old library's frames fall inside it, and a report that named them by
// what is loaded at the report would name them other_function.
extern "C" __attribute__((visibility("default"), noinline)) int other_function(int x) {
  asm volatile(".skip 1024, 0x90");
  return x + 1;
}
