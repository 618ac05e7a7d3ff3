// onnx2jax_inverted_residual(_add): a MobileNet block in one pass over bands of rows.
//
// y[N, OH, OW, O] = clamp(project(clamp(dw(clamp(expand(x) + be)) + bd)) + bp (+ s)), with
// x [N, H, W, C], the expansion a 1x1 convolution C -> E (weights packed [ceil(E / 16), C, 16],
// packed_conv.cc's layout) or any dense convolution (an RGB stem: its window in the e*
// attributes, weights [ceil(E / 16), KH * KW * C, 16]), the depthwise convolution any window on
// E channels ([ceil(E / 16), KH * KW, 16]), the projection a 1x1 convolution E -> O
// ([ceil(O / 16), E, 16]), each with its own clamp (ReLU6 in MobileNetV2), and ``s`` a residual
// connection. An empty expansion weight [0, C, 16] (and bias [0]) means a block without one: x
// feeds the depthwise convolution directly (E = C) and the fusion keeps its output in cache.
//
// Three kernel calls write the expanded tensor (E = 6 C channels at the block's input size) to
// memory and read it back; at MobileNetV2's 112x112 and 56x56 blocks it outgrows the L2 (4.8 MB
// per image), and at batch 8 the L3, and those layers ran at memory speed (NOTES entries 26,
// 28). Here each thread takes a range of output rows of one image and walks it in bands small
// enough that the band's expanded rows and depthwise output stay in L2: it expands the input
// rows the band needs (keeping the rows the previous band shares with it), runs the depthwise
// rows on them, and projects the band's pixels straight into y. Only x, the weights and y
// touch memory. The 1x1 products are dense_tile.h's GEMM tile, the depthwise rows
// depthwise_rows.h's, so the values are those of the three separate kernels.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "conv_attrs.h"
#include "cpu_features.h"
#include "dense_tile.h"
#include "depthwise_rows.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

namespace dense = onnx2jax::dense;
namespace depthwise = onnx2jax::depthwise;
constexpr int64_t kPanel = dense::kPanel;
static_assert(depthwise::kPanel == dense::kPanel, "one panel width for all weights");

// A band's expanded rows and depthwise output together stay under this (the smallest L2 here
// is 512 KiB; the weights and the input rows share it).
constexpr int64_t kBandBytes = 256 << 10;
constexpr int64_t kParallelWork = 1 << 20;  // multiply-adds below which one thread does it all

struct Work {
  dense::Geometry ge, gp;   // the expansion (C -> E) and the projection (E -> O)
  depthwise::Geometry gd;   // the depthwise convolution on E channels
  const float *x, *we, *wd, *bd, *wp;  // we: nullptr without an expansion
  bool pointwise;           // the expansion is 1x1, stride 1, unpadded (else a stem: ConvRows)
  std::vector<float> zero;  // ge.L zeros: a stem's run in the top or bottom padding
  std::vector<float> be, bp;  // biases padded to whole panels (the tile reads whole panels)
  float* y;
  int64_t band;        // output rows per band
  int64_t span;        // input rows a band reads: (band - 1) * SH + (KH - 1) * DH + 1
  int64_t chunk_rows;  // output rows per unit of work (a unit stays within one image)
  int64_t chunks;      // units per image

  void Partition(int64_t threads) {
    // bytes per row of the band's expanded input (none without an expansion) and output
    const int64_t row_e = we == nullptr ? 0 : gd.W * gd.C * 4, row_d = gd.OW * gd.C * 4;
    auto span_of = [&](int64_t b) { return (b - 1) * gd.SH + (gd.KH - 1) * gd.DH + 1; };
    band = 1;
    while (band < gd.OH && span_of(band + 1) * row_e + (band + 1) * row_d <= kBandBytes) ++band;
    span = span_of(band);
    // About kChunksPerThread units per thread, but each unit recomputes the input rows it
    // shares with the unit above it: no thinner than keeps that under an eighth of its rows,
    // unless the batch would then leave a thread without a unit.
    const int64_t shared =
        we == nullptr ? 0 : std::max<int64_t>(0, (gd.KH - 1) * gd.DH + 1 - gd.SH);
    const int64_t min_rows = std::max<int64_t>(1, (8 * shared + gd.SH - 1) / gd.SH);
    const int64_t wanted = threads > 1 ? onnx2jax::kChunksPerThread * threads : 1;
    const int64_t per_image = (wanted + gd.N - 1) / gd.N;
    const int64_t least = (threads + gd.N - 1) / gd.N;  // units per image every thread needs
    chunk_rows = std::max((gd.OH + per_image - 1) / per_image, min_rows);
    chunk_rows = std::min({chunk_rows, (gd.OH + least - 1) / least, gd.OH});
    chunks = (gd.OH + chunk_rows - 1) / chunk_rows;
  }

