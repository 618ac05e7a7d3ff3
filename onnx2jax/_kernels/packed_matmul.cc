// onnx2jax_packed_matmul: y[M, N] = x[M, K] @ W for few rows M, with W packed once.
//
// W arrives as panels [P, K, 8] (P = ceil(N / 8), the last one zero-padded): panel p holds
// columns 8p..8p+7 for every k, contiguous. With few rows a product is bound by reading W.
// XLA's CPU dots (YNNPACK, Eigen) re-pack W on every call, which reads and writes it again;
// here each panel is read once, front to back, by up to 8 rows at a time (8 accumulators,
// one AVX2 vector of columns each; on AVX-512 two panels side by side in one vector), and the
// panels are split across XLA's intra-op threads.
// benchmarks/NOTES.md entry 16 has the measurements.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu_features.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 8;  // output columns per panel: one AVX2 vector
constexpr int kMaxRows = 8;    // rows per pass over a panel (later passes find it in cache)
constexpr int64_t kPrefetchFloats = 512;  // how far ahead the weight is prefetched (2 KB)

template <int R>
void PanelRowsGeneric(const float* x, int64_t K, const float* w, float* out, int64_t ldo,
                      int64_t ncols) {
  float acc[R][kPanel] = {};
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = w + k * kPanel;
    for (int r = 0; r < R; ++r) {
      const float a = x[r * K + k];
      for (int j = 0; j < kPanel; ++j) acc[r][j] += a * wk[j];
    }
  }
  for (int r = 0; r < R; ++r) std::memcpy(out + r * ldo, acc[r], ncols * sizeof(float));
}

#if defined(__x86_64__)
// The pragmas matter: without full unrolling GCC keeps the accumulators on the stack and
// stores them every step (3x slower).
template <int R, bool Stream>
__attribute__((target("avx2,fma"))) void PanelRowsAvx2(const float* x, int64_t K, const float* w,
                                                        float* out, int64_t ldo, int64_t ncols) {
  // Fewer rows leave the FMA chains too short to hide latency: split k over S sets.
  constexpr int S = R >= 4 ? 1 : (R == 1 ? 4 : 2);
  __m256 acc[S * R];
#pragma GCC unroll 32
  for (int i = 0; i < S * R; ++i) acc[i] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + S <= K; k += S) {
    // A weight read once per call streams from memory: ask for it well ahead, as the hardware
    // prefetcher alone falls behind with 4-8 rows (GPT-2's decode step at batch 8: -9%). A
    // weight in cache (an RNN's, read every step) runs better without (NOTES entry 23).
    constexpr int kLine = 16;  // floats per cache line
    if (Stream && R >= 4 && k % 2 == 0) {
#pragma GCC unroll 4
      for (int f = 0; f < S * kPanel; f += kLine)
        _mm_prefetch(reinterpret_cast<const char*>(w + k * kPanel + f + kPrefetchFloats),
                     _MM_HINT_T0);
    }
#pragma GCC unroll 32
    for (int s = 0; s < S; ++s) {
      const __m256 wk = _mm256_loadu_ps(w + (k + s) * kPanel);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r)
        acc[s * R + r] =
            _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * K + k + s), wk, acc[s * R + r]);
    }
  }
  for (; k < K; ++k) {
    const __m256 wk = _mm256_loadu_ps(w + k * kPanel);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * K + k), wk, acc[r]);
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    __m256 sum = acc[r];
#pragma GCC unroll 32
    for (int s = 1; s < S; ++s) sum = _mm256_add_ps(sum, acc[s * R + r]);
    if (ncols == kPanel) {
      _mm256_storeu_ps(out + r * ldo, sum);
    } else {
      alignas(32) float tmp[kPanel];
      _mm256_store_ps(tmp, sum);
      std::memcpy(out + r * ldo, tmp, ncols * sizeof(float));
    }
  }
}

