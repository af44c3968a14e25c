// mixed_precision_attention on CPU tensors: dtype/layout normalisation, the
// AttentionPlan of the torch-free core, its GEMMs backed by ATen (MKL), and
// at::parallel_for over (batch row, kv head, query block) tasks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <string>

#include "core/attention_kernels.h"
#include "core/cpu_features.h"
#include "core/mp_attention.h"
#include "cpu/attention_ops.h"
#include "ops_common/input_checks.h"

namespace astra::cpu {

namespace {

// The core's GEMMs over caller-owned memory. Inside at::parallel_for ATen/MKL
// run them single-threaded on the calling thread.
template <class T>
at::Tensor matrix_view(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, options);
}

template <class T>
void gemm_abt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
              T* c, int64_t ldc) {
  at::Tensor cv = matrix_view(c, m, n, ldc);
  at::mm_out(cv, matrix_view(a, m, k, lda), matrix_view(b, n, k, ldb).t());
}

template <class T>
void gemm_ab_add(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 T* c, int64_t ldc) {
  at::Tensor cv = matrix_view(c, m, n, ldc);
  at::addmm_out(cv, cv, matrix_view(a, m, k, lda), matrix_view(b, k, n, ldb));
}

// ASTRA_CPU_GEMM=aten runs the attention's GEMMs through ATen (MKL) instead of the core's register-tiled
// ones (read once).
bool core_gemms() {
  static const bool core = [] {
    const char* choice = std::getenv("ASTRA_CPU_GEMM");
    return choice == nullptr || std::string(choice) != "aten";
  }();
  return core;
}

// In the compute dtype with a unit stride along d (any other strides), copying only if needed.
at::Tensor as_compute_rows(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype && (t.size(-1) <= 1 || t.stride(-1) == 1)) return t;
  return t.to(dtype).contiguous();
}

core::HeadStrides head_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}

template <class T>
const core::AttentionKernels<T>& row_kernels();

template <>
const core::AttentionKernels<float>& row_kernels<float>() {
  return core::attention_kernels_f32(core::active_simd());
}

template <>
const core::AttentionKernels<double>& row_kernels<double>() {
  return core::attention_kernels_f64();
}

