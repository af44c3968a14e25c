// ATen implementations of the ASTRA VQ ops on CUDA tensors (no torch/extension.h here:
// only csrc/bindings/cuda_module.cpp includes it), over the torch-free launchers of
// csrc/cuda/astra_cuda.h. Contracts: the backend functions of astra_kernels/reference.py.
// Inputs normally arrive validated by astra_kernels/ops.py, but these functions can be
// called directly, so each checks devices, dtypes, ranks and sizes, and every code that
// indexes memory (one sync; messages of csrc/ops_common/input_checks.h); outputs are fresh
// tensors; kernels run on the current stream of the inputs' device; nothing synchronizes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace astra::cuda {

// x (N, G*Dg), any strides; codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) float32.
std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks);

// codes (N, G) int32 in [0, K), contiguous; codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype.
at::Tensor vq_decode(const at::Tensor& codes, const at::Tensor& codebooks);

// codes (M,) int32 in [0, 2**bits), contiguous -> (ceil(M*bits/8),) uint8.
at::Tensor pack_codes(const at::Tensor& codes, int64_t bits);

// packed (ceil(count*bits/8),) uint8, contiguous -> (count,) int32.
at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t count);

}  // namespace astra::cuda
