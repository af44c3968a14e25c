// ATen CPU implementations of the ASTRA VQ ops (no torch/extension.h here:
// only csrc/bindings/cpu_module.cpp includes it). Contracts: the backend
// functions of astra_kernels/reference.py; inputs arrive validated by
// astra_kernels/ops.py and are checked again here (shapes, codes in range:
// csrc/ops_common/input_checks.h, the Python messages, as ValueError),
// outputs are fresh contiguous tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <tuple>

#include "core/vq_encode.h"

namespace astra::cpu {

// x (N, D) fp32/fp16/bf16, any strides; codebooks (G, K, Dg) same dtype, any
// strides -> codes (N, G) int32, sqdist (N, G) fp32.
std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks);

// As vq_encode, with each code chosen by its int8-estimated score
// (reference.vq_encode_int8); sqdist is the exact distance to that codeword.
std::tuple<at::Tensor, at::Tensor> vq_encode_int8(const at::Tensor& x, const at::Tensor& codebooks);

// vq_encode (exact) or vq_encode_int8 with the codebooks prepared once: an fp32
// copy of them (`copy`; else the caller keeps them alive and unchanged) and
// their packed panels, reused by every encode(x) call.
class VqEncoder {
 public:
  VqEncoder(const at::Tensor& codebooks, bool exact, bool copy = true);
  ~VqEncoder();
  // x (N, G*Dg) fp32/fp16/bf16, any row stride -> codes (N, G) int32, sqdist (N, G) fp32.
  std::tuple<at::Tensor, at::Tensor> encode(const at::Tensor& x) const;

 private:
  const char* op_;
  at::Tensor codebooks_;  // (G, K, Dg) fp32 contiguous
  std::unique_ptr<core::EncodePlan> plan_;
};

// codes (N, G) int32 in [0, K); codebooks (G, K, Dg) -> (N, G*Dg) in codebooks.dtype.
at::Tensor vq_decode(const at::Tensor& codes, const at::Tensor& codebooks);

// codes (M,) int32 in [0, 2**bits) -> (ceil(M*bits/8),) uint8.
at::Tensor pack_codes(const at::Tensor& codes, int64_t bits);

// packed (ceil(count*bits/8),) uint8 -> (count,) int32.
at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t count);

}  // namespace astra::cpu
