// The convolution kernels' GEMM tile: R output pixels times one or two 16-channel weight panels,
// its input read through one pointer per run of each pixel (packed_conv.cc's indirect GEMM; the
// 1x1 products of inverted_residual.cc, where a run is a whole pixel). ``Gemm`` runs it over a
// strided run of pixels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace onnx2jax::dense {

constexpr int64_t kPanel = 16;  // output channels per panel: two AVX2 vectors
// Output pixels per tile: on AVX2 6 x 2 accumulators + 3 = 15 of 16 registers; on AVX-512
// 12 x 2 + 3 = 27 of 32 (each broadcast input value feeds two FMAs either way).
constexpr int kTileAvx2 = 6;
constexpr int kTileAvx512 = 12;

struct Geometry {
  int64_t N, H, W, C, OH, OW, O, KH, KW, SH, SW, DH, DW, PT, PL, P, K;
  int64_t S, L;  // runs per output pixel and values per run (S * L = K)
  int64_t T;     // output pixels per tile (kTileAvx2 or kTileAvx512)
  float lo, hi;  // the epilogue's clamp; +-inf for none
  const float* y0;   // the output, where a tile's offset into ``sum`` is measured from
  const float* sum;  // added before the clamp (the residual), or nullptr
};

// Tile kernel: acc[R pixels][16 channels] = sum over runs s and their values c of
// rows[s * T + r][c] * w[s * L + c][0..15]; then bias (and sum), clamp, store. The clamp
// keeps NaN.
template <int R>
void TileGeneric(const float* const* rows, const float* w, const float* bias, float* y,
                 const Geometry& g, int64_t ncols) {
  float acc[R][kPanel] = {};
  for (int64_t t = 0; t < g.S; ++t) {
    const float* wt = w + t * g.L * kPanel;
    for (int r = 0; r < R; ++r) {
      const float* a = rows[t * g.T + r];
      for (int64_t c = 0; c < g.L; ++c)
        for (int j = 0; j < kPanel; ++j) acc[r][j] += a[c] * wt[c * kPanel + j];
    }
  }
  const float* sum = g.sum == nullptr ? nullptr : g.sum + (y - g.y0);
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < kPanel; ++j) {
      acc[r][j] += bias[j];
      if (sum != nullptr && j < ncols) acc[r][j] += sum[r * g.O + j];
      if (acc[r][j] < g.lo) acc[r][j] = g.lo;
      if (acc[r][j] > g.hi) acc[r][j] = g.hi;
    }
    std::memcpy(y + r * g.O, acc[r], ncols * sizeof(float));
  }
}

#if defined(__x86_64__)
// The pragmas matter (as in packed_matmul.cc): without full unrolling GCC keeps the
// accumulators on the stack.
template <int R>
__attribute__((target("avx2,fma"))) void TileAvx2(const float* const* rows, const float* w,
                                                   const float* bias, float* y, const Geometry& g,
                                                   int64_t ncols) {
  __m256 acc[R][2];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t t = 0; t < g.S; ++t) {
    const float* wt = w + t * g.L * kPanel;
    const float* a[R];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) a[r] = rows[t * g.T + r];
    for (int64_t c = 0; c < g.L; ++c) {
      const __m256 w0 = _mm256_loadu_ps(wt + c * kPanel);
      const __m256 w1 = _mm256_loadu_ps(wt + c * kPanel + 8);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const __m256 v = _mm256_broadcast_ss(a[r] + c);
        acc[r][0] = _mm256_fmadd_ps(v, w0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(v, w1, acc[r][1]);
      }
    }
  }
  const __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
  const __m256 lo = _mm256_set1_ps(g.lo), hi = _mm256_set1_ps(g.hi);
  const float* sum = g.sum == nullptr ? nullptr : g.sum + (y - g.y0);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    // max/min return their second operand when either is NaN: v second keeps NaN.
    __m256 v0 = _mm256_add_ps(acc[r][0], b0), v1 = _mm256_add_ps(acc[r][1], b1);
    if (sum != nullptr) {
      alignas(32) float tmp[kPanel] = {};
      const float* s = sum + r * g.O;
      if (ncols != kPanel) s = static_cast<const float*>(std::memcpy(tmp, s, ncols * 4));
      v0 = _mm256_add_ps(v0, _mm256_loadu_ps(s));
      v1 = _mm256_add_ps(v1, _mm256_loadu_ps(s + 8));
    }
    v0 = _mm256_min_ps(hi, _mm256_max_ps(lo, v0));
    v1 = _mm256_min_ps(hi, _mm256_max_ps(lo, v1));
    if (ncols == kPanel) {
      _mm256_storeu_ps(y + r * g.O, v0);
      _mm256_storeu_ps(y + r * g.O + 8, v1);
    } else {
      alignas(32) float tmp[kPanel];
      _mm256_store_ps(tmp, v0);
      _mm256_store_ps(tmp + 8, v1);
      std::memcpy(y + r * g.O, tmp, ncols * sizeof(float));
    }
  }
}