// Tensors already in T (codes int32), contiguous except q/k/v_local (unit stride along d).
template <class T>
void run_attention(const core::AttentionShape& shape, const at::Tensor& q,
                   const at::Tensor& k_local, const at::Tensor& v_local, const at::Tensor& codes,
                   const at::Tensor& k_table, const at::Tensor& v_table, const at::Tensor& k_bias,
                   const at::Tensor& v_bias, bool causal, double scale,
                   core::RemoteFormulation formulation, const at::Tensor& rotation, at::Tensor& out, at::Tensor& lse,
                   const at::Tensor& prior_out = at::Tensor(), const at::Tensor& prior_lse = at::Tensor()) {
  core::AttentionInputs<T> inputs{q.data_ptr<T>(),
                                        head_strides(q),
                                        k_local.data_ptr<T>(),
                                        head_strides(k_local),
                                        v_local.data_ptr<T>(),
                                        head_strides(v_local),
                                        codes.data_ptr<int32_t>(),
                                        k_table.data_ptr<T>(),
                                        v_table.data_ptr<T>(),
                                        k_bias.defined() ? k_bias.data_ptr<T>() : nullptr,
                                        v_bias.defined() ? v_bias.data_ptr<T>() : nullptr,
                                        causal,
                                        scale,
                                        formulation};
  if (rotation.defined()) inputs.rotation = rotation.data_ptr<T>();
  if (prior_out.defined()) {
    inputs.prior_out = prior_out.data_ptr<T>();
    inputs.prior_strides = head_strides(prior_out);
    inputs.prior_lse = prior_lse.data_ptr<float>();
    inputs.prior_lse_strides = head_strides(prior_lse);
  }
  // with a prior the output is stored token-major (B, Tq, H, d): the merged result feeds the output projection
  const core::AttentionOutputs<T> outputs{out.data_ptr<T>(), lse.data_ptr<float>(), prior_out.defined()};
  core::AttentionPlan<T> plan(shape, inputs, row_kernels<T>(), at::get_num_threads());
  at::parallel_for(0, plan.prepare_tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) plan.prepare(b);
  });
  const core::AttentionKernels<T>& kernels = row_kernels<T>();
  const core::AttentionGemms<T> gemms = kernels.gemm_abt != nullptr && core_gemms()
                                            ? core::AttentionGemms<T>{kernels.gemm_abt, kernels.gemm_ab_add}
                                            : core::AttentionGemms<T>{&gemm_abt<T>, &gemm_ab_add<T>};
  at::parallel_for(0, plan.tasks(), 1,
                   [&](int64_t begin, int64_t end) { plan.run(begin, end, gemms, outputs); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mixed_precision_attention(
    const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local,
    const at::Tensor& remote_codes, const at::Tensor& k_table, const at::Tensor& v_table,
    const std::optional<at::Tensor>& k_bias, const std::optional<at::Tensor>& v_bias, bool causal,
    double scale, const std::string& formulation, const std::optional<at::Tensor>& remote_rotation) {
  TORCH_CHECK(q.device().is_cpu() && k_local.device().is_cpu() && v_local.device().is_cpu() &&
                  remote_codes.device().is_cpu() && k_table.device().is_cpu() &&
                  v_table.device().is_cpu(),
              "astra CPU mixed_precision_attention: tensors must be on the CPU");
  // shapes, biases, formulation, scale, and every code indexing the tables (or the codeword counts)
  const checks::AttentionSizes sizes = checks::attention_op(q, k_local, v_local, remote_codes, k_table, v_table,
                                                            k_bias, v_bias, scale, formulation, remote_rotation);
  const at::ScalarType dtype = q.scalar_type();
  TORCH_CHECK(
      dtype == at::kDouble || dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
      "astra CPU mixed_precision_attention: unsupported dtype ", dtype);
  const at::ScalarType compute = dtype == at::kDouble ? at::kDouble : at::kFloat;

  const core::AttentionShape shape{sizes.batch, sizes.heads,  sizes.kv_heads,      sizes.queries, sizes.local,
                                   sizes.remote, sizes.groups, sizes.codebook_size, sizes.head_dim};
  const at::Tensor qc = as_compute_rows(q, compute);
  const at::Tensor kc = as_compute_rows(k_local, compute);
  const at::Tensor vc = as_compute_rows(v_local, compute);
  const at::Tensor codes = remote_codes.to(at::kInt).contiguous();
  const at::Tensor kt = k_table.to(compute).contiguous();
  const at::Tensor vt = v_table.to(compute).contiguous();
  const at::Tensor kb = k_bias.has_value() ? k_bias->to(compute).contiguous() : at::Tensor();
  const at::Tensor vb = v_bias.has_value() ? v_bias->to(compute).contiguous() : at::Tensor();
  const at::Tensor rot = remote_rotation.has_value() ? remote_rotation->to(compute).contiguous() : at::Tensor();

  at::Tensor out = at::empty({shape.batch, shape.heads, shape.queries, shape.head_dim},
                             q.options().dtype(compute));
  at::Tensor lse =
      at::empty({shape.batch, shape.heads, shape.queries}, q.options().dtype(at::kFloat));
  const core::RemoteFormulation how =
      formulation == "codewords" ? core::RemoteFormulation::kCodewords : core::RemoteFormulation::kTokens;
  if (compute == at::kDouble) {
    run_attention<double>(shape, qc, kc, vc, codes, kt, vt, kb, vb, causal, scale, how, rot, out, lse);
  } else {
    run_attention<float>(shape, qc, kc, vc, codes, kt, vt, kb, vb, causal, scale, how, rot, out, lse);
  }
  return {out.scalar_type() == dtype ? out : out.to(dtype), lse};
}

std::tuple<at::Tensor, at::Tensor> attention_after(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const at::Tensor& prior_out, const at::Tensor& prior_lse,
                                                   bool causal, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && prior_out.device().is_cpu() &&
                  prior_lse.device().is_cpu(),
              "astra CPU attention_after: tensors must be on the CPU");
  checks::attention_after_op(q, k, v, prior_out, prior_lse, scale);
  const at::ScalarType dtype = q.scalar_type();
  TORCH_CHECK(
      dtype == at::kDouble || dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
      "astra CPU attention_after: unsupported dtype ", dtype);
  const at::ScalarType compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const core::AttentionShape shape{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), 0, 1, 1, q.size(3)};
  const at::Tensor qc = as_compute_rows(q, compute);
  const at::Tensor kc = as_compute_rows(k, compute);
  const at::Tensor vc = as_compute_rows(v, compute);
  const at::Tensor pc = as_compute_rows(prior_out, compute);
  const at::Tensor no_codes = at::empty({shape.batch, 0, 1}, q.options().dtype(at::kInt));
  const at::Tensor unused_table = at::zeros({1, 1, shape.kv_heads * shape.head_dim}, q.options().dtype(compute));
  at::Tensor out = at::empty({shape.batch, shape.queries, shape.heads, shape.head_dim}, q.options().dtype(compute));
  at::Tensor lse = at::empty({shape.batch, shape.heads, shape.queries}, q.options().dtype(at::kFloat));
  if (compute == at::kDouble) {
    run_attention<double>(shape, qc, kc, vc, no_codes, unused_table, unused_table, at::Tensor(), at::Tensor(), causal,
                          scale, core::RemoteFormulation::kTokens, at::Tensor(), out, lse, pc, prior_lse);
  } else {
    run_attention<float>(shape, qc, kc, vc, no_codes, unused_table, unused_table, at::Tensor(), at::Tensor(), causal,
                         scale, core::RemoteFormulation::kTokens, at::Tensor(), out, lse, pc, prior_lse);
  }
  return {(out.scalar_type() == dtype ? out : out.to(dtype)).transpose(1, 2), lse};
}

}  // namespace astra::cpu
