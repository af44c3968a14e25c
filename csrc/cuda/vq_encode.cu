// Grouped nearest-codeword search (vq_encode) without an N x K distance matrix.
//
// Per call:
//   1. codeword_sqnorms_kernel: ||e||^2 in fp32, one warp per codeword;
//   2. an argmin kernel, grid (row tiles, G, codeword splits): a block scores a
//      64-row x 64-codeword tile at a time (fp32 accumulation; CUDA cores, or
//      tensor cores for fp16/bf16), keeps a running minimum per row and merges it
//      into a per-(row, group) 64-bit key with atomicMin;
//   3. vq_finish_kernel: applies rules 2 and 3 of the contract (non-finite group
//      -> code 0; sqdist computed directly) and writes codes and sqdist.
// The key packs an order-preserving encoding of the score (high 32 bits) above
// the codeword index (low 32 bits), so the unsigned minimum is the smallest
// score with the LOWEST index on ties, whatever the order in which tiles,
// threads and splits are merged: the result is deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "astra_cuda.h"

namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Key of "no codeword seen yet": above every real key.
constexpr unsigned long long kNoCandidate = ~0ull;
constexpr int64_t kMaxGridX = 2147483647;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Sum over the warp; every lane gets the same value (fp32 addition commutes).
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ unsigned long long key_min(unsigned long long a, unsigned long long b) {
  return b < a ? b : a;
}

// (score, index) -> unsigned key ordered like (score, index) lexicographically.
// NaN scores rank as +inf (they lose, like the reference's nan_to_num), and -0
// is folded into +0 so that equal scores tie.
__device__ __forceinline__ unsigned long long score_key(float score, int index) {
  unsigned bits = __float_as_uint(score + 0.0f);
  if (score != score) bits = 0x7f800000u;
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(bits) << 32) | static_cast<unsigned>(index);
}

// ---------------------------------------------------------------------------
// 1. ||e||^2 per codeword

constexpr int kNormThreads = 256;

// cb: (rows, dg) contiguous -> out: (rows,) fp32.
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    codeword_sqnorms_kernel(const T* __restrict__ cb, int64_t rows, int dg, float* __restrict__ out) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kNormThreads / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // the whole warp leaves together
  const T* e = cb + row * dg;
  float sum = 0.0f;
  for (int d = lane; d < dg; d += kWarpSize) {
    const float v = to_float(e[d]);
    sum = fmaf(v, v, sum);
  }
  sum = warp_sum(sum);
  if (lane == 0) out[row] = sum;
}

// ---------------------------------------------------------------------------
// 2. argmin kernels. Shared by both: grid (cdiv(N, kTileRows), G, splits);
// blockIdx.z scans codeword tiles [z * tiles_per_split, (z + 1) * tiles_per_split).

constexpr int kTileRows = 64;   // rows of x per block
constexpr int kTileCodes = 64;  // codewords per tile

struct ArgminParams {
  const void* x;          // (N, G*Dg)
  int64_t n;
  int64_t x_stride_row;
  int64_t x_stride_col;
  const void* codebooks;  // (G, K, Dg) contiguous
  int k;
  int dg;
  const float* e_sq;      // (G, K)
  int tiles_per_split;
  unsigned long long* keys;  // (N, G), pre-filled with kNoCandidate
};

// CUDA-core path (all dtypes). 256 threads as 16 x 16: thread (ty, tx) owns rows
// ty*4 + i and codewords tx*4 + j of the tile (i, j < 4) in registers. x and
// codeword slices of kSimtDepth features are staged in shared memory as fp32,
// transposed (feature-major) so that the inner loop reads one float4 of rows
// and one float4 of codewords per feature.
constexpr int kSimtThreads = 256;
constexpr int kSimtDepth = 16;
constexpr int kSimtRowsPerThread = 4;
constexpr int kSimtCodesPerThread = 4;
constexpr int kSimtLanesPerRow = kTileCodes / kSimtCodesPerThread;  // 16
static_assert(kSimtLanesPerRow * (kTileRows / kSimtRowsPerThread) == kSimtThreads, "thread grid");
static_assert(kSimtLanesPerRow <= kWarpSize && kWarpSize % kSimtLanesPerRow == 0, "row lanes inside one warp");
static_assert(kSimtRowsPerThread == 4 && kSimtCodesPerThread == 4, "float4 register tiles");
constexpr int kSimtPitch = kTileRows + 4;  // keeps float4 alignment, staggers banks on the transposing store
static_assert(kTileRows == kTileCodes && kSimtPitch % 4 == 0, "one pitch for both tiles");

