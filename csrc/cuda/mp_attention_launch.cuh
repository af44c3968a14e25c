// Host side of the mixed-precision attention launch (mp_attention.cu): the grid every
// kernel family launches over, and each family's launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "mp_attention_loaders.cuh"

namespace astra::mp_attention {

constexpr int64_t kMaxGridX = 2147483647;

// One block of `threads` threads and `smem_bytes` of dynamic shared memory per block_m
// rows of every (batch, kv head).
template <typename Kernel>
cudaError_t launch(Kernel kernel, AttnParams p, int block_m, int threads, size_t smem_bytes, cudaStream_t stream) {
  const int64_t row_blocks = (static_cast<int64_t>(p.queries) * p.group + block_m - 1) / block_m;
  const int64_t blocks = row_blocks * p.batch * p.kv_heads;
  if (blocks > kMaxGridX) return cudaErrorInvalidValue;
  p.row_blocks = static_cast<int>(row_blocks);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(blocks), threads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

// CUDA cores, for T = float, __half, __nv_bfloat16 and d <= 256 (mp_attention_simt.cu).
template <typename T>
cudaError_t launch_simt(const AttnParams& p, cudaStream_t stream);

// Tensor cores, for T = __half, __nv_bfloat16 (mp_attention_mma.cu): `*use` tells whether
// they run head dim `head_dim` (d % 16 == 0, d <= 128, the kernel compiled for sm_80+).
template <typename T>
cudaError_t tensor_cores_usable(int head_dim, bool* use);
template <typename T>
cudaError_t launch_mma(const AttnParams& p, cudaStream_t stream);

// counts (B, K) = number of remote tokens of batch row b with each code, from codes
// (B, Tr, 1) (G = 1): exact integers, zeroed first (mp_attention_counts.cu).
cudaError_t launch_codeword_counts(const int32_t* codes, int64_t batch, int remote, int codebook_size,
                                   int32_t* counts, cudaStream_t stream);

}  // namespace astra::mp_attention
