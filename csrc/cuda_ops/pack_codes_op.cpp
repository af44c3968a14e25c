// pack_codes and unpack_codes on CUDA tensors: checks, fresh outputs, the bit-packing launches.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "cuda/astra_cuda.h"
#include "cuda_ops/tensor_checks.h"
#include "ops_common/input_checks.h"
#include "cuda_ops/vq_ops.h"

namespace astra::cuda {

at::Tensor pack_codes(const at::Tensor& codes, int64_t bits) {
  check_cuda_tensor(codes, "codes");
  check_int32_contiguous(codes, "codes");
  checks::pack_op(codes, bits);  // one sync for the codes' range
  const int64_t count = codes.numel();

  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor packed = at::empty({packed_bytes(count, bits)}, codes.options().dtype(at::kByte));
  if (count == 0) return packed;
  check_launch(astra_pack_codes(codes.data_ptr<int32_t>(), count, static_cast<int>(bits), packed.data_ptr<uint8_t>(),
                                current_stream(codes)),
               "pack_codes");
  return packed;
}

at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t count) {
  check_cuda_tensor(packed, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "packed must be uint8, got ", packed.scalar_type());
  checks::unpack_op(packed, bits, count);
  TORCH_CHECK(packed.is_contiguous(), "packed must be a contiguous 1-D tensor");

  const c10::cuda::CUDAGuard guard(packed.device());
  at::Tensor codes = at::empty({count}, packed.options().dtype(at::kInt));
  if (count == 0) return codes;
  check_launch(astra_unpack_codes(packed.data_ptr<uint8_t>(), count, static_cast<int>(bits),
                                  codes.data_ptr<int32_t>(), current_stream(packed)),
               "unpack_codes");
  return codes;
}

}  // namespace astra::cuda