// At least 2 resident blocks per SM; this register budget (<= 128) avoids spills.
template <typename T>
__global__ void __launch_bounds__(kSimtThreads, 2) vq_argmin_simt_kernel(ArgminParams p) {
  __shared__ __align__(16) float xs[kSimtDepth][kSimtPitch];
  __shared__ __align__(16) float es[kSimtDepth][kSimtPitch];

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const int g = blockIdx.y;
  const int num_groups = gridDim.y;
  const int tid = threadIdx.x;
  const int tx = tid % kSimtLanesPerRow;
  const int ty = tid / kSimtLanesPerRow;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t col0 = static_cast<int64_t>(g) * p.dg;  // first feature of group g
  const T* __restrict__ cb = static_cast<const T*>(p.codebooks) + static_cast<int64_t>(g) * p.k * p.dg;
  const float* __restrict__ e_sq = p.e_sq + static_cast<int64_t>(g) * p.k;
  const int num_tiles = (p.k + kTileCodes - 1) / kTileCodes;
  const int tile_begin = blockIdx.z * p.tiles_per_split;
  const int tile_end = min(tile_begin + p.tiles_per_split, num_tiles);

  unsigned long long best[kSimtRowsPerThread];
#pragma unroll
  for (int i = 0; i < kSimtRowsPerThread; ++i) best[i] = kNoCandidate;

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int code0 = tile * kTileCodes;
    float acc[kSimtRowsPerThread][kSimtCodesPerThread] = {};
    for (int d0 = 0; d0 < p.dg; d0 += kSimtDepth) {
      // Out-of-range rows, codewords and features load as 0: they add exactly 0.
      for (int idx = tid; idx < kTileRows * kSimtDepth; idx += kSimtThreads) {
        const int r = idx / kSimtDepth;
        const int dd = idx % kSimtDepth;
        const int64_t row = row0 + r;
        const int d = d0 + dd;
        xs[dd][r] = (row < p.n && d < p.dg) ? to_float(x[row * p.x_stride_row + (col0 + d) * p.x_stride_col]) : 0.0f;
      }
      for (int idx = tid; idx < kTileCodes * kSimtDepth; idx += kSimtThreads) {
        const int c = idx / kSimtDepth;
        const int dd = idx % kSimtDepth;
        const int code = code0 + c;
        const int d = d0 + dd;
        es[dd][c] = (code < p.k && d < p.dg) ? to_float(cb[static_cast<int64_t>(code) * p.dg + d]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int dd = 0; dd < kSimtDepth; ++dd) {
        const float4 a4 = *reinterpret_cast<const float4*>(&xs[dd][ty * kSimtRowsPerThread]);
        const float4 b4 = *reinterpret_cast<const float4*>(&es[dd][tx * kSimtCodesPerThread]);
        const float a[kSimtRowsPerThread] = {a4.x, a4.y, a4.z, a4.w};
        const float b[kSimtCodesPerThread] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int i = 0; i < kSimtRowsPerThread; ++i)
#pragma unroll
          for (int j = 0; j < kSimtCodesPerThread; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();  // before the next slice overwrites xs / es
    }
#pragma unroll
    for (int j = 0; j < kSimtCodesPerThread; ++j) {
      const int code = code0 + tx * kSimtCodesPerThread + j;
      if (code < p.k) {
        const float norm = e_sq[code];
#pragma unroll
        for (int i = 0; i < kSimtRowsPerThread; ++i) best[i] = key_min(best[i], score_key(fmaf(-2.0f, acc[i][j], norm), code));
      }
    }
  }

  // The 16 lanes of a row sit in one warp: butterfly, then one atomic per row.
#pragma unroll
  for (int i = 0; i < kSimtRowsPerThread; ++i) {
    unsigned long long key = best[i];
    for (int offset = kSimtLanesPerRow / 2; offset > 0; offset >>= 1)
      key = key_min(key, __shfl_xor_sync(kFullMask, key, offset));
    const int64_t row = row0 + ty * kSimtRowsPerThread + i;
    if (tx == 0 && row < p.n) atomicMin(&p.keys[row * num_groups + g], key);
  }
}

// Tensor-core path (fp16 / bf16, sm_80+): 4 warps as 2 x 2, each computing a
// 32 x 32 block of x.e with 2 x 2 WMMA 16x16x16 fragments (fp32 accumulators)
// over feature slices of kTcDepth, zero-padded. The tile's dot products go
// through shared memory to the scan: 2 threads per row, alternating codewords.
constexpr int kTcThreads = 128;
constexpr int kTcDepth = 32;
constexpr int kTcFrag = 16;
constexpr int kTcWarpTile = 32;
static_assert(kTileRows == 2 * kTcWarpTile && kTileCodes == 2 * kTcWarpTile, "2 x 2 warps");
static_assert(kTcThreads == 4 * kWarpSize, "4 warps");
static_assert(kTcDepth % kTcFrag == 0, "whole WMMA k-steps");

template <typename T>
__global__ void __launch_bounds__(kTcThreads) vq_argmin_wmma_kernel(ArgminParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // The launcher only picks this kernel when it was compiled for sm_80+.
  __trap();
#else
  namespace wmma = nvcuda::wmma;
  constexpr int kTcPitch = kTcDepth + 8;       // 16-bit elements; a multiple of 8, as WMMA requires
  constexpr int kTcDotPitch = kTileCodes + 4;  // floats; a multiple of 4, as WMMA requires
  constexpr int kTcThreadsPerRow = kTcThreads / kTileRows;  // 2
  // Raw 16-bit patterns: staging is a bit copy, and 0 bits are +0 in fp16 and bf16.
  __shared__ __align__(32) uint16_t xs[kTileRows][kTcPitch];
  __shared__ __align__(32) uint16_t es[kTileCodes][kTcPitch];
  __shared__ __align__(32) float dots[kTileRows][kTcDotPitch];

  const uint16_t* __restrict__ x = static_cast<const uint16_t*>(p.x);
  const int g = blockIdx.y;
  const int num_groups = gridDim.y;
  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize;
  const int warp_row = (warp / 2) * kTcWarpTile;
  const int warp_code = (warp % 2) * kTcWarpTile;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t col0 = static_cast<int64_t>(g) * p.dg;
  const uint16_t* __restrict__ cb =
      static_cast<const uint16_t*>(p.codebooks) + static_cast<int64_t>(g) * p.k * p.dg;
  const float* __restrict__ e_sq = p.e_sq + static_cast<int64_t>(g) * p.k;
  const int num_tiles = (p.k + kTileCodes - 1) / kTileCodes;
  const int tile_begin = blockIdx.z * p.tiles_per_split;
  const int tile_end = min(tile_begin + p.tiles_per_split, num_tiles);
  const int scan_row = tid / kTcThreadsPerRow;
  const int scan_lane = tid % kTcThreadsPerRow;

  unsigned long long best = kNoCandidate;
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int code0 = tile * kTileCodes;
    wmma::fragment<wmma::accumulator, kTcFrag, kTcFrag, kTcFrag, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int d0 = 0; d0 < p.dg; d0 += kTcDepth) {
      for (int idx = tid; idx < kTileRows * kTcDepth; idx += kTcThreads) {
        const int r = idx / kTcDepth;
        const int dd = idx % kTcDepth;
        const int64_t row = row0 + r;
        const int d = d0 + dd;
        xs[r][dd] = (row < p.n && d < p.dg) ? x[row * p.x_stride_row + (col0 + d) * p.x_stride_col]
                                              : static_cast<uint16_t>(0);
      }
      for (int idx = tid; idx < kTileCodes * kTcDepth; idx += kTcThreads) {
        const int c = idx / kTcDepth;
        const int dd = idx % kTcDepth;
        const int code = code0 + c;
        const int d = d0 + dd;
        es[c][dd] = (code < p.k && d < p.dg) ? cb[static_cast<int64_t>(code) * p.dg + d] : static_cast<uint16_t>(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTcDepth; kk += kTcFrag) {
        // A = x slice (rows x features, row major); B = codewords^T (features x
        // codes), i.e. es read column major: element (d, c) at es[c][d].
        wmma::fragment<wmma::matrix_a, kTcFrag, kTcFrag, kTcFrag, T, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, kTcFrag, kTcFrag, kTcFrag, T, wmma::col_major> b[2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          wmma::load_matrix_sync(a[i], reinterpret_cast<const T*>(&xs[warp_row + i * kTcFrag][kk]), kTcPitch);
#pragma unroll
        for (int j = 0; j < 2; ++j)
          wmma::load_matrix_sync(b[j], reinterpret_cast<const T*>(&es[warp_code + j * kTcFrag][kk]), kTcPitch);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
      __syncthreads();  // before the next slice overwrites xs / es
    }
    // dots is free: every thread finished the previous scan before the syncs above.
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&dots[warp_row + i * kTcFrag][warp_code + j * kTcFrag], acc[i][j], kTcDotPitch,
                                wmma::mem_row_major);
    __syncthreads();
    for (int c = scan_lane; c < kTileCodes; c += kTcThreadsPerRow) {
      const int code = code0 + c;
      if (code < p.k) best = key_min(best, score_key(fmaf(-2.0f, dots[scan_row][c], e_sq[code]), code));
    }
  }

  // The kTcThreadsPerRow threads of a row are adjacent lanes of one warp.
  for (int offset = kTcThreadsPerRow / 2; offset > 0; offset >>= 1)
    best = key_min(best, __shfl_xor_sync(kFullMask, best, offset));
  const int64_t row = row0 + scan_row;
  if (scan_lane == 0 && row < p.n) atomicMin(&p.keys[row * num_groups + g], best);
#endif
}

// ---------------------------------------------------------------------------
// 3. rules 2 and 3: one warp per (row, group)

constexpr int kFinishThreads = 256;
constexpr int kFinishWarps = kFinishThreads / kWarpSize;

template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    vq_finish_kernel(ArgminParams p, int num_groups, int32_t* __restrict__ codes, float* __restrict__ sqdist) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kFinishWarps + threadIdx.x / kWarpSize;
  if (item >= p.n * num_groups) return;  // the whole warp leaves together
  const int64_t row = item / num_groups;
  const int g = static_cast<int>(item % num_groups);
  const T* __restrict__ xg = x + row * p.x_stride_row + static_cast<int64_t>(g) * p.dg * p.x_stride_col;

  float sq = 0.0f;
  for (int d = lane; d < p.dg; d += kWarpSize) {
    const float v = to_float(xg[d * p.x_stride_col]);
    sq = fmaf(v, v, sq);
  }
  sq = warp_sum(sq);
  int code = static_cast<int>(p.keys[item] & 0xffffffffull);
  if (!isfinite(sq)) code = 0;  // rule 2

  const T* __restrict__ e = static_cast<const T*>(p.codebooks) + (static_cast<int64_t>(g) * p.k + code) * p.dg;
  float dist = 0.0f;
  for (int d = lane; d < p.dg; d += kWarpSize) {
    const float diff = to_float(xg[d * p.x_stride_col]) - to_float(e[d]);
    dist = fmaf(diff, diff, dist);
  }
  dist = warp_sum(dist);  // rule 3
  if (lane == 0) {
    codes[item] = code;
    sqdist[item] = dist;
  }
}

