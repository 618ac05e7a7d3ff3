// onnx2jax_packed_conv: a 2-D channels-last convolution on a weight packed once.
//
// y[N, OH, OW, O] = clamp(conv(x[N, H, W, C], W) + b (+ s), lo, hi) (a fused ReLU or Clip;
// onnx2jax_packed_conv_add also adds s[N, OH, OW, O], a residual connection), W as
// panels [P, KH * KW * C, 16] (P = ceil(O / 16), the last one zero-padded): panel p holds
// output channels 16p..16p+15 for every (tap, input channel), contiguous.
//
// It is an indirect GEMM (as XNNPACK's convolutions are): a tile of 6 output pixels times one
// panel of 16 channels is 12 AVX2 accumulators (on AVX-512, 12 pixels times two panels: 24
// accumulators, 1.6-1.9x the AVX2 tile's speed; with 64+ channels 6 pixels times four panels,
// NOTES entry 30), and the tile reads its input through pointers,
// so no patch matrix is ever written. In NHWC one kernel row's KW taps of C channels are one
// contiguous run of the input (with dilation 1), so a pixel needs KH pointers to runs of KW * C
// values (an RGB stem: 7 runs of 21, not 49 of 3); a run that crosses the left or right
// padding is copied, zero-filled, into scratch; a row in the top or bottom padding reads zeros.
// Tiles run in blocks of 8 against a few panels whose weights stay in L2, on XLA's intra-op
// threads. XLA's CPU convolutions run at 40-65% of this machine's matmul peak, this at
// 55-80%; benchmarks/NOTES.md entry 18 has the measurements.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "conv_attrs.h"
#include "cpu_features.h"
#include "dense_tile.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

using namespace onnx2jax::dense;  // the tile (dense_tile.h)

constexpr int64_t kTilesPerBlock = 8;    // 4-16 and 64-384 KiB measured within noise
constexpr int64_t kPanelBytes = 192 << 10;  // weights one block keeps hot (in a 512 KiB L2)


struct Work {
  Geometry g;
  const float* x;
  const float* w;
  float* y;
  std::vector<float> bias;  // [P * 16], zero-padded
  std::vector<float> zero;  // [L]: what a run in the top or bottom padding reads
  int64_t pixels, tiles, tiles_per_block, mblocks, panels_per_block, total, unit;

  // Cuts the output into mblocks x panel-blocks of work: blocks of up to kTilesPerBlock tiles
  // against the panels that fit in kPanelBytes. A small convolution (the 7x7 and 14x14 layers
  // of a CNN at batch 1) has fewer such blocks than ParallelFor's chunks per thread, and 9
  // tiles cut 8 + 1 leave one thread idle most of the call: there the panels are split further
  // and the tiles shared out evenly, until each thread has that many blocks (NOTES entry 22).
  void Partition(int64_t threads) {
    // Panels go to the tile kernel ``unit`` at a time (2 or 4 on AVX-512): blocks hold whole
    // units.
    // On AVX-512 convolutions with 64 channels or more take the 6 x 64 tile (entry 30).
    unit = PanelUnit(g, true);
    g.T = TileFor(unit);
    const int64_t units = (g.P + unit - 1) / unit;
    tiles = (pixels + g.T - 1) / g.T;
    mblocks = (tiles + kTilesPerBlock - 1) / kTilesPerBlock;
    const int64_t unit_bytes = std::max<int64_t>(g.K * kPanel * 4 * unit, 1);
    int64_t units_per_block = std::clamp<int64_t>(kPanelBytes / unit_bytes, 1, units);
    const int64_t wanted = threads > 1 ? onnx2jax::kChunksPerThread * threads : 1;
    int64_t pblocks = (units + units_per_block - 1) / units_per_block;
    if (mblocks * pblocks < wanted) {
      pblocks = std::min(units, (wanted + mblocks - 1) / mblocks);
      units_per_block = (units + pblocks - 1) / pblocks;
      pblocks = (units + units_per_block - 1) / units_per_block;
    }
    if (mblocks * pblocks < wanted) mblocks = std::min(tiles, (wanted + pblocks - 1) / pblocks);
    tiles_per_block = (tiles + mblocks - 1) / mblocks;
    mblocks = (tiles + tiles_per_block - 1) / tiles_per_block;
    panels_per_block = units_per_block * unit;
    total = mblocks * pblocks;
  }

  // Run s of output pixel m copied into ``out`` (L values), zeros where it reads padding.
  void Fill(int64_t m, int64_t s, float* out) const {
    const int64_t n = m / (g.OH * g.OW), rem = m % (g.OH * g.OW);
    FillRun(g, x, n, rem / g.OW, rem % g.OW, s, out);
  }