// Row k of two panels side by side: one 16-column vector.
__attribute__((target("avx512f"))) inline __m512 PanelPair512(const float* w0, const float* w1,
                                                             int64_t k) {
  const __m512d lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(w0 + k * kPanel)));
  return _mm512_castpd_ps(
      _mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_loadu_ps(w1 + k * kPanel)), 1));
}

// AVX-512: two panels at once as one 16-column vector (the low half from panel p, the high
// half from p + 1, which is ``w1``), so each broadcast row value feeds an FMA twice as wide.
// ``ncols`` (up to 16) columns are stored, masked. The same chains and prefetching as above.
template <int R, bool Stream>
__attribute__((target("avx512f"))) void PanelPairRowsAvx512(const float* x, int64_t K,
                                                            const float* w0, const float* w1,
                                                            float* out, int64_t ldo,
                                                            int64_t ncols) {
  constexpr int S = R >= 4 ? 1 : (R == 1 ? 4 : 2);
  __m512 acc[S * R];
#pragma GCC unroll 32
  for (int i = 0; i < S * R; ++i) acc[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + S <= K; k += S) {
    constexpr int kLine = 16;  // floats per cache line
    if (Stream && R >= 4 && k % 2 == 0) {
#pragma GCC unroll 4
      for (int f = 0; f < S * kPanel; f += kLine) {
        _mm_prefetch(reinterpret_cast<const char*>(w0 + k * kPanel + f + kPrefetchFloats),
                     _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w1 + k * kPanel + f + kPrefetchFloats),
                     _MM_HINT_T0);
      }
    }
#pragma GCC unroll 32
    for (int s = 0; s < S; ++s) {
      const __m512 wk = PanelPair512(w0, w1, k + s);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r)
        acc[s * R + r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k + s]), wk, acc[s * R + r]);
    }
  }
  for (; k < K; ++k) {
    const __m512 wk = PanelPair512(w0, w1, k);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k]), wk, acc[r]);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << ncols) - 1u);
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    __m512 sum = acc[r];
#pragma GCC unroll 32
    for (int s = 1; s < S; ++s) sum = _mm512_add_ps(sum, acc[s * R + r]);
    _mm512_mask_storeu_ps(out + r * ldo, mask, sum);
  }
}

using PairRowsFn = void (*)(const float*, int64_t, const float*, const float*, float*, int64_t,
                            int64_t);
template <bool Stream>
constexpr PairRowsFn kPairRows[kMaxRows + 1] = {
    nullptr,
    PanelPairRowsAvx512<1, Stream>,
    PanelPairRowsAvx512<2, Stream>,
    PanelPairRowsAvx512<3, Stream>,
    PanelPairRowsAvx512<4, Stream>,
    PanelPairRowsAvx512<5, Stream>,
    PanelPairRowsAvx512<6, Stream>,
    PanelPairRowsAvx512<7, Stream>,
    PanelPairRowsAvx512<8, Stream>};

// Panels p and p + 1 (or p alone, the last of an odd count), all M rows.
void PanelPair(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N,
               int64_t P, int64_t p, bool stream) {
  const PairRowsFn* rows_fn = stream ? kPairRows<true> : kPairRows<false>;
  const int64_t n0 = p * kPanel;
  const int64_t ncols = N - n0 < 2 * kPanel ? N - n0 : 2 * kPanel;
  const float* w0 = w + p * K * kPanel;
  const float* w1 = p + 1 < P ? w0 + K * kPanel : w0;  // alone: the high half is not stored
  for (int64_t m = 0; m < M; m += kMaxRows) {
    const int64_t rows = M - m < kMaxRows ? M - m : kMaxRows;
    rows_fn[rows](x + m * K, K, w0, w1, y + m * N + n0, N, ncols);
  }
}
#endif

template <int R, bool Stream>
void PanelRows(const float* x, int64_t K, const float* w, float* out, int64_t ldo, int64_t ncols) {
#if defined(__x86_64__)
  if (onnx2jax::HasAvx2()) return PanelRowsAvx2<R, Stream>(x, K, w, out, ldo, ncols);
#endif
  PanelRowsGeneric<R>(x, K, w, out, ldo, ncols);
}

