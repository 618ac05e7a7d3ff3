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
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 16;  // channels per panel (the convolution kernel's panel width)

struct Geometry {
  int64_t N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, P;
  float lo, hi;
};

// One output pixel's channels [16p, 16p + n) for every panel p: taps in the padding skipped.
void PixelGeneric(const Geometry& g, const float* x, const float* w, const float* b, float* y,
                  int64_t n, int64_t oh, int64_t ow) {
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t c0 = p * kPanel, nc = std::min(kPanel, g.C - c0);
    float acc[kPanel];
    for (int64_t j = 0; j < nc; ++j) acc[j] = b[c0 + j];
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = oh * g.SH - g.PT + i * g.DH;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = ow * g.SW - g.PL + j * g.DW;
        if (iw < 0 || iw >= g.W) continue;
        const float* xv = x + ((n * g.H + ih) * g.W + iw) * g.C + c0;
        const float* wv = w + (p * g.KH * g.KW + i * g.KW + j) * kPanel;
        for (int64_t k = 0; k < nc; ++k) acc[k] += xv[k] * wv[k];
      }
    }
    for (int64_t k = 0; k < nc; ++k) {
      float v = acc[k];
      if (v < g.lo) v = g.lo;  // comparisons with NaN are false: NaN stays
      if (v > g.hi) v = g.hi;
      y[c0 + k] = v;
    }
  }
}

#if defined(__x86_64__)
// One output pixel, with bounds checks: panels [p0, P), or only panel ``only`` (>= 0); with
// ``tail_only`` only the partial last panel (the full ones go through FourPixelsAvx2).
__attribute__((target("avx2,fma"))) void PixelAvx2(const Geometry& g, const float* x,
                                                    const float* w, const float* b, float* y,
                                                    int64_t n, int64_t oh, int64_t ow,
                                                    bool tail_only = false, int64_t only = -1) {
  const __m256 lo = _mm256_set1_ps(g.lo), hi = _mm256_set1_ps(g.hi);
  const int64_t p0 = only >= 0 ? only : tail_only ? g.C / kPanel : 0;
  const int64_t p1 = only >= 0 ? only + 1 : g.P;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c0 = p * kPanel, nc = std::min(kPanel, g.C - c0);
    // Lanes past the last channel are masked off: loads there neither fault nor count.
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nc)), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nc) - 8), lane);
    __m256 acc0 = _mm256_maskload_ps(b + c0, m0), acc1 = _mm256_maskload_ps(b + c0 + 8, m1);
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = oh * g.SH - g.PT + i * g.DH;
      if (ih < 0 || ih >= g.H) continue;
      const float* xrow = x + (n * g.H + ih) * g.W * g.C + c0;
      const float* wrow = w + (p * g.KH * g.KW + i * g.KW) * kPanel;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = ow * g.SW - g.PL + j * g.DW;
        if (iw < 0 || iw >= g.W) continue;
        const float* xv = xrow + iw * g.C;
        const float* wv = wrow + j * kPanel;
        if (nc == kPanel) {
          acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xv), _mm256_loadu_ps(wv), acc0);
          acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(xv + 8), _mm256_loadu_ps(wv + 8), acc1);
        } else {
          acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(xv, m0), _mm256_loadu_ps(wv), acc0);
          acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(xv + 8, m1), _mm256_loadu_ps(wv + 8), acc1);
        }
      }
    }
    // max/min return their second operand when either is NaN: acc second keeps NaN.
    acc0 = _mm256_min_ps(hi, _mm256_max_ps(lo, acc0));
    acc1 = _mm256_min_ps(hi, _mm256_max_ps(lo, acc1));
    if (nc == kPanel) {
      _mm256_storeu_ps(y + c0, acc0);
      _mm256_storeu_ps(y + c0 + 8, acc1);
    } else {
      _mm256_maskstore_ps(y + c0, m0, acc0);
      _mm256_maskstore_ps(y + c0 + 8, m1, acc1);
    }
  }
}

// Four output pixels [ow, ow + 4) of row (n, oh) whose taps all fall inside the input
// horizontally, for full 16-channel panels: each tap's weights are loaded once for the four.
// ``rows`` lists the kernel rows inside the input vertically.
__attribute__((target("avx2,fma"))) void FourPixelsAvx2(const Geometry& g, const float* x,
                                                         const float* w, const float* b,
                                                         float* y, int64_t n, int64_t oh,
                                                         int64_t ow, int64_t p) {
  const int64_t c0 = p * kPanel;
  __m256 acc[4][2];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    acc[q][0] = _mm256_loadu_ps(b + c0);
    acc[q][1] = _mm256_loadu_ps(b + c0 + 8);
  }
  const int64_t step = g.SW * g.C;  // from one output pixel's input to the next one's
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t ih = oh * g.SH - g.PT + i * g.DH;
    if (ih < 0 || ih >= g.H) continue;
    const float* xrow = x + ((n * g.H + ih) * g.W + ow * g.SW - g.PL) * g.C + c0;
    const float* wrow = w + (p * g.KH * g.KW + i * g.KW) * kPanel;
    for (int64_t j = 0; j < g.KW; ++j) {
      const __m256 w0 = _mm256_loadu_ps(wrow + j * kPanel);
      const __m256 w1 = _mm256_loadu_ps(wrow + j * kPanel + 8);
      const float* xv = xrow + j * g.DW * g.C;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        acc[q][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xv + q * step), w0, acc[q][0]);
        acc[q][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xv + q * step + 8), w1, acc[q][1]);
      }
    }
  }
  const __m256 lo = _mm256_set1_ps(g.lo), hi = _mm256_set1_ps(g.hi);
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    float* out = y + (ow + q) * g.C + c0;
    _mm256_storeu_ps(out, _mm256_min_ps(hi, _mm256_max_ps(lo, acc[q][0])));
    _mm256_storeu_ps(out + 8, _mm256_min_ps(hi, _mm256_max_ps(lo, acc[q][1])));
  }
}

