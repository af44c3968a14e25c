// Codeword histogram of the mixed-precision attention's "codewords" formulation:
// counts[b, code] = number of remote tokens of batch row b with that code (G = 1), exact
// integers (integer atomics: the same on every run).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "mp_attention_launch.cuh"

namespace astra::mp_attention {

namespace {

constexpr int kCountThreads = 256;
constexpr int64_t kMaxCountBlocks = 65535;  // grid-stride beyond this

__global__ void __launch_bounds__(kCountThreads)
    codeword_counts_kernel(const int32_t* __restrict__ codes, int64_t n, int remote, int codebook_size,
                           int32_t* __restrict__ counts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCountThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCountThreads + threadIdx.x; i < n; i += stride)
    atomicAdd(&counts[(i / remote) * codebook_size + codes[i]], 1);
}

}  // namespace

cudaError_t launch_codeword_counts(const int32_t* codes, int64_t batch, int remote, int codebook_size,
                                   int32_t* counts, cudaStream_t stream) {
  const int64_t n = batch * remote;
  cudaError_t err =
      cudaMemsetAsync(counts, 0, static_cast<size_t>(batch * codebook_size) * sizeof(int32_t), stream);
  if (err != cudaSuccess) return err;
  const int64_t blocks = (n + kCountThreads - 1) / kCountThreads;
  codeword_counts_kernel<<<static_cast<unsigned>(blocks < kMaxCountBlocks ? blocks : kMaxCountBlocks),
                           kCountThreads, 0, stream>>>(codes, n, remote, codebook_size, counts);
  return cudaGetLastError();
}

}  // namespace astra::mp_attention