// ---------------------------------------------------------------------------
// launcher

constexpr size_t kWorkspaceAlign = 256;

int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

size_t sqnorm_bytes(int64_t g, int64_t k) {
  const size_t bytes = static_cast<size_t>(g) * static_cast<size_t>(k) * sizeof(float);
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// Tensor cores for 16-bit inputs wide enough to fill a WMMA k-step, when the
// WMMA kernel was compiled (PTX) for sm_80+ (bf16 fragments need it).
template <typename T>
cudaError_t use_tensor_cores(int dg, bool* use) {
  *use = false;
  if constexpr (std::is_same<T, float>::value) {
    return cudaSuccess;
  } else {
    if (dg < kTcFrag) return cudaSuccess;
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, vq_argmin_wmma_kernel<T>);
    if (err != cudaSuccess) return err;
    *use = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
    return cudaSuccess;
  }
}

template <typename T>
void launch_argmin(dim3 grid, const ArgminParams& p, bool tensor_cores, cudaStream_t stream) {
  if constexpr (!std::is_same<T, float>::value) {
    if (tensor_cores) {
      vq_argmin_wmma_kernel<T><<<grid, kTcThreads, 0, stream>>>(p);
      return;
    }
  }
  vq_argmin_simt_kernel<T><<<grid, kSimtThreads, 0, stream>>>(p);
}

