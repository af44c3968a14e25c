// mixed_precision_attention on CUDA tensors: checks, fresh outputs and scratch memory, the
// astra_mp_attention problem and its launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "cuda/astra_cuda.h"
#include "cuda_ops/attention_ops.h"
#include "cuda_ops/tensor_checks.h"
#include "ops_common/input_checks.h"

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
    const std::optional<at::Tensor>& v_bias, bool causal, double scale, const std::string& formulation,
    const std::optional<at::Tensor>& remote_rotation) {
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

  for (const auto& [bias, name] : {std::make_pair(&k_bias, "k_bias"), std::make_pair(&v_bias, "v_bias")}) {
    if (bias->has_value()) check_same_float_input(q, bias->value(), name);
  }
  // shapes, biases, formulation, scale, every code indexing the tables (one sync for their range) and the
  // rotation's shape, dtype class and device
  const checks::AttentionSizes sizes = checks::attention_op(q, k_local, v_local, remote_codes, k_table, v_table,
                                                            k_bias, v_bias, scale, formulation, remote_rotation);
  const int64_t b = sizes.batch;
  const int64_t h = sizes.heads;
  const int64_t tq = sizes.queries;
  const int64_t d = sizes.head_dim;
  const int64_t hkv = sizes.kv_heads;
  const int64_t tl = sizes.local;
  const int64_t tr = sizes.remote;
  const int64_t g = sizes.groups;
  const int64_t k = sizes.codebook_size;
  TORCH_CHECK(d <= kMaxHeadDim, "head dim d=", d, " is outside 1..", kMaxHeadDim);
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
  // the kernels read the angles in fp32, whatever the dtype of q
  const at::Tensor rot = remote_rotation.has_value() ? remote_rotation->to(at::kFloat).contiguous() : at::Tensor();

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
  problem.rotation = rot.defined() ? rot.data_ptr<float>() : nullptr;
  problem.out = out.data_ptr();
  problem.lse = lse.data_ptr<float>();
  const auto workspace_bytes = static_cast<int64_t>(astra_mp_attention_workspace_bytes(&problem));
  at::Tensor workspace = at::empty({workspace_bytes}, q.options().dtype(at::kByte));
  check_launch(astra_mp_attention(&problem, workspace_bytes > 0 ? workspace.data_ptr() : nullptr, current_stream(q)),
               "mixed_precision_attention");
  return {out, lse};
}

}  // namespace astra::cuda
