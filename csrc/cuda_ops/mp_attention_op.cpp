// mixed_precision_attention on CUDA tensors: checks, fresh outputs and scratch memory, the
// astra_mp_attention problem and its launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "cuda/astra_cuda.h"
#include "cuda_ops/attention_ops.h"
#include "cuda_ops/tensor_checks.h"

namespace astra::cuda {

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxAttentionLength = int64_t{1} << 30;  // Tq*H/Hkv, Tl, Tr, K

void check_same_float_input(const at::Tensor& q, const at::Tensor& t, const char* name) {
  check_cuda_tensor(t, name);
  check_same_device(q, "q", t, name);
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " is ", t.scalar_type(), " but q is ", q.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mixed_precision_attention(
    const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local, const at::Tensor& remote_codes,
    const at::Tensor& k_table, const at::Tensor& v_table, const std::optional<at::Tensor>& k_bias,
    const std::optional<at::Tensor>& v_bias, bool causal, double scale, const std::string& formulation) {
  check_cuda_tensor(q, "q");
  TORCH_CHECK(q.scalar_type() != at::kDouble,
              "the CUDA mixed_precision_attention runs float32, float16 or bfloat16 inputs, got float64; "
              "use the 'reference' or 'cpu' backend for float64");
  const astra_dtype dtype = to_astra_dtype(q, "q");
  check_same_float_input(q, k_local, "k_local");
  check_same_float_input(q, v_local, "v_local");
  check_same_float_input(q, k_table, "k_table");
  check_same_float_input(q, v_table, "v_table");
  check_cuda_tensor(remote_codes, "remote_codes");
  check_same_device(q, "q", remote_codes, "remote_codes");
  check_int32_contiguous(remote_codes, "remote_codes");

  TORCH_CHECK(q.dim() == 4, "q must have shape (B, H, Tq, d), got ", q.sizes());
  TORCH_CHECK(k_local.dim() == 4 && v_local.sizes() == k_local.sizes(),
              "k_local and v_local must both have shape (B, Hkv, Tl, d), got ", k_local.sizes(), " and ",
              v_local.sizes());
  const int64_t b = q.size(0);
  const int64_t h = q.size(1);
  const int64_t tq = q.size(2);
  const int64_t d = q.size(3);
  const int64_t hkv = k_local.size(1);
  const int64_t tl = k_local.size(2);
  TORCH_CHECK(k_local.size(0) == b && k_local.size(3) == d, "k_local ", k_local.sizes(), " does not match q ",
              q.sizes(), " in batch or head dim");
  TORCH_CHECK(hkv >= 1 && h % hkv == 0, "query heads H=", h, " must be a multiple of key/value heads Hkv=", hkv);
  TORCH_CHECK(d >= 1 && d <= kMaxHeadDim, "head dim d=", d, " is outside 1..", kMaxHeadDim);
  TORCH_CHECK(remote_codes.dim() == 3 && remote_codes.size(0) == b, "remote_codes must have shape (B=", b,
              ", Tr, G), got ", remote_codes.sizes());
  const int64_t tr = remote_codes.size(1);
  const int64_t g = remote_codes.size(2);
  TORCH_CHECK(k_table.dim() == 3 && v_table.sizes() == k_table.sizes(),
              "k_table and v_table must both have shape (G, K, Hkv*d), got ", k_table.sizes(), " and ",
              v_table.sizes());
  const int64_t k = k_table.size(1);
  TORCH_CHECK(k_table.size(0) == g, "remote_codes have G=", g, " groups but the tables have ", k_table.size(0));
  TORCH_CHECK(k_table.size(2) == hkv * d, "tables have width ", k_table.size(2), " but Hkv*d = ", hkv * d);
  TORCH_CHECK(g >= 1 && k >= 1, "the tables are empty: G=", g, ", K=", k);
  for (const auto& [bias, name] : {std::make_pair(&k_bias, "k_bias"), std::make_pair(&v_bias, "v_bias")}) {
    if (!bias->has_value()) continue;
    check_same_float_input(q, bias->value(), name);
    TORCH_CHECK(bias->value().dim() == 1 && bias->value().size(0) == hkv * d, name, " must have shape (", hkv * d,
                ",), got ", bias->value().sizes());
  }
  TORCH_CHECK(formulation == "tokens" || formulation == "codewords", "formulation must be 'tokens' or 'codewords', got '",
              formulation, "'");
  TORCH_CHECK(formulation == "tokens" || g == 1, "the codewords formulation needs G = 1 (one codebook), got G=", g);
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  TORCH_CHECK(tq * (h / hkv) <= kMaxAttentionLength && tl <= kMaxAttentionLength && tr <= kMaxAttentionLength &&
                  k <= kMaxAttentionLength,
              "sizes beyond the kernel's limits (Tq*H/Hkv, Tl, Tr, K <= 2^30)");

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({b, h, tq, d}, q.options());
  at::Tensor lse = at::empty({b, h, tq}, q.options().dtype(at::kFloat));
  if (b == 0 || tq == 0) return {out, lse};
  const at::Tensor kt = k_table.contiguous();
  const at::Tensor vt = v_table.contiguous();
  const at::Tensor kb = k_bias.has_value() ? k_bias->contiguous() : at::Tensor();
  const at::Tensor vb = v_bias.has_value() ? v_bias->contiguous() : at::Tensor();

  astra_mp_attention_problem problem{};
  problem.dtype = dtype;
  problem.batch = b;
  problem.heads = h;
  problem.kv_heads = hkv;
  problem.queries = tq;
  problem.local_keys = tl;
  problem.remote_tokens = tr;
  problem.groups = g;
  problem.codebook_size = k;
  problem.head_dim = d;
  problem.q = q.data_ptr();
  problem.k_local = k_local.data_ptr();
  problem.v_local = v_local.data_ptr();
  for (int i = 0; i < 4; ++i) {
    problem.q_strides[i] = q.stride(i);
    problem.k_strides[i] = k_local.stride(i);
    problem.v_strides[i] = v_local.stride(i);
  }
  problem.remote_codes = remote_codes.data_ptr<int32_t>();
  problem.k_table = kt.data_ptr();
  problem.v_table = vt.data_ptr();
  problem.k_bias = kb.defined() ? kb.data_ptr() : nullptr;
  problem.v_bias = vb.defined() ? vb.data_ptr() : nullptr;
  problem.causal = causal ? 1 : 0;
  problem.scale = static_cast<float>(scale);
  problem.formulation = formulation == "codewords" ? ASTRA_ATTENTION_CODEWORDS : ASTRA_ATTENTION_TOKENS;
  problem.out = out.data_ptr();
  problem.lse = lse.data_ptr<float>();
  const auto workspace_bytes = static_cast<int64_t>(astra_mp_attention_workspace_bytes(&problem));
  at::Tensor workspace = at::empty({workspace_bytes}, q.options().dtype(at::kByte));
  check_launch(astra_mp_attention(&problem, workspace_bytes > 0 ? workspace.data_ptr() : nullptr, current_stream(q)),
               "mixed_precision_attention");
  return {out, lse};
}

}  // namespace astra::cuda