template <typename T>
cudaError_t vq_encode_typed(ArgminParams p, int num_groups, void* workspace, int32_t* codes, float* sqdist,
                            cudaStream_t stream) {
  float* e_sq = static_cast<float*>(workspace);
  unsigned long long* keys =
      reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) + sqnorm_bytes(num_groups, p.k));
  p.e_sq = e_sq;
  p.keys = keys;

  const int64_t codewords = static_cast<int64_t>(num_groups) * p.k;
  const int64_t items = p.n * num_groups;
  const int64_t norm_blocks = (codewords + kNormThreads / kWarpSize - 1) / (kNormThreads / kWarpSize);
  const int64_t row_blocks = (p.n + kTileRows - 1) / kTileRows;
  const int64_t finish_blocks = (items + kFinishWarps - 1) / kFinishWarps;
  if (norm_blocks > kMaxGridX || row_blocks > kMaxGridX || finish_blocks > kMaxGridX) return cudaErrorInvalidValue;

  int device = 0;
  int sms = 0;
  bool tensor_cores = false;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = use_tensor_cores<T>(p.dg, &tensor_cores);
  if (err != cudaSuccess) return err;

  // Split the codewords across blocks when rows x groups alone cannot fill the
  // GPU (few tokens): aim at ~4 blocks per SM, at least one tile per split.
  const int num_tiles = (p.k + kTileCodes - 1) / kTileCodes;
  const int64_t blocks = row_blocks * num_groups;
  const int64_t wanted = (4LL * sms + blocks - 1) / blocks;
  const int splits_wanted = static_cast<int>(min_i64(min_i64(wanted, num_tiles), 65535));
  p.tiles_per_split = (num_tiles + splits_wanted - 1) / splits_wanted;
  const int splits = (num_tiles + p.tiles_per_split - 1) / p.tiles_per_split;

  codeword_sqnorms_kernel<T><<<static_cast<unsigned>(norm_blocks), kNormThreads, 0, stream>>>(
      static_cast<const T*>(p.codebooks), codewords, p.dg, e_sq);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(keys, 0xff, static_cast<size_t>(items) * sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;

  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(num_groups), static_cast<unsigned>(splits));
  launch_argmin<T>(grid, p, tensor_cores, stream);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  vq_finish_kernel<T><<<static_cast<unsigned>(finish_blocks), kFinishThreads, 0, stream>>>(p, num_groups, codes, sqdist);
  return cudaGetLastError();
}

}  // namespace