// The AVX-512 tiles' epilogue for one accumulator: the bias, the residual ``s`` (or nullptr),
// the clamp, a masked store of the panel's columns.
__attribute__((target("avx512f"), always_inline)) inline void Store512(
    __m512 acc, __m512 b, const float* s, __mmask16 mask, __m512 lo, __m512 hi, float* y) {
  __m512 v = _mm512_add_ps(acc, b);
  if (s != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, s));
  v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));  // v second: NaN stays NaN
  _mm512_mask_storeu_ps(y, mask, v);
}

// AVX-512: the same tile against two panels at once, 6 x 32 channels in 12 accumulators, so
// each broadcast input value feeds two FMAs as on AVX2 but each FMA is twice as wide. ``np``
// panels (1 or 2) starting at w; ``ncols`` of their 16 * np columns are stored (masked).
template <int R>
__attribute__((target("avx512f"))) void TileAvx512(const float* const* rows, const float* w,
                                                   int np, const float* bias, float* y,
                                                   const Geometry& g, int64_t ncols) {
  const int64_t panel = g.K * kPanel;  // floats between one panel and the next
  __m512 acc[R][2];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  if (np == 2) {
    for (int64_t t = 0; t < g.S; ++t) {
      const float* wt = w + t * g.L * kPanel;
      const float* a[R];
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) a[r] = rows[t * g.T + r];
      for (int64_t c = 0; c < g.L; ++c) {
        const __m512 w0 = _mm512_loadu_ps(wt + c * kPanel);
        const __m512 w1 = _mm512_loadu_ps(wt + panel + c * kPanel);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
          const __m512 v = _mm512_set1_ps(a[r][c]);
          acc[r][0] = _mm512_fmadd_ps(v, w0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(v, w1, acc[r][1]);
        }
      }
    }
  } else {
    for (int64_t t = 0; t < g.S; ++t) {
      const float* wt = w + t * g.L * kPanel;
      const float* a[R];
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) a[r] = rows[t * g.T + r];
      for (int64_t c = 0; c < g.L; ++c) {
        const __m512 w0 = _mm512_loadu_ps(wt + c * kPanel);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r)
          acc[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(a[r][c]), w0, acc[r][0]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi);
  const float* sum = g.sum == nullptr ? nullptr : g.sum + (y - g.y0);
  for (int j = 0; j < np; ++j) {
    const int64_t n = std::clamp<int64_t>(ncols - j * kPanel, 0, kPanel);
    if (n == 0) break;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 b = _mm512_loadu_ps(bias + j * kPanel);  // bias is padded to whole panels
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
      Store512(acc[r][j], b, sum == nullptr ? nullptr : sum + r * g.O + j * kPanel, mask, lo, hi,
               y + r * g.O + j * kPanel);
  }
}

// AVX-512, four panels at once: 6 pixels x 64 channels in 24 accumulators, so each broadcast
// input value feeds four FMAs (the 12 x 32 tile: two) and a tile's inputs are read once for
// 64 channels: for convolutions with 64 channels or more.
constexpr int kTileAvx512Wide = 6;

