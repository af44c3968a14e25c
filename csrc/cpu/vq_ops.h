// ATen CPU implementations of the ASTRA VQ ops (no torch/extension.h here:
// only csrc/bindings/cpu_module.cpp includes it). Contracts: the backend
// functions of astra_kernels/reference.py; inputs arrive validated by
// astra_kernels/ops.py, outputs are fresh contiguous tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace astra::cpu {

// x (N, D) fp32/fp16/bf16, any strides; codebooks (G, K, Dg) same dtype, any
// strides -> codes (N, G) int32, sqdist (N, G) fp32.
std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks);

// codes (N, G) int32 in [0, K); codebooks (G, K, Dg) -> (N, G*Dg) in codebooks.dtype.
at::Tensor vq_decode(const at::Tensor& codes, const at::Tensor& codebooks);

// codes (M,) int32 in [0, 2**bits) -> (ceil(M*bits/8),) uint8.
at::Tensor pack_codes(const at::Tensor& codes, int64_t bits);

// packed (ceil(count*bits/8),) uint8 -> (count,) int32.
at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t count);

}  // namespace astra::cpu