  // Output rows [oh0, oh1) of image n, band by band.
  void Unit(int64_t n, int64_t oh0, int64_t oh1, std::vector<float>& e,
            std::vector<float>& d, std::vector<const float*>& rows) const {
    thread_local std::vector<const float*> ptrs;  // a stem's run pointers and edge copies
    thread_local std::vector<float> scratch;
    if (we == nullptr) return DepthwiseProject(n, oh0, oh1, d, rows);
    const int64_t E = gd.C, row_e = gd.W * E;  // floats per expanded row
    e.resize(span * row_e);
    d.resize(band * gd.OW * E);
    rows.resize(gd.KH);
    int64_t e0 = 0, e1 = 0;  // input rows [e0, e1) are expanded in e
    for (int64_t a = oh0; a < oh1; a += band) {
      const int64_t b = std::min(oh1, a + band);
      const int64_t lo = std::max<int64_t>(0, a * gd.SH - gd.PT);
      const int64_t hi = std::min(gd.H, (b - 1) * gd.SH - gd.PT + (gd.KH - 1) * gd.DH + 1);
      int64_t from = lo;  // the first input row to expand
      if (lo >= e0 && lo < e1) {  // rows the previous band expanded: keep them
        std::memmove(e.data(), e.data() + (lo - e0) * row_e, (e1 - lo) * row_e * sizeof(float));
        from = e1;
      }
      if (hi > from && pointwise)
        dense::Gemm(ge, x + (n * gd.H + from) * gd.W * ge.K, ge.K, (hi - from) * gd.W, we,
                    be.data(), e.data() + (from - lo) * row_e);
      else if (hi > from)
        dense::ConvRows(ge, x, n, from, hi, we, be.data(), e.data() + (from - lo) * row_e,
                        zero.data(), ptrs, scratch);
      e0 = lo, e1 = std::max(hi, lo);
      for (int64_t oh = a; oh < b; ++oh) {
        for (int64_t i = 0; i < gd.KH; ++i) {
          const int64_t ih = oh * gd.SH - gd.PT + i * gd.DH;
          rows[i] = ih < 0 || ih >= gd.H ? nullptr : e.data() + (ih - e0) * row_e;
        }
        depthwise::Row(gd, rows.data(), nullptr, 0, wd, bd, d.data() + (oh - a) * gd.OW * E);
      }
      dense::Gemm(gp, d.data(), E, (b - a) * gd.OW, wp, bp.data(),
                  y + ((n * gd.OH + a) * gd.OW) * gp.O);
    }
  }

  // Without an expansion: the depthwise rows read x, band by band into d, then projected.
  void DepthwiseProject(int64_t n, int64_t oh0, int64_t oh1, std::vector<float>& d,
                        std::vector<const float*>& rows) const {
    const int64_t E = gd.C;
    d.resize(band * gd.OW * E);
    rows.resize(gd.KH);
    for (int64_t a = oh0; a < oh1; a += band) {
      const int64_t b = std::min(oh1, a + band);
      for (int64_t oh = a; oh < b; ++oh) {
        const float* ahead[2];  // x may come from memory: the next rows are prefetched
        const int64_t n_ahead = depthwise::InputRows(gd, x, n, oh, rows.data(), ahead);
        depthwise::Row(gd, rows.data(), ahead, n_ahead, wd, bd, d.data() + (oh - a) * gd.OW * E);
      }
      dense::Gemm(gp, d.data(), E, (b - a) * gd.OW, wp, bp.data(),
                  y + ((n * gd.OH + a) * gd.OW) * gp.O);
    }
  }

  void Units(int64_t q0, int64_t q1) const {
    thread_local std::vector<float> e, d;
    thread_local std::vector<const float*> rows;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / chunks, oh0 = q % chunks * chunk_rows;
      Unit(n, oh0, std::min(gd.OH, oh0 + chunk_rows), e, d, rows);
    }
  }
};

// Whether w is a float32 weight packed as [ceil(cols / 16), k, 16].
bool Packed(ffi::AnyBuffer w, int64_t k, int64_t cols) {
  const auto d = w.dimensions();
  return w.element_type() == ffi::F32 && d.size() == 3 && d[0] == (cols + kPanel - 1) / kPanel &&
         d[1] == k && d[2] == kPanel;
}

bool Vector(ffi::AnyBuffer b, int64_t n) {
  return b.element_type() == ffi::F32 && b.dimensions().size() == 1 && b.dimensions()[0] == n;
}

