// One output row of a channels-last depthwise convolution, its input read through one pointer
// per kernel row (nullptr: a row in the top or bottom padding, skipped): depthwise_conv.cc
// passes rows of its input, inverted_residual.cc rows of the expansion it just computed.
// Channels are in the vector lanes; taps in the left or right padding are skipped rather than
// read from a padded copy (benchmarks/NOTES.md entry 19).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace onnx2jax::depthwise {

constexpr int64_t kPanel = 16;  // channels per panel (the convolution kernel's panel width)

// W is in the convolution kernel's panel layout [P, KH * KW, 16] (P = ceil(C / 16)).
struct Geometry {
  int64_t N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, P;
  float lo, hi;
};

// One output pixel's channels [16p, 16p + n) for every panel p: taps in the padding skipped.
inline void PixelGeneric(const Geometry& g, const float* const* rows, const float* w,
                         const float* b, float* y, int64_t ow) {
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t c0 = p * kPanel, nc = std::min(kPanel, g.C - c0);
    float acc[kPanel];
    for (int64_t j = 0; j < nc; ++j) acc[j] = b[c0 + j];
    for (int64_t i = 0; i < g.KH; ++i) {
      if (rows[i] == nullptr) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = ow * g.SW - g.PL + j * g.DW;
        if (iw < 0 || iw >= g.W) continue;
        const float* xv = rows[i] + iw * g.C + c0;
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

inline void RowGeneric(const Geometry& g, const float* const* rows, const float* w,
                       const float* b, float* y) {
  for (int64_t ow = 0; ow < g.OW; ++ow) PixelGeneric(g, rows, w, b, y + ow * g.C, ow);
}

#if defined(__x86_64__)
// One output pixel, with bounds checks: panels [p0, P), or only panel ``only`` (>= 0); with
// ``tail_only`` only the partial last panel (the full ones go through FourPixelsAvx2).
__attribute__((target("avx2,fma"))) inline void PixelAvx2(const Geometry& g,
                                                           const float* const* rows,
                                                           const float* w, const float* b,
                                                           float* y, int64_t ow,
                                                           bool tail_only = false,
                                                           int64_t only = -1) {
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
      if (rows[i] == nullptr) continue;
      const float* xrow = rows[i] + c0;
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

// Four output pixels [ow, ow + 4) whose taps all fall inside the input horizontally, for full
// 16-channel panels: each tap's weights are loaded once for the four.
__attribute__((target("avx2,fma"))) inline void FourPixelsAvx2(const Geometry& g,
                                                                const float* const* rows,
                                                                const float* w, const float* b,
                                                                float* y, int64_t ow,
                                                                int64_t p) {
  const int64_t c0 = p * kPanel;
  __m256 acc[4][2];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    acc[q][0] = _mm256_loadu_ps(b + c0);
    acc[q][1] = _mm256_loadu_ps(b + c0 + 8);
  }
  const int64_t step = g.SW * g.C;  // from one output pixel's input to the next one's
  for (int64_t i = 0; i < g.KH; ++i) {
    if (rows[i] == nullptr) continue;
    const float* xrow = rows[i] + (ow * g.SW - g.PL) * g.C + c0;
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

// Prefetches the input columns of output pixels [ow0, ow1) in the rows ``ahead`` (the rows
// the next output row reads and this one does not: NOTES entry 26).
inline void PrefetchAhead(const Geometry& g, const float* const* ahead, int64_t n_ahead,
                          int64_t ow0, int64_t ow1) {
  const int64_t c0 = ow0 * g.SW * g.C, c1 = std::min(ow1 * g.SW, g.W) * g.C;
  for (int64_t r = 0; r < n_ahead; ++r)
    for (int64_t c = c0; c < c1; c += 16)  // one cache line each
      _mm_prefetch(reinterpret_cast<const char*>(ahead[r] + c), _MM_HINT_T0);
}

// One output row: full panels of interior pixels four at a time, everything else through
// ``PixelAvx2``'s checked path (written for all panels, then the full panels of the interior
// overwritten: simple, and the checked path costs only at the edges and the last panel).
__attribute__((target("avx2,fma"))) inline void RowAvx2(const Geometry& g,
                                                         const float* const* rows,
                                                         const float* const* ahead,
                                                         int64_t n_ahead, const float* w,
                                                         const float* b, float* y) {
  // Output columns whose taps all lie inside the input: ow * SW - PL >= 0 and
  // ow * SW - PL + (KW - 1) * DW <= W - 1.
  const int64_t first = (g.PL + g.SW - 1) / g.SW;
  const int64_t last_in = g.W - 1 - (g.KW - 1) * g.DW + g.PL;  // max ow * SW
  const int64_t end = last_in < 0 ? 0 : std::min(g.OW, last_in / g.SW + 1);
  const int64_t full = g.C / kPanel;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    const bool inner = ow >= first && ow < end;
    if (!inner || full * kPanel != g.C) PixelAvx2(g, rows, w, b, y + ow * g.C, ow, inner);
  }
  // Pixels outer, panels inner: the taps of four pixels span a few hundred contiguous bytes
  // of each input row, where panels outer walked every row once per panel at a stride of C
  // floats (2x slower at batch 8, where the rows come from memory: NOTES entry 26).
  int64_t ow = first;
  for (; ow + 4 <= end; ow += 4) {
    PrefetchAhead(g, ahead, n_ahead, ow, ow + 4);
    for (int64_t p = 0; p < full; ++p) FourPixelsAvx2(g, rows, w, b, y, ow, p);
  }
  for (; ow < end; ++ow)
    for (int64_t p = 0; p < full; ++p) PixelAvx2(g, rows, w, b, y + ow * g.C, ow, false, p);
}

// AVX-512: a panel is one vector, and a partial last panel is a masked load (full speed), so
// one path serves every panel. Edge pixels check their taps; interior pixels go Q at a time.
__attribute__((target("avx512f"))) inline __mmask16 PanelMask(const Geometry& g, int64_t p) {
  const int64_t nc = std::min(kPanel, g.C - p * kPanel);
  return static_cast<__mmask16>((1u << nc) - 1u);
}

// One output pixel, every panel, taps in the padding skipped.
__attribute__((target("avx512f"))) inline void PixelAvx512(const Geometry& g,
                                                            const float* const* rows,
                                                            const float* w, const float* b,
                                                            float* y, int64_t ow) {
  const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi);
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t c0 = p * kPanel;
    const __mmask16 m = PanelMask(g, p);
    __m512 acc = _mm512_maskz_loadu_ps(m, b + c0);
    for (int64_t i = 0; i < g.KH; ++i) {
      if (rows[i] == nullptr) continue;
      const float* xrow = rows[i] + c0;
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

// Q output pixels [ow, ow + Q) whose taps all fall inside the input horizontally, panel p:
// each tap's weights are loaded once for the Q pixels.
template <int Q>
__attribute__((target("avx512f"))) void PixelsAvx512(const Geometry& g, const float* const* rows,
                                                      const float* w, const float* b, float* y,
                                                      int64_t ow, int64_t p) {
  const int64_t c0 = p * kPanel;
  const __mmask16 m = PanelMask(g, p);
  __m512 acc[Q];
  const __m512 bias = _mm512_maskz_loadu_ps(m, b + c0);
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) acc[q] = bias;
  const int64_t step = g.SW * g.C;  // from one output pixel's input to the next one's
  for (int64_t i = 0; i < g.KH; ++i) {
    if (rows[i] == nullptr) continue;
    const float* xrow = rows[i] + (ow * g.SW - g.PL) * g.C + c0;
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
__attribute__((target("avx512f"))) inline void RowAvx512(const Geometry& g,
                                                          const float* const* rows,
                                                          const float* const* ahead,
                                                          int64_t n_ahead, const float* w,
                                                          const float* b, float* y) {
  const int64_t first = std::min(g.OW, (g.PL + g.SW - 1) / g.SW);
  const int64_t last_in = g.W - 1 - (g.KW - 1) * g.DW + g.PL;  // max ow * SW
  const int64_t end = last_in < 0 ? first : std::max(first, std::min(g.OW, last_in / g.SW + 1));
  for (int64_t ow = 0; ow < first; ++ow) PixelAvx512(g, rows, w, b, y + ow * g.C, ow);
  for (int64_t ow = end; ow < g.OW; ++ow) PixelAvx512(g, rows, w, b, y + ow * g.C, ow);
  int64_t ow = first;
  for (; ow + 8 <= end; ow += 8) {
    PrefetchAhead(g, ahead, n_ahead, ow, ow + 8);
    for (int64_t p = 0; p < g.P; ++p) PixelsAvx512<8>(g, rows, w, b, y, ow, p);
  }
  if (ow + 4 <= end) {
    for (int64_t p = 0; p < g.P; ++p) PixelsAvx512<4>(g, rows, w, b, y, ow, p);
    ow += 4;
  }
  for (; ow < end; ++ow)
    for (int64_t p = 0; p < g.P; ++p) PixelsAvx512<1>(g, rows, w, b, y, ow, p);
}
#endif

// The KH input rows output row (n, oh) of an image x [N, H, W, C] reads (nullptr: padding),
// and the rows the next output row reads and this one does not (one at stride 1, two at
// stride 2), which come from memory once activations outgrow the cache: the row functions
// prefetch them a few pixels at a time as they go (MobileNetV2 b8's depthwise layers -11..-29%,
// b1 within +-5%: NOTES entry 26). Returns how many rows ``ahead`` holds.
inline int64_t InputRows(const Geometry& g, const float* x, int64_t n, int64_t oh,
                         const float** rows, const float* ahead[2]) {
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t ih = oh * g.SH - g.PT + i * g.DH;
    rows[i] = ih < 0 || ih >= g.H ? nullptr : x + (n * g.H + ih) * g.W * g.C;
  }
  int64_t n_ahead = 0;
  const int64_t last_row = oh * g.SH - g.PT + (g.KH - 1) * g.DH;  // this row's lowest input row
  for (int64_t i = 0; i < g.KH && n_ahead < 2 && oh + 1 < g.OH; ++i) {
    const int64_t ih = (oh + 1) * g.SH - g.PT + i * g.DH;
    if (ih > last_row && ih >= 0 && ih < g.H) ahead[n_ahead++] = x + (n * g.H + ih) * g.W * g.C;
  }
  return n_ahead;
}

// One output row y[OW, C] from the KH input rows ``rows`` (nullptr: padding), on the widest
// path this CPU has; ``ahead`` (n_ahead rows) are prefetched as it goes.
inline void Row(const Geometry& g, const float* const* rows, const float* const* ahead,
                int64_t n_ahead, const float* w, const float* b, float* y) {
#if defined(__x86_64__)
  if (HasAvx512()) return RowAvx512(g, rows, ahead, n_ahead, w, b, y);
  if (HasAvx2()) return RowAvx2(g, rows, ahead, n_ahead, w, b, y);
#endif
  RowGeneric(g, rows, w, b, y);
}

}  // namespace onnx2jax::depthwise
