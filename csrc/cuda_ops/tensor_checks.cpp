// Checks and helpers shared by the ATen glue of the CUDA kernels.
#include "cuda_ops/tensor_checks.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "ops_common/input_checks.h"

namespace astra::cuda {

astra_dtype to_astra_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ASTRA_DTYPE_FLOAT32;
    case at::kHalf:
      return ASTRA_DTYPE_FLOAT16;
    case at::kBFloat16:
      return ASTRA_DTYPE_BFLOAT16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
}

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), b_name, " is on ", b.device(), " but ", a_name, " is on ", a.device());
}

void check_codebooks(const at::Tensor& codebooks) { checks::codebook_shape(codebooks); }

void check_int32_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_bits(int64_t bits) { checks::bits(bits); }

int64_t packed_bytes(int64_t count, int64_t bits) { return (count * bits + 7) / 8; }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "astra_kernels._C_cuda.", op, " failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

cudaStream_t current_stream(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

}  // namespace astra::cuda