std::vector<float> Padded(ffi::AnyBuffer b, int64_t n) {
  std::vector<float> out((n + kPanel - 1) / kPanel * kPanel, 0.0f);
  if (n > 0) std::memcpy(out.data(), b.typed_data<float>(), n * sizeof(float));
  return out;
}

// The expansion's window: kernel, strides, dilations, top/left pads, output rows and columns.
struct Expansion {
  int64_t kh, kw, sh, sw, dh, dw, pt, pl, oh, ow;
};

ffi::Error Block(ffi::ThreadPool& pool, ffi::AnyBuffer x, ffi::AnyBuffer we, ffi::AnyBuffer be,
                 ffi::AnyBuffer wd, ffi::AnyBuffer bd, ffi::AnyBuffer wp, ffi::AnyBuffer bp,
                 const ffi::AnyBuffer* sum, ffi::Result<ffi::AnyBuffer> y, int64_t kh,
                 int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt,
                 int64_t pl, float lo, float hi, float elo, float ehi, float dlo, float dhi,
                 Expansion ex) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (x.element_type() != ffi::F32 || y->element_type() != ffi::F32 || xd.size() != 4 ||
      yd.size() != 4 || bd.dimensions().size() != 1)
    return ffi::Error::InvalidArgument(
        "onnx2jax_inverted_residual: expected float32 x [N, H, W, C], y [N, OH, OW, O]");
  const int64_t N = xd[0], H0 = xd[1], W0 = xd[2], C = xd[3], E = bd.dimensions()[0];
  const int64_t OH = yd[1], OW = yd[2], O = yd[3];
  const bool expand = we.dimensions().size() != 3 || we.dimensions()[0] != 0;
  // The depthwise convolution's input: the expansion's output, or x.
  const int64_t H = expand ? ex.oh : H0, W = expand ? ex.ow : W0;
  const bool window_ok = ex.kh >= 1 && ex.kw >= 1 && ex.sh >= 1 && ex.sw >= 1 && ex.dh >= 1 &&
                         ex.dw >= 1 && ex.pt >= 0 && ex.pl >= 0 && H >= 1 && W >= 1;
  if (yd[0] != N || !window_ok ||
      !(expand ? Packed(we, ex.kh * ex.kw * C, E) && Vector(be, E) : E == C && Vector(be, 0)) ||
      !Packed(wd, kh * kw, E) || !Vector(bd, E) || !Packed(wp, E, O) || !Vector(bp, O) ||
      kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || pt < 0 || pl < 0 || C < 1 ||
      O < 1)
    return ffi::Error::InvalidArgument(
        "onnx2jax_inverted_residual: x, the packed weights [P, K, 16] (or an empty expansion "
        "[0, C, 16]), biases, the windows and y do not agree");
  if (sum != nullptr && (sum->element_type() != ffi::F32 ||
                         !std::equal(yd.begin(), yd.end(), sum->dimensions().begin()) ||
                         sum->dimensions().size() != 4))
    return ffi::Error::InvalidArgument("onnx2jax_inverted_residual_add: s must be float32 like y");
  if (N * OH * OW == 0) return ffi::Error::Success();
  Work work_;
  Work* work = &work_;
  // ConvRows' tile (2-panel on AVX-512); Gemm picks its own
  const int64_t T = dense::TileFor(onnx2jax::HasAvx512() ? 2 : 1);
  work->ge = dense::Geometry{};
  auto& ge = work->ge;
  ge.N = N, ge.H = H0, ge.W = W0, ge.C = C, ge.OH = H, ge.OW = W, ge.O = E;
  ge.KH = ex.kh, ge.KW = ex.kw, ge.SH = ex.sh, ge.SW = ex.sw, ge.DH = ex.dh, ge.DW = ex.dw;
  ge.PT = ex.pt, ge.PL = ex.pl, ge.P = (E + kPanel - 1) / kPanel, ge.K = ex.kh * ex.kw * C;
  ge.S = ex.dw == 1 ? ex.kh : ex.kh * ex.kw;  // with dilation 1 a kernel row is one run
  ge.L = ge.K / ge.S, ge.T = T, ge.lo = elo, ge.hi = ehi;
  work->pointwise = ex.kh == 1 && ex.kw == 1 && ex.sh == 1 && ex.sw == 1 && ex.pt == 0 &&
                    ex.pl == 0 && H == H0 && W == W0;
  work->zero.assign(std::max<int64_t>(ge.L, 1), 0.0f);
  work->gp = dense::Geometry{};
  work->gp.K = work->gp.L = E, work->gp.O = O, work->gp.P = (O + kPanel - 1) / kPanel;
  work->gp.S = 1, work->gp.T = T, work->gp.lo = lo, work->gp.hi = hi;
  work->gp.y0 = y->typed_data<float>();
  work->gp.sum = sum == nullptr ? nullptr : sum->typed_data<float>();
  work->gd = depthwise::Geometry{N, H, W, E, OH, OW, kh, kw, sh, sw, dh, dw, pt, pl,
                                 (E + kPanel - 1) / kPanel, dlo, dhi};
  work->x = x.typed_data<float>();
  work->we = expand ? we.typed_data<float>() : nullptr, work->wd = wd.typed_data<float>();
  work->bd = bd.typed_data<float>(), work->wp = wp.typed_data<float>();
  work->be = Padded(be, expand ? E : 0), work->bp = Padded(bp, O);
  work->y = y->typed_data<float>();
  const int64_t macs = N * ((expand ? H * W * ge.K * E : 0) + OH * OW * E * (kh * kw + O));
  const int64_t threads = macs < kParallelWork ? 1 : pool.num_threads();
  work->Partition(threads);
  onnx2jax::ParallelFor(pool, threads, N * work->chunks,
                        [work](int64_t q0, int64_t q1) { work->Units(q0, q1); });
  return ffi::Error::Success();
}

