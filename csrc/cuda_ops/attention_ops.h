// ATen implementation of mixed-precision attention on CUDA tensors (no torch/extension.h
// here: only csrc/bindings/cuda_module.cpp includes it), over the torch-free launcher of
// csrc/cuda/astra_cuda.h. Contract: the backend function mixed_precision_attention of
// astra_kernels/reference.py; checks, outputs and streams as in cuda_ops/vq_ops.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace astra::cuda {

// q (B, H, Tq, d) and k_local, v_local (B, Hkv, Tl, d), any strides; remote_codes (B, Tr, G)
// int32 contiguous, values in [0, K) (checked: one sync); k_table,
// v_table (G, K, Hkv*d); k_bias, v_bias (Hkv*d,) or None; formulation "tokens" or "codewords"
// (G = 1); remote_rotation (2, Tr, d/2) float (cos, sin of the remote tokens' rotary angles;
// tokens only, d even) or None -> out (B, H, Tq, d) in q's dtype, lse (B, H, Tq) float32.
std::tuple<at::Tensor, at::Tensor> mixed_precision_attention(
    const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local, const at::Tensor& remote_codes,
    const at::Tensor& k_table, const at::Tensor& v_table, const std::optional<at::Tensor>& k_bias,
    const std::optional<at::Tensor>& v_bias, bool causal, double scale, const std::string& formulation,
    const std::optional<at::Tensor>& remote_rotation);

}  // namespace astra::cuda
