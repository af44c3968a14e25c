// ATen CPU implementation of mixed-precision attention (no torch/extension.h
// here: only csrc/bindings/cpu_module.cpp includes it). Contract: the backend
// function mixed_precision_attention of astra_kernels/reference.py; inputs
// arrive validated by astra_kernels/ops.py and are checked again here (shapes,
// codes in [0, K), scale: csrc/ops_common/input_checks.h, the Python messages,
// as ValueError), outputs are fresh tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace astra::cpu {

// q (B, H, Tq, d); k_local, v_local (B, Hkv, Tl, d), any strides; remote_codes
// (B, Tr, G) int32; k_table, v_table (G, K, Hkv*d); biases (Hkv*d,) or None;
// all floating inputs share q's dtype (fp64, fp32, fp16 or bf16; fp16/bf16 are
// computed in fp32). formulation "tokens" or "codewords" (G = 1).
// -> out (B, H, Tq, d) in q.dtype, lse (B, H, Tq) fp32.
std::tuple<at::Tensor, at::Tensor> mixed_precision_attention(
    const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local,
    const at::Tensor& remote_codes, const at::Tensor& k_table, const at::Tensor& v_table,
    const std::optional<at::Tensor>& k_bias, const std::optional<at::Tensor>& v_bias, bool causal,
    double scale, const std::string& formulation, const std::optional<at::Tensor>& remote_rotation);

// Attention of q (B, H, Tq, d) over k, v (B, Hkv, Tk, d) continuing from a
// partial over other, earlier keys: prior_out (B, H, Tq, d) in q.dtype,
// prior_lse (B, H, Tq) fp32 -> (out over both key sets, stored token-major and
// returned as its (B, H, Tq, d) view; lse (B, H, Tq) fp32). One pass, no merge.
std::tuple<at::Tensor, at::Tensor> attention_after(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const at::Tensor& prior_out, const at::Tensor& prior_lse,
                                                   bool causal, double scale);

// out_a, out_b (B, H, T, d) of one dtype (fp64, fp32, fp16 or bf16; fp16/bf16
// computed in fp32), unit stride along d; lse_a, lse_b (B, H, T) fp32, any
// strides -> out (B, H, T, d) in out_a.dtype, stored token-major ((B, T, H, d)
// contiguous, returned as its (B, H, T, d) view), lse (B, H, T) fp32.
std::tuple<at::Tensor, at::Tensor> merge_attention(const at::Tensor& out_a, const at::Tensor& lse_a,
                                                   const at::Tensor& out_b, const at::Tensor& lse_b);

}  // namespace astra::cpu