// The input rows the next output row reads and this one does not (one at stride 1, two at
// stride 2) come from memory once activations outgrow the cache: each row function prefetches
// them a few pixels at a time as it goes (MobileNetV2 b8's depthwise layers -11..-29%, b1
// within +-5%: NOTES entry 26). Returns how many rows ``ahead`` holds.
int64_t RowsAhead(const Geometry& g, const float* x, int64_t n, int64_t oh,
                  const float* ahead[2]) {
  int64_t n_ahead = 0;
  const int64_t last_row = oh * g.SH - g.PT + (g.KH - 1) * g.DH;  // this row's lowest input row
  for (int64_t i = 0; i < g.KH && n_ahead < 2 && oh + 1 < g.OH; ++i) {
    const int64_t ih = (oh + 1) * g.SH - g.PT + i * g.DH;
    if (ih > last_row && ih >= 0 && ih < g.H) ahead[n_ahead++] = x + (n * g.H + ih) * g.W * g.C;
  }
  return n_ahead;
}

// Prefetches the input columns of output pixels [ow0, ow1) in the rows ``ahead``.
void PrefetchAhead(const Geometry& g, const float* const* ahead, int64_t n_ahead, int64_t ow0,
                   int64_t ow1) {
  const int64_t c0 = ow0 * g.SW * g.C, c1 = std::min(ow1 * g.SW, g.W) * g.C;
  for (int64_t r = 0; r < n_ahead; ++r)
    for (int64_t c = c0; c < c1; c += 16)  // one cache line each
      _mm_prefetch(reinterpret_cast<const char*>(ahead[r] + c), _MM_HINT_T0);
}

// One output row: full panels of interior pixels four at a time, everything else through
// ``PixelAvx2``'s checked path (written for all panels, then the full panels of the interior
// overwritten: simple, and the checked path costs only at the edges and the last panel).
__attribute__((target("avx2,fma"))) void RowAvx2(const Geometry& g, const float* x,
                                                  const float* w, const float* b, float* y,
                                                  int64_t n, int64_t oh) {
  // Output columns whose taps all lie inside the input: ow * SW - PL >= 0 and
  // ow * SW - PL + (KW - 1) * DW <= W - 1.
  const int64_t first = (g.PL + g.SW - 1) / g.SW;
  const int64_t last_in = g.W - 1 - (g.KW - 1) * g.DW + g.PL;  // max ow * SW
  const int64_t end = last_in < 0 ? 0 : std::min(g.OW, last_in / g.SW + 1);
  const int64_t full = g.C / kPanel;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    const bool inner = ow >= first && ow < end;
    if (!inner || full * kPanel != g.C) PixelAvx2(g, x, w, b, y + ow * g.C, n, oh, ow, inner);
  }
  const float* ahead[2];
  const int64_t n_ahead = RowsAhead(g, x, n, oh, ahead);
  // Pixels outer, panels inner: the taps of four pixels span a few hundred contiguous bytes
  // of each input row, where panels outer walked every row once per panel at a stride of C
  // floats (2x slower at batch 8, where the rows come from memory: NOTES entry 26).
  int64_t ow = first;
  for (; ow + 4 <= end; ow += 4) {
    PrefetchAhead(g, ahead, n_ahead, ow, ow + 4);
    for (int64_t p = 0; p < full; ++p) FourPixelsAvx2(g, x, w, b, y, n, oh, ow, p);
  }
  for (; ow < end; ++ow)
    for (int64_t p = 0; p < full; ++p) PixelAvx2(g, x, w, b, y + ow * g.C, n, oh, ow, false, p);
}

// AVX-512: a panel is one vector, and a partial last panel is a masked load (full speed), so
// one path serves every panel. Edge pixels check their taps; interior pixels go Q at a time.
__attribute__((target("avx512f"))) inline __mmask16 PanelMask(const Geometry& g, int64_t p) {
  const int64_t nc = std::min(kPanel, g.C - p * kPanel);
  return static_cast<__mmask16>((1u << nc) - 1u);
}