ffi::Error InvertedResidual(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer we,
                            ffi::AnyBuffer be, ffi::AnyBuffer wd, ffi::AnyBuffer bd,
                            ffi::AnyBuffer wp, ffi::AnyBuffer bp, ffi::Result<ffi::AnyBuffer> y,
                            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh,
                            int64_t dw, int64_t pt, int64_t pl, float lo, float hi, float elo,
                            float ehi, float dlo, float dhi, int64_t ekh, int64_t ekw,
                            int64_t esh, int64_t esw, int64_t edh, int64_t edw, int64_t ept,
                            int64_t epl, int64_t eoh, int64_t eow) {
  return Block(pool, x, we, be, wd, bd, wp, bp, nullptr, y, kh, kw, sh, sw, dh, dw, pt, pl, lo,
               hi, elo, ehi, dlo, dhi, {ekh, ekw, esh, esw, edh, edw, ept, epl, eoh, eow});
}

ffi::Error InvertedResidualAdd(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer we,
                               ffi::AnyBuffer be, ffi::AnyBuffer wd, ffi::AnyBuffer bd,
                               ffi::AnyBuffer wp, ffi::AnyBuffer bp, ffi::AnyBuffer s,
                               ffi::Result<ffi::AnyBuffer> y, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl,
                               float lo, float hi, float elo, float ehi, float dlo, float dhi,
                               int64_t ekh, int64_t ekw, int64_t esh, int64_t esw, int64_t edh,
                               int64_t edw, int64_t ept, int64_t epl, int64_t eoh, int64_t eow) {
  return Block(pool, x, we, be, wd, bd, wp, bp, &s, y, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi,
               elo, ehi, dlo, dhi, {ekh, ekw, esh, esw, edh, edw, ept, epl, eoh, eow});
}

// The depthwise window and the projection's clamp (as conv_attrs.h names them), the
// expansion's and the depthwise convolution's clamps, then the expansion's window and output
// size (a 1x1 unpadded window of the input's size for a pointwise expansion).
template <typename Binding>
auto WithBlockAttrs(Binding&& binding) {
  return onnx2jax::WithConvAttrs(std::move(binding))
      .template Attr<float>("elo")
      .template Attr<float>("ehi")
      .template Attr<float>("dlo")
      .template Attr<float>("dhi")
      .template Attr<int64_t>("ekh")
      .template Attr<int64_t>("ekw")
      .template Attr<int64_t>("esh")
      .template Attr<int64_t>("esw")
      .template Attr<int64_t>("edh")
      .template Attr<int64_t>("edw")
      .template Attr<int64_t>("ept")
      .template Attr<int64_t>("epl")
      .template Attr<int64_t>("eoh")
      .template Attr<int64_t>("eow");
}

template <typename Binding>
auto WeightArgs(Binding binding) {  // x, we, be, wd, bd, wp, bp
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_inverted_residual(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* onnx2jax_inverted_residual_add(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    onnx2jax_inverted_residual, InvertedResidual,
    WithBlockAttrs(WeightArgs(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()).Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(onnx2jax_inverted_residual_add, InvertedResidualAdd,
                              WithBlockAttrs(WeightArgs(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>())
                                                 .Arg<ffi::AnyBuffer>()
                                                 .Ret<ffi::AnyBuffer>()));
