// The attributes both convolution kernels take (onnx2jax/_kernels/conv.py passes them).
#pragma once

#include <utility>

#include "xla/ffi/api/ffi.h"

namespace onnx2jax {

// kh, kw: kernel size; sh, sw: strides; dh, dw: dilations; pt, pl: top and left padding (the
// bottom and right follow from the output's shape); lo, hi: the epilogue's clamp.
template <typename Binding>
auto WithConvAttrs(Binding&& binding) {
  // Binding::Attr is &&-qualified: each call consumes the binding it extends (taken by
  // reference: Binding's move constructor is private, so a caller can pass its own on).
  return std::move(binding).template Attr<int64_t>("kh")
      .template Attr<int64_t>("kw")
      .template Attr<int64_t>("sh")
      .template Attr<int64_t>("sw")
      .template Attr<int64_t>("dh")
      .template Attr<int64_t>("dw")
      .template Attr<int64_t>("pt")
      .template Attr<int64_t>("pl")
      .template Attr<float>("lo")
      .template Attr<float>("hi");
}

}  // namespace onnx2jax