template <int R>
__attribute__((target("avx512f"))) void TileAvx512Wide(const float* const* rows, const float* w,
                                                       const float* bias, float* y,
                                                       const Geometry& g, int64_t ncols) {
  const int64_t panel = g.K * kPanel;  // floats between one panel and the next
  __m512 acc[R][4];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
    acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
  for (int64_t t = 0; t < g.S; ++t) {
    const float* wt = w + t * g.L * kPanel;
    const float* a[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) a[r] = rows[t * g.T + r];
    for (int64_t c = 0; c < g.L; ++c) {
      const __m512 w0 = _mm512_loadu_ps(wt + c * kPanel);
      const __m512 w1 = _mm512_loadu_ps(wt + panel + c * kPanel);
      const __m512 w2 = _mm512_loadu_ps(wt + 2 * panel + c * kPanel);
      const __m512 w3 = _mm512_loadu_ps(wt + 3 * panel + c * kPanel);
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const __m512 v = _mm512_set1_ps(a[r][c]);
        acc[r][0] = _mm512_fmadd_ps(v, w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(v, w1, acc[r][1]);
        acc[r][2] = _mm512_fmadd_ps(v, w2, acc[r][2]);
        acc[r][3] = _mm512_fmadd_ps(v, w3, acc[r][3]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi);
  const float* sum = g.sum == nullptr ? nullptr : g.sum + (y - g.y0);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const int64_t n = std::clamp<int64_t>(ncols - j * kPanel, 0, kPanel);
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 b = _mm512_loadu_ps(bias + j * kPanel);  // bias is padded to whole panels
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r)
      Store512(acc[r][j], b, sum == nullptr ? nullptr : sum + r * g.O + j * kPanel, mask, lo, hi,
               y + r * g.O + j * kPanel);
  }
}

#endif

template <int R>
void Tile(const float* const* rows, const float* w, const float* bias, float* y,
          const Geometry& g, int64_t ncols) {
#if defined(__x86_64__)
  if (onnx2jax::HasAvx2()) return TileAvx2<R>(rows, w, bias, y, g, ncols);
#endif
  TileGeneric<R>(rows, w, bias, y, g, ncols);
}

using TileFn = void (*)(const float* const*, const float*, const float*, float*,
                        const Geometry&, int64_t);
constexpr TileFn kTiles[kTileAvx2 + 1] = {nullptr, Tile<1>, Tile<2>, Tile<3>,
                                          Tile<4>, Tile<5>, Tile<6>};
#if defined(__x86_64__)
using Tile512Fn = void (*)(const float* const*, const float*, int, const float*, float*,
                           const Geometry&, int64_t);
constexpr Tile512Fn kTiles512[kTileAvx512 + 1] = {
    nullptr,       TileAvx512<1>, TileAvx512<2>, TileAvx512<3>,  TileAvx512<4>,
    TileAvx512<5>, TileAvx512<6>, TileAvx512<7>, TileAvx512<8>,  TileAvx512<9>,
    TileAvx512<10>, TileAvx512<11>, TileAvx512<12>};
using TileWideFn = void (*)(const float* const*, const float*, const float*, float*,
                            const Geometry&, int64_t);
constexpr TileWideFn kTilesWide[kTileAvx512Wide + 1] = {
    nullptr,           TileAvx512Wide<1>, TileAvx512Wide<2>, TileAvx512Wide<3>,
    TileAvx512Wide<4>, TileAvx512Wide<5>, TileAvx512Wide<6>};
#endif

// One tile of ``count`` pixels (``rows``) against panels [p0, p1) of ``w``, ``unit`` panels at
// a time (1: AVX2 or portable; 2: AVX-512; 4: its 6 x 64 tile, whose tile holds 6 pixels, a
// unit's last 1-3 panels then two at a time); ``bias`` and ``y`` (the tile's first pixel) are
// at panel 0.
inline void Panels(const float* const* rows, int count, const Geometry& g, const float* w,
                   const float* bias, float* y, int64_t p0, int64_t p1, int64_t unit) {
  for (int64_t p = p0; p < p1; p += unit) {
    const int np = static_cast<int>(std::min(unit, p1 - p));
    const int64_t ncols = std::min(kPanel * np, g.O - p * kPanel);
    const float* wp = w + p * g.K * kPanel;
    const float* bp = bias + p * kPanel;
    float* yp = y + p * kPanel;
#if defined(__x86_64__)
    if (unit == 4 && np == 4) {
      kTilesWide[count](rows, wp, bp, yp, g, ncols);
      continue;
    }
    if (unit >= 2) {
      for (int j = 0; j < np; j += 2) {
        const int64_t cols = std::min(kPanel * std::min(2, np - j), ncols - j * kPanel);
        kTiles512[count](rows, wp + j * g.K * kPanel, std::min(2, np - j), bp + j * kPanel,
                         yp + j * kPanel, g, cols);
      }
      continue;
    }
#endif
    kTiles[count](rows, wp, bp, yp, g, ncols);
  }
}

// The panels a tile takes at a time on this CPU (``Panels``' unit), with the 6 x 64 tile when
// ``wide`` allows it and the convolution has 4+ panels (NOTES entry 30).
inline int64_t PanelUnit(const Geometry& g, bool wide) {
  return HasAvx512() ? (wide && g.P >= 4 ? 4 : 2) : 1;
}

// Output pixels per tile for a panel unit.
inline int64_t TileFor(int64_t unit) {
  return unit == 4 ? kTileAvx512Wide : unit == 2 ? kTileAvx512 : kTileAvx2;
}

// y[m, 0..O) = clamp(a[m] . W + bias (+ g.sum at y's offset from g.y0), lo, hi) for ``m``
// pixels of ``a`` that start ``lda`` floats apart and K = g.K values each (a 1x1 convolution
// over a run of pixels; g.S == 1, g.L == g.K), y ``g.O`` floats apart; W panels [P, K, 16],
// bias padded to whole panels.
inline void Gemm(const Geometry& g, const float* a, int64_t lda, int64_t m, const float* w,
                 const float* bias, float* y) {
  const float* rows[kTileAvx512];
  const int64_t unit = PanelUnit(g, true), T = TileFor(unit);  // (one run per pixel: g.T unread)
  for (int64_t t = 0; t < m; t += T) {
    const int count = static_cast<int>(std::min<int64_t>(T, m - t));
    for (int r = 0; r < T; ++r) rows[r] = a + std::min<int64_t>(t + r, m - 1) * lda;
    Panels(rows, count, g, w, bias, y + t * g.O, 0, g.P, unit);
  }
}

// The input run s of output pixel (n, oh, ow) of the convolution g of x: its start, ``zero``
// (g.L zeros) when its kernel row lies in the top or bottom padding, nullptr when it crosses
// the left or right padding (``FillRun`` then copies it).
inline const float* RunAt(const Geometry& g, const float* x, const float* zero, int64_t n,
                          int64_t oh, int64_t ow, int64_t s) {
  const int64_t i = g.S == g.KH ? s : s / g.KW;  // kernel row
  const int64_t j = g.S == g.KH ? 0 : s % g.KW;  // first kernel column of the run
  const int64_t ih = oh * g.SH - g.PT + i * g.DH;
  if (ih < 0 || ih >= g.H) return zero;
  const int64_t iw = ow * g.SW - g.PL + j * g.DW;
  const int64_t taps = g.L / g.C;  // kernel columns in the run: KW, or 1
  if (iw < 0 || iw + (taps - 1) * g.DW >= g.W) return nullptr;
  return x + ((n * g.H + ih) * g.W + iw) * g.C;
}

// Run s of output pixel (n, oh, ow) copied into ``out`` (g.L values), zeros where it reads
// padding.
inline void FillRun(const Geometry& g, const float* x, int64_t n, int64_t oh, int64_t ow,
                    int64_t s, float* out) {
  const int64_t i = g.S == g.KH ? s : s / g.KW;
  const int64_t j0 = g.S == g.KH ? 0 : s % g.KW;
  const int64_t ih = oh * g.SH - g.PT + i * g.DH;
  for (int64_t j = 0; j < g.L / g.C; ++j) {
    const int64_t iw = ow * g.SW - g.PL + (j0 + j) * g.DW;
    float* dst = out + j * g.C;
    if (iw < 0 || iw >= g.W)
      std::memset(dst, 0, g.C * sizeof(float));
    else
      std::memcpy(dst, x + ((n * g.H + ih) * g.W + iw) * g.C, g.C * sizeof(float));
  }
}

// Output rows [r0, r1) of image n of a dense convolution with any window (g: the whole
// convolution, g.S runs of g.L values per output pixel, g.T the 2-panel tile's pixels) into
// ``out`` [(r1 - r0) * OW, O]: packed_conv.cc's indirect GEMM for one band of rows (the fused
// block's first stage when that is not a 1x1 convolution: a stem), edge runs copied into
// ``scratch``.
inline void ConvRows(const Geometry& g, const float* x, int64_t n, int64_t r0, int64_t r1,
                     const float* w, const float* bias, float* out, const float* zero,
                     std::vector<const float*>& ptrs, std::vector<float>& scratch) {
  const int64_t m = (r1 - r0) * g.OW;
  ptrs.resize(g.S * g.T);
  scratch.resize(g.S * g.T * g.L);
  for (int64_t t = 0; t < m; t += g.T) {
    const int count = static_cast<int>(std::min<int64_t>(g.T, m - t));
    for (int r = 0; r < g.T; ++r) {
      const int64_t q = std::min<int64_t>(t + r, m - 1);  // a short tile repeats its last pixel
      const int64_t oh = r0 + q / g.OW, ow = q % g.OW;
      for (int64_t s = 0; s < g.S; ++s) {
        const float*& run = ptrs[s * g.T + r];
        run = RunAt(g, x, zero, n, oh, ow, s);
        if (run == nullptr) {
          float* dst = scratch.data() + (s * g.T + r) * g.L;
          FillRun(g, x, n, oh, ow, s, dst);
          run = dst;
        }
      }
    }
    Panels(ptrs.data(), count, g, w, bias, out + t * g.O, 0, g.P, PanelUnit(g, false));
  }
}


}  // namespace onnx2jax::dense
