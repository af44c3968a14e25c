// Checks of the registered ops' arguments shared by the ATen glue of both extensions
// (csrc/cpu, csrc/cuda_ops): each raises the ValueError (TORCH_CHECK_VALUE) of
// astra_kernels/_checks.py for the same problem, word for word, so that every backend reports a
// bad input alike and no code indexes memory outside its table.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace astra::checks {

// Python's repr of a shape: (), (3,), (2, 3).
std::string shape_repr(at::IntArrayRef sizes);

// codebooks (G, K, Dg) within the supported ranges (_checks.codebook_shape).
void codebook_shape(const at::Tensor& codebooks);
// x (N, D) with D = G*Dg of codebooks (G, K, Dg) (_checks.encode_op).
void encode_op(const at::Tensor& x, const at::Tensor& codebooks);
// codes (N, G) in [0, K) for codebooks (G, K, Dg) (_checks.decode_op).
void decode_op(const at::Tensor& codes, const at::Tensor& codebooks);
// codes (M,) in [0, 2**bits) (_checks.pack_op).
void pack_op(const at::Tensor& codes, int64_t bits);
// packed (ceil(count*bits/8),) (_checks.unpack_op).
void unpack_op(const at::Tensor& packed, int64_t bits, int64_t count);
void bits(int64_t bits);

// Every value of the integer tensor `codes` in [0, upper) (_checks.codes_in_range): reads its
// min and max (one device sync for CUDA tensors).
void codes_in_range(const at::Tensor& codes, int64_t upper, const char* name, const std::string& what);

// A positive finite score scale (_checks.attention_scale).
void attention_scale(double scale);

struct AttentionSizes {
  int64_t batch, heads, kv_heads, queries, head_dim, local, remote, groups, codebook_size;
};

// q (B, H, Tq, d), k_local, v_local (B, Hkv, Tl, d), remote_codes (B, Tr, G), tables (G, K, Hkv*d),
// biases (Hkv*d,) or none, then the formulation, its G, the scale, the codes' range and the remote
// rotation (_checks.attention_op, in its order; not dtypes or devices of the other inputs).
AttentionSizes attention_op(const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local,
                            const at::Tensor& remote_codes, const at::Tensor& k_table, const at::Tensor& v_table,
                            const std::optional<at::Tensor>& k_bias, const std::optional<at::Tensor>& v_bias,
                            double scale, const std::string& formulation,
                            const std::optional<at::Tensor>& remote_rotation);

// remote_rotation (2, Tr, d/2) float on q's device (cos, sin), d even, tokens formulation
// (_checks.rotation_input).
void rotation_input(const at::Tensor& rotation, const at::Tensor& q, int64_t remote, int64_t head_dim,
                    const std::string& formulation);

// q (B, H, Tq, d), k, v (B, Hkv, Tk, d), prior_out (B, H, Tq, d) in q's dtype, prior_lse (B, H, Tq)
// float32, and the scale (_checks.attention_after_inputs, then the scale).
void attention_after_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& prior_out,
                        const at::Tensor& prior_lse, double scale);

}  // namespace astra::checks
