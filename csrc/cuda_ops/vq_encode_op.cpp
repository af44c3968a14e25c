// vq_encode on CUDA tensors: checks, fresh outputs and scratch memory, the astra_vq_encode launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <tuple>

#include "cuda/astra_cuda.h"
#include "cuda_ops/tensor_checks.h"
#include "ops_common/input_checks.h"
#include "cuda_ops/vq_ops.h"

namespace astra::cuda {

std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks) {
  check_cuda_tensor(x, "x");
  check_cuda_tensor(codebooks, "codebooks");
  check_same_device(x, "x", codebooks, "codebooks");
  check_codebooks(codebooks);
  const astra_dtype dtype = to_astra_dtype(x, "x");
  TORCH_CHECK(codebooks.scalar_type() == x.scalar_type(), "x is ", x.scalar_type(), " but codebooks are ",
              codebooks.scalar_type());
  checks::encode_op(x, codebooks);
  const int64_t n = x.size(0);
  const int64_t g = codebooks.size(0);
  const int64_t k = codebooks.size(1);
  const int64_t dg = codebooks.size(2);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor codes = at::empty({n, g}, x.options().dtype(at::kInt));
  at::Tensor sqdist = at::empty({n, g}, x.options().dtype(at::kFloat));
  if (n == 0) return {codes, sqdist};
  const at::Tensor cb = codebooks.contiguous();
  const auto workspace_bytes = static_cast<int64_t>(astra_vq_encode_workspace_bytes(n, g, k));
  at::Tensor workspace = at::empty({workspace_bytes}, x.options().dtype(at::kByte));
  check_launch(astra_vq_encode(dtype, x.data_ptr(), n, x.stride(0), x.stride(1), cb.data_ptr(), g, k, dg,
                               workspace.data_ptr(), codes.data_ptr<int32_t>(), sqdist.data_ptr<float>(),
                               current_stream(x)),
               "vq_encode");
  return {codes, sqdist};
}

}  // namespace astra::cuda