using RowsFn = void (*)(const float*, int64_t, const float*, float*, int64_t, int64_t);
template <bool Stream>
constexpr RowsFn kRows[kMaxRows + 1] = {
    nullptr,                 PanelRows<1, Stream>, PanelRows<2, Stream>,
    PanelRows<3, Stream>,    PanelRows<4, Stream>, PanelRows<5, Stream>,
    PanelRows<6, Stream>,    PanelRows<7, Stream>, PanelRows<8, Stream>};

// One panel, all M rows.
void Panel(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t p,
           bool stream) {
  const RowsFn* rows_fn = stream ? kRows<true> : kRows<false>;
  const int64_t n0 = p * kPanel;
  const int64_t ncols = N - n0 < kPanel ? N - n0 : kPanel;
  const float* wp = w + p * K * kPanel;
  for (int64_t m = 0; m < M; m += kMaxRows) {
    const int64_t rows = M - m < kMaxRows ? M - m : kMaxRows;
    rows_fn[rows](x + m * K, K, wp, y + m * N + n0, N, ncols);
  }
}

// Below this many multiply-adds waking a second thread costs more than it saves.
constexpr int64_t kParallelWork = 1 << 20;

// x [M, K], w [P, K, 8] -> y [M, N]; or with a leading batch on all three (one product per
// batch entry: an RNN's directions). ``stream``: the weight is read once per call (prefetch it).
ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::AnyBuffer x_buf, ffi::AnyBuffer w_buf,
                        ffi::Result<ffi::AnyBuffer> y_buf, bool stream) {
  const auto xd = x_buf.dimensions();
  const auto wd = w_buf.dimensions();
  const auto yd = y_buf->dimensions();
  const size_t r = xd.size();
  if (x_buf.element_type() != ffi::F32 || w_buf.element_type() != ffi::F32 ||
      y_buf->element_type() != ffi::F32)
    return ffi::Error::InvalidArgument("onnx2jax_packed_matmul: float32 only");
  if ((r != 2 && r != 3) || wd.size() != r + 1 || yd.size() != r || wd[r] != kPanel)
    return ffi::Error::InvalidArgument(
        "onnx2jax_packed_matmul: expected x [(B,) M, K], w [(B,) P, K, 8], y [(B,) M, N]");
  const int64_t B = r == 3 ? xd[0] : 1;
  const int64_t M = xd[r - 2], K = xd[r - 1], P = wd[r - 2], N = yd[r - 1];
  if ((r == 3 && (wd[0] != B || yd[0] != B)) || wd[r - 1] != K || yd[r - 2] != M ||
      P != (N + kPanel - 1) / kPanel)
    return ffi::Error::InvalidArgument("onnx2jax_packed_matmul: x, w and y do not agree");
  float* y = y_buf->typed_data<float>();
  if (B * M * N == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(y, 0, B * M * N * sizeof(float));
    return ffi::Error::Success();
  }
  const float* x = x_buf.typed_data<float>();
  const float* w = w_buf.typed_data<float>();
  const int64_t threads = B * M * K * N < kParallelWork ? 1 : pool.num_threads();
  // Units of panels of all batch entries are the work items, q = b * U + u: one panel, or on
  // AVX-512 two (a 16-column vector).
  const int64_t unit = onnx2jax::HasAvx512() ? 2 : 1;
  const int64_t U = (P + unit - 1) / unit;
  onnx2jax::ParallelFor(pool, threads, B * U, [=](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / U, p = q % U * unit;
      const float* xb = x + b * M * K;
      const float* wb = w + b * P * K * kPanel;
      float* yb = y + b * M * N;
#if defined(__x86_64__)
      if (unit == 2) {
        PanelPair(xb, M, K, wb, yb, N, P, p, stream);
        continue;
      }
#endif
      Panel(xb, M, K, wb, yb, N, p, stream);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// The one exported symbol (the library is built with hidden visibility).
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_packed_matmul(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(onnx2jax_packed_matmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("stream"));