// One output pixel, every panel, taps in the padding skipped.
__attribute__((target("avx512f"))) void PixelAvx512(const Geometry& g, const float* x,
                                                     const float* w, const float* b, float* y,
                                                     int64_t n, int64_t oh, int64_t ow) {
  const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi);
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t c0 = p * kPanel;
    const __mmask16 m = PanelMask(g, p);
    __m512 acc = _mm512_maskz_loadu_ps(m, b + c0);
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = oh * g.SH - g.PT + i * g.DH;
      if (ih < 0 || ih >= g.H) continue;
      const float* xrow = x + (n * g.H + ih) * g.W * g.C + c0;
      const float* wrow = w + (p * g.KH * g.KW + i * g.KW) * kPanel;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = ow * g.SW - g.PL + j * g.DW;
        if (iw < 0 || iw >= g.W) continue;
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xrow + iw * g.C),
                              _mm512_loadu_ps(wrow + j * kPanel), acc);
      }
    }
    _mm512_mask_storeu_ps(y + c0, m, _mm512_min_ps(hi, _mm512_max_ps(lo, acc)));
  }
}

// Q output pixels [ow, ow + Q) of row (n, oh) whose taps all fall inside the input
// horizontally, panel p: each tap's weights are loaded once for the Q pixels.
template <int Q>
__attribute__((target("avx512f"))) void PixelsAvx512(const Geometry& g, const float* x,
                                                      const float* w, const float* b, float* y,
                                                      int64_t n, int64_t oh, int64_t ow,
                                                      int64_t p) {
  const int64_t c0 = p * kPanel;
  const __mmask16 m = PanelMask(g, p);
  __m512 acc[Q];
  const __m512 bias = _mm512_maskz_loadu_ps(m, b + c0);
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) acc[q] = bias;
  const int64_t step = g.SW * g.C;  // from one output pixel's input to the next one's
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t ih = oh * g.SH - g.PT + i * g.DH;
    if (ih < 0 || ih >= g.H) continue;
    const float* xrow = x + ((n * g.H + ih) * g.W + ow * g.SW - g.PL) * g.C + c0;
    const float* wrow = w + (p * g.KH * g.KW + i * g.KW) * kPanel;
    for (int64_t j = 0; j < g.KW; ++j) {
      const __m512 wv = _mm512_loadu_ps(wrow + j * kPanel);
      const float* xv = xrow + j * g.DW * g.C;
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q)
        acc[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xv + q * step), wv, acc[q]);
    }
  }
  const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi);
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q)
    _mm512_mask_storeu_ps(y + (ow + q) * g.C + c0, m,
                          _mm512_min_ps(hi, _mm512_max_ps(lo, acc[q])));
}

// One output row, as RowAvx2 goes (pixels outer, panels inner, the next row's new input rows
// prefetched), eight interior pixels at a time (eight accumulators cover the FMA latency).
__attribute__((target("avx512f"))) void RowAvx512(const Geometry& g, const float* x,
                                                   const float* w, const float* b, float* y,
                                                   int64_t n, int64_t oh) {
  const int64_t first = std::min(g.OW, (g.PL + g.SW - 1) / g.SW);
  const int64_t last_in = g.W - 1 - (g.KW - 1) * g.DW + g.PL;  // max ow * SW
  const int64_t end = last_in < 0 ? first : std::max(first, std::min(g.OW, last_in / g.SW + 1));
  for (int64_t ow = 0; ow < first; ++ow) PixelAvx512(g, x, w, b, y + ow * g.C, n, oh, ow);
  for (int64_t ow = end; ow < g.OW; ++ow) PixelAvx512(g, x, w, b, y + ow * g.C, n, oh, ow);
  const float* ahead[2];
  const int64_t n_ahead = RowsAhead(g, x, n, oh, ahead);
  int64_t ow = first;
  for (; ow + 8 <= end; ow += 8) {
    PrefetchAhead(g, ahead, n_ahead, ow, ow + 8);
    for (int64_t p = 0; p < g.P; ++p) PixelsAvx512<8>(g, x, w, b, y, n, oh, ow, p);
  }
  if (ow + 4 <= end) {
    for (int64_t p = 0; p < g.P; ++p) PixelsAvx512<4>(g, x, w, b, y, n, oh, ow, p);
    ow += 4;
  }
  for (; ow < end; ++ow)
    for (int64_t p = 0; p < g.P; ++p) PixelsAvx512<1>(g, x, w, b, y, n, oh, ow, p);
}
#endif

struct Work {
  Geometry g;
  const float* x;
  const float* w;
  const float* b;
  float* y;
  int64_t total;  // N * OH output rows

  void Row(int64_t q) const {
    const int64_t n = q / g.OH, oh = q % g.OH;
    float* out = y + q * g.OW * g.C;
#if defined(__x86_64__)
    if (onnx2jax::HasAvx512()) return RowAvx512(g, x, w, b, out, n, oh);
    if (onnx2jax::HasAvx2()) return RowAvx2(g, x, w, b, out, n, oh);
#endif
    for (int64_t ow = 0; ow < g.OW; ++ow) PixelGeneric(g, x, w, b, out + ow * g.C, n, oh, ow);
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
    for (int64_t q = q0; q < q1; ++q) work->Row(q);
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
