// What the kernels may use on this CPU, decided once per process.
#pragma once

#include <cstdlib>
#include <cstring>

namespace onnx2jax {

enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The best of AVX-512 (F), AVX2 + FMA and plain C++ that this CPU runs, capped by
// ONNX2JAX_KERNELS_ISA=portable|avx2 (how the tests run the narrower paths on a wider CPU;
// ONNX2JAX_KERNELS_PORTABLE=1 is the older spelling of =portable).
inline Isa KernelIsa() {
#if defined(__x86_64__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::kPortable;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
    const char* cap = std::getenv("ONNX2JAX_KERNELS_ISA");
    const char* portable = std::getenv("ONNX2JAX_KERNELS_PORTABLE");
    if ((cap != nullptr && std::strcmp(cap, "portable") == 0) ||
        (portable != nullptr && portable[0] == '1'))
      return Isa::kPortable;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && best > Isa::kAvx2) return Isa::kAvx2;
    return best;
  }();
  return isa;
#else
  return Isa::kPortable;
#endif
}

inline bool HasAvx2() { return KernelIsa() >= Isa::kAvx2; }
inline bool HasAvx512() { return KernelIsa() >= Isa::kAvx512; }

}  // namespace onnx2jax
