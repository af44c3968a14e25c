// Wire format of codes: pack into / unpack from a little-endian bit stream.
//
// Code i occupies stream bits [i*bits, (i+1)*bits), least significant bit first;
// stream bit j is bit j % 8 of byte j / 8; the last byte is zero-padded.
// Packing computes each output byte from the codes that overlap it (a gather:
// no atomics, every byte written exactly once); unpacking reads the at most
// three bytes a code of <= 16 bits can span.
#include <cuda_runtime.h>

#include <cstdint>

#include "astra_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this
constexpr int kMaxBits = 16;

unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// codes: (count,) -> packed: (nbytes,)
__global__ void __launch_bounds__(kThreads) pack_codes_kernel(const int32_t* __restrict__ codes, int64_t count,
                                                              int bits, int64_t nbytes, uint8_t* __restrict__ packed) {
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t byte = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; byte < nbytes; byte += stride) {
    const int64_t first_bit = byte * 8;
    // Codes overlapping stream bits [first_bit, first_bit + 8).
    const int64_t begin = first_bit / bits;
    const int64_t end_overlap = (first_bit + 8 + bits - 1) / bits;
    const int64_t end = end_overlap < count ? end_overlap : count;
    uint32_t value = 0;
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t code = static_cast<uint32_t>(codes[i]) & mask;
      const int shift = static_cast<int>(i * bits - first_bit);  // in (-bits, 8)
      value |= shift >= 0 ? code << shift : code >> -shift;
    }
    packed[byte] = static_cast<uint8_t>(value & 0xffu);
  }
}

// packed: (nbytes,) -> codes: (count,)
__global__ void __launch_bounds__(kThreads) unpack_codes_kernel(const uint8_t* __restrict__ packed, int64_t nbytes,
                                                                int64_t count, int bits, int32_t* __restrict__ codes) {
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count; i += stride) {
    const int64_t first_bit = i * bits;
    const int64_t byte = first_bit / 8;
    const int offset = static_cast<int>(first_bit % 8);  // offset + bits <= 23: three bytes suffice
    uint32_t window = 0;
#pragma unroll
    for (int t = 0; t < 3; ++t)
      if (byte + t < nbytes) window |= static_cast<uint32_t>(packed[byte + t]) << (8 * t);
    codes[i] = static_cast<int32_t>((window >> offset) & mask);
  }
}

int64_t packed_bytes(int64_t count, int bits) { return (count * bits + 7) / 8; }

}  // namespace

extern "C" cudaError_t astra_pack_codes(const int32_t* codes, int64_t count, int bits, uint8_t* packed,
                                        cudaStream_t stream) {
  if (count < 0 || bits < 1 || bits > kMaxBits) return cudaErrorInvalidValue;
  const int64_t nbytes = packed_bytes(count, bits);
  if (nbytes == 0) return cudaSuccess;
  pack_codes_kernel<<<grid_for(nbytes), kThreads, 0, stream>>>(codes, count, bits, nbytes, packed);
  return cudaGetLastError();
}

extern "C" cudaError_t astra_unpack_codes(const uint8_t* packed, int64_t count, int bits, int32_t* codes,
                                          cudaStream_t stream) {
  if (count < 0 || bits < 1 || bits > kMaxBits) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  unpack_codes_kernel<<<grid_for(count), kThreads, 0, stream>>>(packed, packed_bytes(count, bits), count, bits,
                                                                codes);
  return cudaGetLastError();
}