extern "C" size_t astra_vq_encode_workspace_bytes(int64_t n, int64_t g, int64_t k) {
  return sqnorm_bytes(g, k) + static_cast<size_t>(n) * static_cast<size_t>(g) * sizeof(unsigned long long);
}

extern "C" cudaError_t astra_vq_encode(astra_dtype dtype, const void* x, int64_t n, int64_t x_stride_row,
                                       int64_t x_stride_col, const void* codebooks, int64_t g, int64_t k, int64_t dg,
                                       void* workspace, int32_t* codes, float* sqdist, cudaStream_t stream) {
  if (n < 0 || g < 1 || g > 65535 || k < 2 || k > (1LL << 30) || dg < 1 || dg > (1LL << 30)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  ArgminParams p{};
  p.x = x;
  p.n = n;
  p.x_stride_row = x_stride_row;
  p.x_stride_col = x_stride_col;
  p.codebooks = codebooks;
  p.k = static_cast<int>(k);
  p.dg = static_cast<int>(dg);
  const int groups = static_cast<int>(g);
  switch (dtype) {
    case ASTRA_DTYPE_FLOAT32:
      return vq_encode_typed<float>(p, groups, workspace, codes, sqdist, stream);
    case ASTRA_DTYPE_FLOAT16:
      return vq_encode_typed<__half>(p, groups, workspace, codes, sqdist, stream);
    case ASTRA_DTYPE_BFLOAT16:
      return vq_encode_typed<__nv_bfloat16>(p, groups, workspace, codes, sqdist, stream);
  }
  return cudaErrorInvalidValue;
}