  void Block(int64_t q, std::vector<const float*>& rows, std::vector<float>& scratch) const {
    const int64_t mb = q % mblocks, pb = q / mblocks;
    const int64_t t0 = mb * tiles_per_block, t1 = std::min(tiles, t0 + tiles_per_block);
    const int64_t p0 = pb * panels_per_block, p1 = std::min(g.P, p0 + panels_per_block);
    const int64_t per_tile = g.S * g.T;
    rows.resize((t1 - t0) * per_tile);
    int64_t edges = 0;  // runs to copy
    // (n, oh, ow) of pixel m stepped along the block: dividing them out of m for every run
    // cost a third of a 1x1 convolution with few channels (NOTES entry 26).
    const int64_t m0 = t0 * g.T;
    const int64_t row_step = g.DH * g.W * g.C;  // from one kernel row's run to the next
    int64_t n = m0 / (g.OH * g.OW), oh = m0 % (g.OH * g.OW) / g.OW, ow = m0 % g.OW;
    for (int64_t t = t0; t < t1; ++t) {
      const float** tile = &rows[(t - t0) * per_tile];
      for (int r = 0; r < g.T; ++r) {
        if (t * g.T + r >= pixels) {  // a short tile repeats its last pixel
          for (int64_t s = 0; s < g.S; ++s) {
            tile[s * g.T + r] = tile[s * g.T + r - 1];
            edges += tile[s * g.T + r] == nullptr;
          }
          continue;
        }
        const int64_t ih0 = oh * g.SH - g.PT, iw0 = ow * g.SW - g.PL;
        if (g.S == g.KH && ih0 >= 0 && ih0 + (g.KH - 1) * g.DH < g.H && iw0 >= 0 &&
            iw0 + (g.KW - 1) * g.DW < g.W) {
          // A window inside the input: its runs are one row step apart. (RunAt's checks for
          // each of them cost the 7x7 stem, K = 147 per pixel, ~20% of its time: NOTES 27.)
          const float* run = x + ((n * g.H + ih0) * g.W + iw0) * g.C;
          for (int64_t s = 0; s < g.S; ++s, run += row_step) tile[s * g.T + r] = run;
        } else {
          for (int64_t s = 0; s < g.S; ++s) {
            const float* run = RunAt(g, x, zero.data(), n, oh, ow, s);
            tile[s * g.T + r] = run;
            edges += run == nullptr;
          }
        }
        if (++ow == g.OW) {
          ow = 0;
          if (++oh == g.OH) oh = 0, ++n;
        }
      }
    }
    if (edges > 0) {
      scratch.resize(edges * g.L);
      float* next_run = scratch.data();
      for (int64_t t = t0; t < t1; ++t) {
        for (int r = 0; r < g.T; ++r) {
          const int64_t m = std::min(t * g.T + r, pixels - 1);
          for (int64_t s = 0; s < g.S; ++s) {
            const float*& run = rows[(t - t0) * per_tile + s * g.T + r];
            if (run != nullptr) continue;
            Fill(m, s, next_run);
            run = next_run;
            next_run += g.L;
          }
        }
      }
    }
    for (int64_t p = p0; p < p1; p += unit) {  // panels outer: a unit's weights stay hot
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t m = t * g.T;
        const int count = static_cast<int>(std::min<int64_t>(g.T, pixels - m));
        Panels(&rows[(t - t0) * per_tile], count, g, w, bias.data(), y + m * g.O, p,
               std::min(p + unit, p1), unit);
      }
    }
  }

  void Blocks(int64_t q0, int64_t q1) const {
    thread_local std::vector<const float*> rows;
    thread_local std::vector<float> scratch;
    for (int64_t q = q0; q < q1; ++q) Block(q, rows, scratch);
  }
};

constexpr int64_t kParallelWork = 1 << 20;  // multiply-adds below which one thread does it all

