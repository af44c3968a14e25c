// vq_encode on CPU tensors: dtype/layout normalisation, the per-call
// EncodePlan of the torch-free core, and at::parallel_for over
// (group, row block) tasks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "core/cpu_features.h"
#include "core/vq_encode.h"
#include "cpu/vq_ops.h"

namespace astra::cpu {

namespace {

// Rows per task: small enough to split work across threads when N is small,
// large enough to amortise the per-task setup; GEMM calls want tall blocks.
constexpr int64_t kMaxFusedTaskRows = 256;
constexpr int64_t kMaxGemmTaskRows = 1024;

// The core's GEMM callback, backed by ATen (MKL sgemm on the CPU build):
// C (m, n) = A (m, k) . B^T over caller-owned memory. Inside at::parallel_for
// ATen/MKL run it single-threaded on the calling thread.
void aten_gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc) {
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor av = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, options);
  const at::Tensor bv = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, options);
  at::Tensor cv = at::from_blob(c, {m, n}, {ldc, 1}, options);
  at::mm_out(cv, av, bv.t());
}

// fp32 with unit feature stride (any row stride), copying only if needed.
at::Tensor as_float_rows(const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat && (x.size(1) == 1 || x.stride(1) == 1)) return x;
  return x.to(at::kFloat).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks) {
  TORCH_CHECK(x.device().is_cpu() && codebooks.device().is_cpu(),
              "astra CPU vq_encode: tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 2 && codebooks.dim() == 3,
              "astra CPU vq_encode: expected x (N, D) and codebooks (G, K, Dg), got ", x.sizes(),
              " and ", codebooks.sizes());
  const int64_t n = x.size(0);
  const int64_t groups = codebooks.size(0);
  const int64_t k = codebooks.size(1);
  const int64_t width = codebooks.size(2);
  TORCH_CHECK(x.size(1) == groups * width, "astra CPU vq_encode: x has D=", x.size(1),
              " but codebooks cover G*Dg=", groups * width);

  const at::Tensor xf = as_float_rows(x);
  const at::Tensor cb = codebooks.to(at::kFloat).contiguous();
  at::Tensor codes = at::empty({n, groups}, x.options().dtype(at::kInt));
  at::Tensor sqdist = at::empty({n, groups}, x.options().dtype(at::kFloat));
  if (n == 0) return {codes, sqdist};

  const core::Simd simd = core::active_simd();
  const core::EncodePath path = core::choose_encode_path(width, simd);
  core::EncodePlan plan(cb.data_ptr<float>(), {groups, k, width}, simd, path);
  at::parallel_for(0, plan.prepare_tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) plan.prepare(t);
  });

  // Enough row blocks per group that every thread gets work even when G is small.
  const int64_t threads = at::get_num_threads();
  const int64_t blocks_wanted = std::max<int64_t>(1, (threads + groups - 1) / groups);
  const int64_t max_rows = path == core::EncodePath::kBlockedGemm ? kMaxGemmTaskRows : kMaxFusedTaskRows;
  const int64_t task_rows = std::clamp<int64_t>((n + blocks_wanted - 1) / blocks_wanted, 1, max_rows);
  const int64_t blocks = (n + task_rows - 1) / task_rows;

  const float* xp = xf.data_ptr<float>();
  const int64_t x_stride = xf.stride(0);
  int32_t* codes_p = codes.data_ptr<int32_t>();
  float* sqdist_p = sqdist.data_ptr<float>();
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = t / blocks;
      const int64_t r0 = (t % blocks) * task_rows;
      plan.encode_rows(xp, x_stride, g, r0, std::min(n, r0 + task_rows), codes_p, sqdist_p,
                       &aten_gemm_abt);
    }
  });
  return {codes, sqdist};
}

}  // namespace astra::cpu
