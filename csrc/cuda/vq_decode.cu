// Codebook lookup (vq_decode): out[n, g*Dg:(g+1)*Dg] = codebooks[g, codes[n, g], :].
//
// A bandwidth-bound gather and a bit copy, so the dtype only fixes the row size
// in bytes. Each (row, group) slice is copied in the widest unit (16, 8, 4 or 2
// bytes) that divides the slice and the alignment of both base pointers; the
// output slice of item (n, g) is the item-th slice of the contiguous output.
#include <cuda_runtime.h>

#include <cstdint>

#include "astra_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this

// codes: (items,) with items = N*G; cb: (G*K, units_per_row) units; out: (items, units_per_row).
template <typename Unit, typename Index>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(const int32_t* __restrict__ codes, Index items, int num_groups, Index k,
                       const Unit* __restrict__ cb, Index units_per_row, Unit* __restrict__ out) {
  const Index total = items * units_per_row;
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const Index item = i / units_per_row;
    const Index unit = i - item * units_per_row;
    const Index g = item % static_cast<Index>(num_groups);
    const Index code = static_cast<Index>(codes[item]);
    out[i] = cb[(g * k + code) * units_per_row + unit];
  }
}

template <typename Unit>
cudaError_t gather_rows(const int32_t* codes, int64_t items, int num_groups, int64_t k, const void* cb,
                        int64_t row_bytes, void* out, cudaStream_t stream) {
  const int64_t units_per_row = row_bytes / static_cast<int64_t>(sizeof(Unit));
  const int64_t total = items * units_per_row;
  const int64_t table_units = num_groups * k * units_per_row;
  const unsigned blocks = static_cast<unsigned>(
      (total + kThreads - 1) / kThreads < kMaxBlocks ? (total + kThreads - 1) / kThreads : kMaxBlocks);
  // 32-bit index arithmetic (cheaper division) whenever i + stride cannot wrap.
  if (total < (1LL << 31) && table_units < (1LL << 31)) {
    gather_rows_kernel<Unit, uint32_t><<<blocks, kThreads, 0, stream>>>(
        codes, static_cast<uint32_t>(items), num_groups, static_cast<uint32_t>(k), static_cast<const Unit*>(cb),
        static_cast<uint32_t>(units_per_row), static_cast<Unit*>(out));
  } else {
    gather_rows_kernel<Unit, uint64_t><<<blocks, kThreads, 0, stream>>>(
        codes, static_cast<uint64_t>(items), num_groups, static_cast<uint64_t>(k), static_cast<const Unit*>(cb),
        static_cast<uint64_t>(units_per_row), static_cast<Unit*>(out));
  }
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t astra_vq_decode(astra_dtype dtype, const int32_t* codes, int64_t n, const void* codebooks,
                                       int64_t g, int64_t k, int64_t dg, void* out, cudaStream_t stream) {
  int64_t elem_bytes = 0;
  switch (dtype) {
    case ASTRA_DTYPE_FLOAT32:
      elem_bytes = 4;
      break;
    case ASTRA_DTYPE_FLOAT16:
    case ASTRA_DTYPE_BFLOAT16:
      elem_bytes = 2;
      break;
  }
  if (elem_bytes == 0 || n < 0 || g < 1 || g > 65535 || k < 1 || dg < 1) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t row_bytes = dg * elem_bytes;
  const int64_t items = n * g;
  const uintptr_t alignment = reinterpret_cast<uintptr_t>(codebooks) | reinterpret_cast<uintptr_t>(out);
  const int groups = static_cast<int>(g);
  if (row_bytes % 16 == 0 && alignment % 16 == 0)
    return gather_rows<uint4>(codes, items, groups, k, codebooks, row_bytes, out, stream);
  if (row_bytes % 8 == 0 && alignment % 8 == 0)
    return gather_rows<uint2>(codes, items, groups, k, codebooks, row_bytes, out, stream);
  if (row_bytes % 4 == 0 && alignment % 4 == 0)
    return gather_rows<uint32_t>(codes, items, groups, k, codebooks, row_bytes, out, stream);
  return gather_rows<uint16_t>(codes, items, groups, k, codebooks, row_bytes, out, stream);
}
