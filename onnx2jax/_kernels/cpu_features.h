// What the kernels may use on this CPU, decided once per process.
#pragma once

#include <cstdlib>

namespace onnx2jax {

// AVX2 + FMA, unless ONNX2JAX_KERNELS_PORTABLE=1 asks for the portable path on any CPU (how
// the tests run it on machines that have AVX2).
inline bool HasAvx2() {
#if defined(__x86_64__)
  static const bool has = [] {
    const char* portable = std::getenv("ONNX2JAX_KERNELS_PORTABLE");
    if (portable != nullptr && portable[0] == '1') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace onnx2jax