ffi::Error Conv(ffi::ThreadPool& pool, ffi::AnyBuffer x_buf, ffi::AnyBuffer w_buf,
                ffi::AnyBuffer b_buf, const ffi::AnyBuffer* sum_buf,
                ffi::Result<ffi::AnyBuffer> y_buf, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                int64_t dh, int64_t dw, int64_t pt, int64_t pl, float lo, float hi) {
  const auto xd = x_buf.dimensions();
  const auto wd = w_buf.dimensions();
  const auto bd = b_buf.dimensions();
  const auto yd = y_buf->dimensions();
  if (x_buf.element_type() != ffi::F32 || w_buf.element_type() != ffi::F32 ||
      b_buf.element_type() != ffi::F32 || y_buf->element_type() != ffi::F32)
    return ffi::Error::InvalidArgument("onnx2jax_packed_conv: float32 only");
  if (xd.size() != 4 || wd.size() != 3 || bd.size() != 1 || yd.size() != 4 || wd[2] != kPanel)
    return ffi::Error::InvalidArgument(
        "onnx2jax_packed_conv: expected x [N, H, W, C], w [P, KH * KW * C, 16], b [O], "
        "y [N, OH, OW, O]");
  Geometry g{};
  g.N = xd[0], g.H = xd[1], g.W = xd[2], g.C = xd[3];
  g.OH = yd[1], g.OW = yd[2], g.O = yd[3];
  g.KH = kh, g.KW = kw, g.SH = sh, g.SW = sw, g.DH = dh, g.DW = dw, g.PT = pt, g.PL = pl;
  g.P = wd[0], g.K = wd[1], g.lo = lo, g.hi = hi;
  g.S = dw == 1 ? kh : kh * kw;  // with dilation 1 a kernel row is one contiguous run
  g.L = g.K / std::max<int64_t>(g.S, 1);
  if (yd[0] != g.N || g.K != kh * kw * g.C || g.P != (g.O + kPanel - 1) / kPanel ||
      bd[0] != g.O || kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument("onnx2jax_packed_conv: x, w, b and y do not agree");
  if (sum_buf != nullptr) {
    if (sum_buf->element_type() != ffi::F32 || sum_buf->dimensions().size() != 4 ||
        !std::equal(yd.begin(), yd.end(), sum_buf->dimensions().begin()))
      return ffi::Error::InvalidArgument("onnx2jax_packed_conv_add: s must be float32 like y");
    g.sum = sum_buf->typed_data<float>();
  }
  g.y0 = y_buf->typed_data<float>();
  Work work_;
  Work* work = &work_;
  work->g = g;
  work->pixels = g.N * g.OH * g.OW;
  if (work->pixels == 0 || g.O == 0) return ffi::Error::Success();
  if (g.C == 0) {  // no input channels: every output is the clamped bias (+ sum)
    const float* b = b_buf.typed_data<float>();
    float* y = y_buf->typed_data<float>();
    for (int64_t i = 0; i < work->pixels * g.O; ++i) {
      const float v = b[i % g.O] + (g.sum != nullptr ? g.sum[i] : 0.0f);
      y[i] = std::min(std::max(v, lo), hi);
    }
    return ffi::Error::Success();
  }
  work->x = x_buf.typed_data<float>();
  work->w = w_buf.typed_data<float>();
  work->y = y_buf->typed_data<float>();
  work->bias.assign(g.P * kPanel, 0.0f);
  std::memcpy(work->bias.data(), b_buf.typed_data<float>(), g.O * sizeof(float));
  work->zero.assign(std::max<int64_t>(g.L, 1), 0.0f);
  const int64_t macs = work->pixels * g.K * g.O;
  const int64_t threads = macs < kParallelWork ? 1 : pool.num_threads();
  work->Partition(threads);
  onnx2jax::ParallelFor(pool, threads, work->total,
                        [work](int64_t q0, int64_t q1) { work->Blocks(q0, q1); });
  return ffi::Error::Success();
}

ffi::Error PackedConv(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                      ffi::Result<ffi::AnyBuffer> y, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl, float lo,
                      float hi) {
  return Conv(pool, x, w, b, nullptr, y, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi);
}

ffi::Error PackedConvAdd(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                         ffi::AnyBuffer b, ffi::AnyBuffer sum, ffi::Result<ffi::AnyBuffer> y,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                         int64_t pt, int64_t pl, float lo, float hi) {
  return Conv(pool, x, w, b, &sum, y, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_packed_conv(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_packed_conv_add(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(onnx2jax_packed_conv, PackedConv,
                              onnx2jax::WithConvAttrs(ffi::Ffi::Bind()
                                      .Ctx<ffi::ThreadPool>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(onnx2jax_packed_conv_add, PackedConvAdd,
                              onnx2jax::WithConvAttrs(ffi::Ffi::Bind()
                                      .Ctx<ffi::ThreadPool>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Arg<ffi::AnyBuffer>()
                                      .Ret<ffi::AnyBuffer>()));

#ifdef ONNX2JAX_CALL_LOG
// Copies out and clears parallel.h's call log: durations of the calls (as many as returned),
// start delays of their pool tasks (*starts of them).
extern "C" __attribute__((visibility("default"))) int64_t onnx2jax_call_log(
    int64_t* durations_ns, int64_t* delays_ns, int64_t cap, int64_t* starts) {
  auto& log = onnx2jax::Log();
  const int64_t n = std::min({log.calls.exchange(0), cap, onnx2jax::CallLog::kCap});
  const int64_t m = std::min({log.starts.exchange(0), cap, onnx2jax::CallLog::kCap});
  std::copy(log.duration_ns, log.duration_ns + n, durations_ns);
  std::copy(log.delay_ns, log.delay_ns + m, delays_ns);
  *starts = m;
  return n;
}
#endif
