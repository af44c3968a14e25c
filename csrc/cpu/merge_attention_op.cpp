// merge_attention on CPU tensors: dtype normalisation and at::parallel_for over
// the (b, h, t) rows of the torch-free core.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/merge_partials.h"
#include "cpu/attention_ops.h"

namespace astra::cpu {

namespace {

// Rows per parallel chunk: d multiply-adds each.
constexpr int64_t kMergeGrainRows = 1024;

template <class T>
void run(const at::Tensor& a, const at::Tensor& la, const at::Tensor& b, const at::Tensor& lb, at::Tensor& out,
         at::Tensor& lse) {
  core::MergeArgs<T> args{a.size(0),
                          a.size(1),
                          a.size(2),
                          a.size(3),
                          a.data_ptr<T>(),
                          b.data_ptr<T>(),
                          {a.stride(0), a.stride(1), a.stride(2)},
                          {b.stride(0), b.stride(1), b.stride(2)},
                          la.data_ptr<float>(),
                          lb.data_ptr<float>(),
                          {la.stride(0), la.stride(1), la.stride(2)},
                          {lb.stride(0), lb.stride(1), lb.stride(2)},
                          out.data_ptr<T>(),
                          lse.data_ptr<float>()};
  at::parallel_for(0, a.size(0) * a.size(1) * a.size(2), kMergeGrainRows,
                   [&](int64_t begin, int64_t end) { core::merge_partials<T>(args, begin, end); });
}

// In the compute dtype with a unit stride along d, copying only if needed.
at::Tensor unit_d(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype && (t.size(3) <= 1 || t.stride(3) == 1)) return t;
  return t.to(dtype).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> merge_attention(const at::Tensor& out_a, const at::Tensor& lse_a,
                                                   const at::Tensor& out_b, const at::Tensor& lse_b) {
  TORCH_CHECK(out_a.device().is_cpu() && out_b.device().is_cpu() && lse_a.device().is_cpu() &&
                  lse_b.device().is_cpu(),
              "astra CPU merge_attention: tensors must be on the CPU");
  TORCH_CHECK(out_a.dim() == 4 && out_a.sizes() == out_b.sizes() && out_a.scalar_type() == out_b.scalar_type(),
              "astra CPU merge_attention: out_a and out_b must share a (B, H, T, d) shape and dtype, got ",
              out_a.sizes(), " and ", out_b.sizes());
  const auto rows = out_a.sizes().slice(0, 3);
  TORCH_CHECK(lse_a.sizes() == rows && lse_b.sizes() == rows && lse_a.scalar_type() == at::kFloat &&
                  lse_b.scalar_type() == at::kFloat,
              "astra CPU merge_attention: lse_a and lse_b must be float32 of shape ", rows);
  const at::ScalarType dtype = out_a.scalar_type();
  const at::ScalarType compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor a = unit_d(out_a, compute);
  const at::Tensor b = unit_d(out_b, compute);
  at::Tensor out = at::empty({a.size(0), a.size(2), a.size(1), a.size(3)}, a.options());  // (B, T, H, d)
  at::Tensor lse = at::empty(rows, lse_a.options());
  if (out.numel() > 0 || lse.numel() > 0) {
    if (compute == at::kDouble) {
      run<double>(a, lse_a, b, lse_b, out, lse);
    } else {
      run<float>(a, lse_a, b, lse_b, out, lse);
    }
  }
  return {out.to(dtype).transpose(1, 2), lse};
}

}  // namespace astra::cpu
