// Channels-last window operations on XLA's intra-op threads, channels in the vector lanes and
// taps in the padding skipped rather than read from a padded copy (XLA's lowering pads the
// whole activation first, which cost MobileNetV2 more than the convolutions themselves:
// benchmarks/NOTES.md entry 19).
//
// onnx2jax_depthwise_conv: a 2-D depthwise convolution (one filter per channel),
// y[N, OH, OW, C] = clamp(dwconv(x[N, H, W, C], W) + b, lo, hi), W in the convolution kernel's
// panel layout [P, KH * KW, 16] (P = ceil(C / 16): 16 channels per panel, per tap).
//
// onnx2jax_max_pool: y[N, OH, OW, C] = the max over each window's taps inside x (MaxPool; a
// window with none gives -inf, as padding with -inf would). NaN propagates.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "conv_attrs.h"
#include "cpu_features.h"
#include "depthwise_rows.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

using namespace onnx2jax::depthwise;  // Geometry and the row functions (depthwise_rows.h)

struct Work {
  Geometry g;
  const float* x;
  const float* w;
  const float* b;
  float* y;
  int64_t total;  // N * OH output rows

  void Rows(int64_t q0, int64_t q1) const {
    std::vector<const float*> rows(g.KH);
    const float* ahead[2];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n_ahead = InputRows(g, x, q / g.OH, q % g.OH, rows.data(), ahead);
      onnx2jax::depthwise::Row(g, rows.data(), ahead, n_ahead, w, b, y + q * g.OW * g.C);
    }
  }
};

// -- max pool ---------------------------------------------------------------------------------

// out[0, C) = max over taps of taps[t][0, C): NaN in any tap gives NaN (max alone would drop a
// NaN in its first operand).
void MaxGeneric(const float* const* taps, int64_t n_taps, int64_t C, float* out) {
  for (int64_t c = 0; c < C; ++c) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n_taps; ++t) {
      const float v = taps[t][c];
      if (v > m || v != v) m = v;
      if (m != m) break;
    }
    out[c] = m;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void MaxAvx2(const float* const* taps, int64_t n_taps, int64_t C,
                                              float* out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t c = 0; c < C; c += 8) {
    // Lanes past the last channel are masked off: loads there neither fault nor count.
    const __m256i k = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(C - c)), lane);
    __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < n_taps; ++t) {
      const __m256 v = _mm256_maskload_ps(taps[t] + c, k);
      // max returns its second operand when either is NaN: m second keeps a NaN already in
      // m, the blend takes a new one from v.
      m = _mm256_blendv_ps(_mm256_max_ps(v, m), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    _mm256_maskstore_ps(out + c, k, m);
  }
}

__attribute__((target("avx512f"))) void MaxAvx512(const float* const* taps, int64_t n_taps,
                                                  int64_t C, float* out) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = static_cast<__mmask16>((1u << std::min<int64_t>(16, C - c)) - 1u);
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < n_taps; ++t) {
      const __m512 v = _mm512_maskz_loadu_ps(k, taps[t] + c);
      m = _mm512_mask_mov_ps(_mm512_max_ps(v, m), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
    }
    _mm512_mask_storeu_ps(out + c, k, m);
  }
}
#endif

struct PoolWork {
  Geometry g;
  const float* x;
  float* y;
  int64_t total;  // N * OH output rows

  // Output row q: each pixel's taps inside the input gathered, then one pass over channels.
  void Rows(int64_t q0, int64_t q1) const {
    std::vector<const float*> taps(g.KH * g.KW);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / g.OH, oh = q % g.OH;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        int64_t n_taps = 0;
        for (int64_t i = 0; i < g.KH; ++i) {
          const int64_t ih = oh * g.SH - g.PT + i * g.DH;
          if (ih < 0 || ih >= g.H) continue;
          for (int64_t j = 0; j < g.KW; ++j) {
            const int64_t iw = ow * g.SW - g.PL + j * g.DW;
            if (iw >= 0 && iw < g.W) taps[n_taps++] = x + ((n * g.H + ih) * g.W + iw) * g.C;
          }
        }
        float* out = y + (q * g.OW + ow) * g.C;
#if defined(__x86_64__)
        if (onnx2jax::HasAvx512()) {
          MaxAvx512(taps.data(), n_taps, g.C, out);
          continue;
        }
        if (onnx2jax::HasAvx2()) {
          MaxAvx2(taps.data(), n_taps, g.C, out);
          continue;
        }
#endif
        MaxGeneric(taps.data(), n_taps, g.C, out);
      }
    }
  }
};

constexpr int64_t kParallelWork = 1 << 18;  // multiply-adds below which one thread does it all

