// vq_encode and vq_encode_int8 on CPU tensors: dtype/layout normalisation, the
// EncodePlan of the torch-free core (prepared per call, or once by a VqEncoder),
// and at::parallel_for over (group, row block) tasks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "core/cpu_features.h"
#include "core/vq_encode.h"
#include "cpu/vq_ops.h"
#include "ops_common/input_checks.h"

namespace astra::cpu {

namespace {

// Rows per task: small enough to split work across threads when N is small,
// large enough to amortise the per-task setup; GEMM calls want tall blocks.
constexpr int64_t kMaxFusedTaskRows = 256;
constexpr int64_t kMaxInt8EstimateTaskRows = 64;
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

VqEncoder::VqEncoder(const at::Tensor& codebooks, bool exact, bool copy)
    : op_(exact ? "vq_encode" : "vq_encode_int8") {
  TORCH_CHECK(codebooks.device().is_cpu(), "astra CPU ", op_, ": codebooks must be on the CPU");
  checks::codebook_shape(codebooks);
  codebooks_ = codebooks.to(at::kFloat).contiguous();
  if (copy && codebooks_.is_same(codebooks)) codebooks_ = codebooks_.clone();
  const core::VqShape shape{codebooks_.size(0), codebooks_.size(1), codebooks_.size(2)};
  const core::Simd simd = core::active_simd();
  const core::EncodePath path = exact ? core::choose_encode_path(shape.width, simd) : core::EncodePath::kInt8Estimate;
  plan_ = std::make_unique<core::EncodePlan>(codebooks_.data_ptr<float>(), shape, simd, path);
  at::parallel_for(0, plan_->prepare_tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) plan_->prepare(t);
  });
}

VqEncoder::~VqEncoder() = default;

std::tuple<at::Tensor, at::Tensor> VqEncoder::encode(const at::Tensor& x) const {
  const int64_t groups = codebooks_.size(0);
  const int64_t width = codebooks_.size(2);
  TORCH_CHECK(x.device().is_cpu(), "astra CPU ", op_, ": tensors must be on the CPU");
  checks::encode_op(x, codebooks_);
  const int64_t n = x.size(0);
  const at::Tensor xf = as_float_rows(x);
  at::Tensor codes = at::empty({n, groups}, x.options().dtype(at::kInt));
  at::Tensor sqdist = at::empty({n, groups}, x.options().dtype(at::kFloat));
  if (n == 0) return {codes, sqdist};

  // Enough row blocks per group that every thread gets work even when G is small.
  const int64_t threads = at::get_num_threads();
  const int64_t blocks_wanted = std::max<int64_t>(1, (threads + groups - 1) / groups);
  // The int8-estimate books are small (ceil(Dg / 4) * K words per group, twice
  // that in the AVX2 kernels' int16 pairs): tasks walk row blocks outside
  // groups, so a block's rows stay in cache across its groups. The fp32 panels
  // are 4x larger: each group's stay in cache across its row blocks instead.
  // (Each order is the faster one for its path: benchmarks/RESULTS.md, tuning
  // constants.)
  const core::EncodePath path = plan_->path();
  const bool rows_outer = path == core::EncodePath::kInt8Estimate;
  const int64_t max_rows = path == core::EncodePath::kBlockedGemm ? kMaxGemmTaskRows
                           : rows_outer                          ? kMaxInt8EstimateTaskRows
                                                                 : kMaxFusedTaskRows;
  const int64_t task_rows = std::clamp<int64_t>((n + blocks_wanted - 1) / blocks_wanted, 1, max_rows);
  const int64_t blocks = (n + task_rows - 1) / task_rows;

  const float* xp = xf.data_ptr<float>();
  const int64_t x_stride = xf.stride(0);
  int32_t* codes_p = codes.data_ptr<int32_t>();
  float* sqdist_p = sqdist.data_ptr<float>();
  at::parallel_for(0, groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = rows_outer ? t % groups : t / blocks;
      const int64_t r0 = (rows_outer ? t / groups : t % blocks) * task_rows;
      plan_->encode_rows(xp, x_stride, g, r0, std::min(n, r0 + task_rows), codes_p, sqdist_p,
                         &aten_gemm_abt);
    }
  });
  return {codes, sqdist};
}

namespace {

// The ops prepare the codebooks on every call (VqEncoder keeps them prepared).
std::tuple<at::Tensor, at::Tensor> encode_once(const at::Tensor& x, const at::Tensor& codebooks, bool exact) {
  const char* op = exact ? "vq_encode" : "vq_encode_int8";
  TORCH_CHECK(x.device().is_cpu() && codebooks.device().is_cpu(), "astra CPU ", op,
              ": tensors must be on the CPU");
  checks::encode_op(x, codebooks);
  if (x.size(0) == 0) {
    return {at::empty({0, codebooks.size(0)}, x.options().dtype(at::kInt)),
            at::empty({0, codebooks.size(0)}, x.options().dtype(at::kFloat))};
  }
  return VqEncoder(codebooks, exact, /*copy=*/false).encode(x);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks) {
  return encode_once(x, codebooks, /*exact=*/true);
}

std::tuple<at::Tensor, at::Tensor> vq_encode_int8(const at::Tensor& x, const at::Tensor& codebooks) {
  return encode_once(x, codebooks, /*exact=*/false);
}

}  // namespace astra::cpu
