// vq_decode on CUDA tensors: checks, a fresh output, the astra_vq_decode launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "cuda/astra_cuda.h"
#include "cuda_ops/tensor_checks.h"
#include "ops_common/input_checks.h"
#include "cuda_ops/vq_ops.h"

namespace astra::cuda {

at::Tensor vq_decode(const at::Tensor& codes, const at::Tensor& codebooks) {
  check_cuda_tensor(codes, "codes");
  check_cuda_tensor(codebooks, "codebooks");
  check_same_device(codebooks, "codebooks", codes, "codes");
  check_codebooks(codebooks);
  const astra_dtype dtype = to_astra_dtype(codebooks, "codebooks");
  check_int32_contiguous(codes, "codes");
  checks::decode_op(codes, codebooks);  // every code indexes the table: one sync for its range
  const int64_t n = codes.size(0);
  const int64_t g = codebooks.size(0);
  const int64_t k = codebooks.size(1);
  const int64_t dg = codebooks.size(2);

  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty({n, g * dg}, codebooks.options());
  if (n == 0) return out;
  const at::Tensor cb = codebooks.contiguous();
  check_launch(astra_vq_decode(dtype, codes.data_ptr<int32_t>(), n, cb.data_ptr(), g, k, dg, out.data_ptr(),
                               current_stream(codes)),
               "vq_decode");
  return out;
}

}  // namespace astra::cuda
