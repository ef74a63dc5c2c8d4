// cxxrt.h++ -- libcalloc's references to the C++ runtime are weak.
//
// libcalloc.so is linked by the C driver and does not list libstdc++ (nor
// libgcc_s, libm) as NEEDED: a C program that preloads or links it maps no C++
// runtime (about 2 MiB of mappings, 0.5-1.5 MiB of it resident; docs/design.md,
// "Linkage").  What the library's C++ code takes from the runtime (exceptions,
// typeinfo, std::map's tree, the new-handler, the personality routine) is
// referenced weakly.  The build force-includes this header into every source
// of libcalloc-core (-include in Makefile.am), so the list below is the one
// place that says so.  In a C++ program the runtime is in the global scope and
// every reference binds to it as before; in a C program they stay null, and
// only code a C program cannot reach uses them: the C++ API (MemoryAllocator
// and the other classes), operator new's failure path and the tracker's
// demangler, which go through the bridge below (src/cxxrt.c++) that looks
// the runtime up when the weak reference is null.  A new strong reference
// fails the link (--no-undefined) naming the symbol: add it here.
//
// __popcountdi2 is not here: it comes from the static libgcc.a that the C
// driver links, and a weak reference would not pull it in.  Symbols libcalloc
// defines (operator new and delete) are not here either.
//
// Not in libcalloc.a (LCA_CXXRT_STRONG, Makefile.am): in a static link a weak
// reference does not pull its member out of libstdc++.a, so it stayed null
// unless the program happened to use the symbol too, and the C++ API called
// address 0 (MemoryAllocator::instance()'s __cxa_guard_acquire, from
// make_unique).  There every reference is strong, and pkg-config --static
// lists -lstdc++.
#ifndef LCA_CXXRT_HXX
#define LCA_CXXRT_HXX

#ifdef __cplusplus
#ifndef LCA_CXXRT_STRONG
// Unwinding and exceptions (libgcc_s, libsupc++).
asm(".weak _Unwind_Resume");
asm(".weak __gxx_personality_v0");
asm(".weak __cxa_allocate_exception");
asm(".weak __cxa_free_exception");
asm(".weak __cxa_throw");
asm(".weak __cxa_rethrow");
asm(".weak __cxa_begin_catch");
asm(".weak __cxa_end_catch");
asm(".weak __cxa_call_terminate");
asm(".weak _ZSt9terminatev");
asm(".weak __cxa_guard_acquire");
asm(".weak __cxa_guard_release");
asm(".weak __cxa_guard_abort");
asm(".weak __cxa_demangle");
asm(".weak __dynamic_cast");
// Type information.
asm(".weak _ZTVN10__cxxabiv117__class_type_infoE");
asm(".weak _ZTVN10__cxxabiv120__si_class_type_infoE");
asm(".weak _ZTVN10__cxxabiv121__vmi_class_type_infoE");
asm(".weak _ZTISt9bad_alloc");
asm(".weak _ZTVSt9bad_alloc");
// What -O0 (--enable-debug) leaves out of line instead of inlining:
// std::exception's constructor (its vtable), and in the tracker's report
// (custom_alloc::AllocationTracker) std::string's allocator, its range checks
// and the ostream inserters.
asm(".weak _ZTVSt9exception");
asm(".weak _ZNSaIcEC1Ev");
asm(".weak _ZNSaIcEC2ERKS_");
asm(".weak _ZNSaIcED1Ev");
asm(".weak _ZNSaIcED2Ev");
asm(".weak _ZNSolsEl");
asm(".weak _ZNSolsEm");
asm(".weak _ZSt19__throw_logic_errorPKc");
asm(".weak _ZSt24__throw_out_of_range_fmtPKcz");
asm(".weak _ZStlsISt11char_traitsIcEERSt13basic_ostreamIcT_ES5_PKc");
asm(".weak _ZStlsISt11char_traitsIcEERSt13basic_ostreamIcT_ES5_c");
asm(".weak _ZStlsIcSt11char_traitsIcESaIcEERSt13basic_ostreamIT_T0_ES7_RKNSt7__cxx1112basic_stringIS4_S5_T1_EE");
asm(".weak _ZNSt9bad_allocD1Ev");
asm(".weak _ZSt15get_new_handlerv");
// The library's out-of-line helpers (std::map, std::vector, std::chrono,
// std::mutex, the tracker's ostream output).
asm(".weak _ZSt17__throw_bad_allocv");
asm(".weak _ZSt20__throw_length_errorPKc");
asm(".weak _ZSt20__throw_system_errori");
asm(".weak _ZSt28__throw_bad_array_new_lengthv");
asm(".weak _ZSt25__throw_bad_function_callv");
asm(".weak _ZSt18_Rb_tree_decrementPSt18_Rb_tree_node_base");
asm(".weak _ZSt18_Rb_tree_incrementPKSt18_Rb_tree_node_base");
asm(".weak _ZSt18_Rb_tree_incrementPSt18_Rb_tree_node_base");
asm(".weak _ZSt29_Rb_tree_insert_and_rebalancebPSt18_Rb_tree_node_baseS0_RS_");
asm(".weak _ZNKSt8__detail20_Prime_rehash_policy14_M_need_rehashEmmm");
asm(".weak _ZNSt6chrono3_V212steady_clock3nowEv");
asm(".weak _ZNSo3putEc");
asm(".weak _ZNSo9_M_insertIlEERSoT_");
asm(".weak _ZNSo9_M_insertImEERSoT_");
asm(".weak _ZSt16__ostream_insertIcSt11char_traitsIcEERSt13basic_ostreamIT_T0_ES6_PKS3_l");
#endif  // LCA_CXXRT_STRONG

namespace lca {

// The program's new-handler (std::get_new_handler()), or null when none is set
// or no C++ runtime is loaded.
using CxxNewHandler = void (*)();
CxxNewHandler cxx_get_new_handler() noexcept;
// Throws std::bad_alloc through the program's C++ runtime: the one in the
// global scope, else one loaded with dlopen(RTLD_LOCAL) (a C program's C++
// plugin).  With no runtime at all (no C++ code can be calling), reports
// "Out of memory in operator new" and aborts.
[[noreturn]] void cxx_throw_bad_alloc();
// abi::__cxa_demangle when the runtime is there, else null (the caller keeps
// the raw name).  The result is malloc'ed.
char* cxx_demangle(const char* name) noexcept;

}  // namespace lca
#endif  // __cplusplus

#endif  // LCA_CXXRT_HXX