ffi::Error DepthwiseConv(ffi::ThreadPool pool, ffi::AnyBuffer x_buf, ffi::AnyBuffer w_buf,
                         ffi::AnyBuffer b_buf, ffi::Result<ffi::AnyBuffer> y_buf, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt,
                         int64_t pl, float lo, float hi) {
  const auto xd = x_buf.dimensions();
  const auto wd = w_buf.dimensions();
  const auto bd = b_buf.dimensions();
  const auto yd = y_buf->dimensions();
  if (x_buf.element_type() != ffi::F32 || w_buf.element_type() != ffi::F32 ||
      b_buf.element_type() != ffi::F32 || y_buf->element_type() != ffi::F32)
    return ffi::Error::InvalidArgument("onnx2jax_depthwise_conv: float32 only");
  if (xd.size() != 4 || wd.size() != 3 || bd.size() != 1 || yd.size() != 4 || wd[2] != kPanel)
    return ffi::Error::InvalidArgument(
        "onnx2jax_depthwise_conv: expected x [N, H, W, C], w [P, KH * KW, 16], b [C], "
        "y [N, OH, OW, C]");
  Geometry g{};
  g.N = xd[0], g.H = xd[1], g.W = xd[2], g.C = xd[3], g.OH = yd[1], g.OW = yd[2];
  g.KH = kh, g.KW = kw, g.SH = sh, g.SW = sw, g.DH = dh, g.DW = dw, g.PT = pt, g.PL = pl;
  g.P = wd[0], g.lo = lo, g.hi = hi;
  if (yd[0] != g.N || yd[3] != g.C || wd[1] != kh * kw || g.P != (g.C + kPanel - 1) / kPanel ||
      bd[0] != g.C || kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument("onnx2jax_depthwise_conv: x, w, b and y do not agree");
  Work work_;
  Work* work = &work_;
  work->g = g;
  work->total = g.N * g.OH;
  if (work->total == 0 || g.OW == 0 || g.C == 0) return ffi::Error::Success();
  work->x = x_buf.typed_data<float>();
  work->w = w_buf.typed_data<float>();
  work->b = b_buf.typed_data<float>();
  work->y = y_buf->typed_data<float>();
  const int64_t macs = work->total * g.OW * g.C * kh * kw;
  const int64_t threads = macs < kParallelWork ? 1 : pool.num_threads();
  onnx2jax::ParallelFor(pool, threads, work->total, [work](int64_t q0, int64_t q1) {
    work->Rows(q0, q1);
  });
  return ffi::Error::Success();
}

}  // namespace

ffi::Error MaxPool(ffi::ThreadPool pool, ffi::AnyBuffer x_buf, ffi::Result<ffi::AnyBuffer> y_buf,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                   int64_t pt, int64_t pl, float, float) {
  const auto xd = x_buf.dimensions();
  const auto yd = y_buf->dimensions();
  if (x_buf.element_type() != ffi::F32 || y_buf->element_type() != ffi::F32)
    return ffi::Error::InvalidArgument("onnx2jax_max_pool: float32 only");
  if (xd.size() != 4 || yd.size() != 4 || yd[0] != xd[0] || yd[3] != xd[3] || kh < 1 ||
      kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument(
        "onnx2jax_max_pool: expected x [N, H, W, C], y [N, OH, OW, C] and a positive window");
  Geometry g{};
  g.N = xd[0], g.H = xd[1], g.W = xd[2], g.C = xd[3], g.OH = yd[1], g.OW = yd[2];
  g.KH = kh, g.KW = kw, g.SH = sh, g.SW = sw, g.DH = dh, g.DW = dw, g.PT = pt, g.PL = pl;
  PoolWork work_{g, x_buf.typed_data<float>(), y_buf->typed_data<float>(), g.N * g.OH};
  const PoolWork* work = &work_;
  if (work->total == 0 || g.OW == 0 || g.C == 0) return ffi::Error::Success();
  const int64_t reads = work->total * g.OW * g.C * kh * kw;
  const int64_t threads = reads < kParallelWork ? 1 : pool.num_threads();
  onnx2jax::ParallelFor(pool, threads, work->total,
                        [work](int64_t q0, int64_t q1) { work->Rows(q0, q1); });
  return ffi::Error::Success();
}

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_depthwise_conv(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(onnx2jax_depthwise_conv, DepthwiseConv,
                              onnx2jax::WithConvAttrs(ffi::Ffi::Bind()
                                      .Ctx<ffi::ThreadPool>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Ret<ffi::AnyBuffer>()));

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_max_pool(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(onnx2jax_max_pool, MaxPool,
                              onnx2jax::WithConvAttrs(ffi::Ffi::Bind()
                                      .Ctx<ffi::ThreadPool>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Ret<ffi::AnyBuffer>()));
