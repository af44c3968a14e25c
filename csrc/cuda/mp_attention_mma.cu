// Mixed-precision attention on tensor cores, fp16/bf16 with d % 16 == 0 and d <= 128 on
// sm_80+: mma.sync m16n8k16 with fp32 accumulators, the FA2 register layout (scores never
// leave registers). fp32 operands that 16 bits cannot hold exactly (remote K/V that are
// sums of table rows or carry a bias, rotated remote keys, and the probabilities) enter the
// MMA as hi + lo 16-bit parts, so they keep about twice the 16-bit precision, like the fp32
// reference.
// Queries and local keys/values are exact in their own dtype. The algorithm: mp_attention.cu.
//
// 4 warps; warp w owns rows 16w..16w+15 of the block. Fragment layouts of mma.sync
// m16n8k16 (g = lane / 4, t = lane % 4; 32-bit registers hold two 16-bit elements, lower
// index in the low half):
//   A (16 x 16, row major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..),
//                           a3 = (g+8, 2t+8..)
//   B (16 x 8, k x n):      b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t+8.., n = g)
//   C (16 x 8, fp32):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// so the score accumulators of two adjacent 8-key tiles are exactly the A fragment of
// P for the P.V product. Shared memory: Q [64][kDim+8], K hi/lo [64][kDim+8] (row n =
// key: B of Q.K^T), V^T hi/lo [kDim][64+8] (row = feature: B of P.V), all 16-bit; the
// +8 padding makes every fragment load conflict-free.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mp_attention_launch.cuh"
#include "mp_attention_loaders.cuh"

namespace astra::mp_attention {

namespace {

constexpr int kTcThreads = 128;
constexpr int kTcBlockM = 64;
constexpr int kTcBlockN = 64;
constexpr int kTcKeyTiles = kTcBlockN / 8;  // 8-key accumulator tiles per row block
static_assert(kTcBlockM == 16 * (kTcThreads / kWarpSize), "16 rows per warp");

template <int kDim>
struct TcShape {
  static_assert(kDim % 16 == 0 && kDim <= 128, "tensor-core head dim class");
  static constexpr int kQPitch = kDim + 8;  // 16-bit elements
  static constexpr int kVPitch = kTcBlockN + 8;
  static constexpr int kQElems = kTcBlockM * kQPitch;
  static constexpr int kKElems = kTcBlockN * kQPitch;
  static constexpr int kVElems = kDim * kVPitch;
  static constexpr size_t kSmemBytes =
      sizeof(uint16_t) * static_cast<size_t>(kQElems + 2 * kKElems + 2 * kVElems) + sizeof(float) * kTcBlockN;
  static_assert((sizeof(uint16_t) * (kQElems + 2 * kKElems + 2 * kVElems)) % 16 == 0, "key_bias alignment");
};

// d += a * b: one warp-wide m16n8k16 MMA with fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  // The launcher only picks the tensor-core kernel when it was compiled for sm_80+.
  __trap();
#endif
}

template <typename T>
__device__ __forceinline__ uint16_t bits16(T v) {
  uint16_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// Two consecutive 16-bit elements of shared memory as one fragment register.
__device__ __forceinline__ uint32_t pair_at(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// (x0, x1) in fp32 -> hi = (x0, x1) rounded to T and lo = the rounding errors rounded to T.
template <typename T>
__device__ __forceinline__ void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const T h0 = from_float<T>(x0);
  const T h1 = from_float<T>(x1);
  hi = static_cast<uint32_t>(bits16(h0)) | (static_cast<uint32_t>(bits16(h1)) << 16);
  lo = static_cast<uint32_t>(bits16(from_float<T>(x0 - to_float(h0)))) |
       (static_cast<uint32_t>(bits16(from_float<T>(x1 - to_float(h1)))) << 16);
}

// kRotated: p.rotation is set (remote keys rotated while staged).
template <typename T, int kDim, bool kRotated>
__global__ void __launch_bounds__(kTcThreads, kMinBlocksPerSm) mp_attention_mma_kernel(AttnParams p) {
  using S = TcShape<kDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem);
  uint16_t* k_hi = qs + S::kQElems;
  uint16_t* k_lo = k_hi + S::kKElems;
  uint16_t* vt_hi = k_lo + S::kKElems;
  uint16_t* vt_lo = vt_hi + S::kVElems;
  float* key_bias = reinterpret_cast<float*>(vt_lo + S::kVElems);

  const int tid = threadIdx.x;
  const int lane = tid % kWarpSize;
  const int g = lane / 4;
  const int t = lane % 4;
  const int warp_row = (tid / kWarpSize) * 16;
  const BlockRows blk = block_rows(p, kTcBlockM);
  const int shift = p.local - p.queries;
  const int k_steps = p.head_dim / 16;  // 16-feature steps of Q.K^T
  const int out_tiles = p.head_dim / 8;  // 8-feature tiles of P.V

  for (int idx = tid; idx < kTcBlockM * kDim; idx += kTcThreads) {
    const int r = idx / kDim;
    const int dd = idx % kDim;
    qs[r * S::kQPitch + dd] = bits16(load_query<T>(p, blk, blk.row0 + r, dd));
  }

  // Rows g and g + 8 of the warp's 16: index h = 0, 1.
  int query[2];
  float m[2];
  float l[2];  // this lane's share of the row sum
  float acc[kDim / 8][4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    query[h] = (blk.row0 + warp_row + g + 8 * h) / p.group;
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
#pragma unroll
  for (int nt = 0; nt < kDim / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;

  // split_k, split_v: the keys, the values need their lo parts (fp32 sums of table rows, biased
  // or rotated rows).
  auto stage = [&](Segment seg, int n0, bool split_k, bool split_v) {
    stage_keys<T, kTcBlockN, kDim, kTcThreads, kRotated>(
        p, seg, blk, n0,
        [&](int n, int dd, KeyValue kv) {
          const T kh = from_float<T>(kv.k);
          const T vh = from_float<T>(kv.v);
          k_hi[n * S::kQPitch + dd] = bits16(kh);
          vt_hi[dd * S::kVPitch + n] = bits16(vh);
          if (split_k) k_lo[n * S::kQPitch + dd] = bits16(from_float<T>(kv.k - to_float(kh)));
          if (split_v) vt_lo[dd * S::kVPitch + n] = bits16(from_float<T>(kv.v - to_float(vh)));
        },
        key_bias);
  };

  auto attend = [&](int n0, bool causal, bool split_k, bool split_v) {
    __syncthreads();  // the tile (and Q) are staged
    float s[kTcKeyTiles][4];
#pragma unroll
    for (int nt = 0; nt < kTcKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kDim / 16; ++ks) {
      if (ks < k_steps) {
        const uint16_t* q_frag = qs + (warp_row + g) * S::kQPitch + ks * 16 + 2 * t;
        const uint32_t a[4] = {pair_at(q_frag), pair_at(q_frag + 8 * S::kQPitch), pair_at(q_frag + 8),
                               pair_at(q_frag + 8 * S::kQPitch + 8)};
#pragma unroll
        for (int nt = 0; nt < kTcKeyTiles; ++nt) {
          const int k_at = (nt * 8 + g) * S::kQPitch + ks * 16 + 2 * t;
          const uint32_t b[2] = {pair_at(k_hi + k_at), pair_at(k_hi + k_at + 8)};
          mma_m16n8k16<T>(s[nt], a, b);
          if (split_k) {
            const uint32_t b_lo[2] = {pair_at(k_lo + k_at), pair_at(k_lo + k_at + 8)};
            mma_m16n8k16<T>(s[nt], a, b_lo);
          }
        }
      }
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kTcKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * t + (e & 1);
        const int h = e / 2;
        float score = s[nt][e] * p.scale + key_bias[col];
        if (causal && n0 + col > query[h] + shift) score = -INFINITY;
        s[nt][e] = score;
        tile_max[h] = fmaxf(tile_max[h], score);
      }
    float pivot[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // The 4 lanes of a row are lanes 4g..4g+3.
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullMask, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullMask, tile_max[h], 2));
      const float m_new = fmaxf(m[h], tile_max[h]);
      pivot[h] = softmax_pivot(m_new);
      const float alpha = expf(m[h] - pivot[h]);
      m[h] = m_new;
      l[h] *= alpha;
#pragma unroll
      for (int nt = 0; nt < kDim / 8; ++nt) {
        acc[nt][2 * h] *= alpha;
        acc[nt][2 * h + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < kTcKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float prob = expf(s[nt][e] - pivot[e / 2]);
        s[nt][e] = prob;
        l[e / 2] += prob;
      }
#pragma unroll
    for (int kk = 0; kk < kTcBlockN / 16; ++kk) {
      uint32_t a_hi[4];
      uint32_t a_lo[4];
      split_pair<T>(s[2 * kk][0], s[2 * kk][1], a_hi[0], a_lo[0]);
      split_pair<T>(s[2 * kk][2], s[2 * kk][3], a_hi[1], a_lo[1]);
      split_pair<T>(s[2 * kk + 1][0], s[2 * kk + 1][1], a_hi[2], a_lo[2]);
      split_pair<T>(s[2 * kk + 1][2], s[2 * kk + 1][3], a_hi[3], a_lo[3]);
#pragma unroll
      for (int nt = 0; nt < kDim / 8; ++nt) {
        if (nt < out_tiles) {
          const int v_at = (nt * 8 + g) * S::kVPitch + kk * 16 + 2 * t;
          const uint32_t b[2] = {pair_at(vt_hi + v_at), pair_at(vt_hi + v_at + 8)};
          mma_m16n8k16<T>(acc[nt], a_hi, b);
          mma_m16n8k16<T>(acc[nt], a_lo, b);
          if (split_v) {
            const uint32_t b_lo[2] = {pair_at(vt_lo + v_at), pair_at(vt_lo + v_at + 8)};
            mma_m16n8k16<T>(acc[nt], a_hi, b_lo);
          }
        }
      }
    }
    __syncthreads();  // before the next tile overwrites K and V^T
  };

  if (p.remote_kind != kNoRemote) {
    const Segment seg = p.remote_kind == kRemoteCodewords ? kSegCodewords : kSegTokens;
    // Single table rows without bias are exact in T; sums and biased rows are not.
    const bool split = (seg == kSegTokens && p.groups > 1) || p.k_bias != nullptr || p.v_bias != nullptr;
    // A rotated key is a product of fp32 values: never exact in T. Its values are not rotated.
    const bool split_k = split || (kRotated && seg == kSegTokens);
    const int n_keys = segment_keys(p, seg);
    for (int n0 = 0; n0 < n_keys; n0 += kTcBlockN) {
      stage(seg, n0, split_k, split);
      attend(n0, false, split_k, split);
    }
  }
  const LocalKeys local = local_keys(p, blk.row0, kTcBlockM);
  for (int n0 = 0; n0 < local.end; n0 += kTcBlockN) {
    stage(kSegLocal, n0, false, false);
    attend(n0, p.causal && n0 + kTcBlockN > local.full, false, false);
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float total = l[h];
    total += __shfl_xor_sync(kFullMask, total, 1);
    total += __shfl_xor_sync(kFullMask, total, 2);
    const int row = blk.row0 + warp_row + g + 8 * h;
    if (row >= p.queries * p.group) continue;
    const int64_t head = static_cast<int64_t>(blk.kvh) * p.group + row % p.group;
    const int64_t out_row = (blk.b * p.heads + head) * p.queries + query[h];
    const bool seen = total > 0.0f;
#pragma unroll
    for (int nt = 0; nt < kDim / 8; ++nt) {
      if (nt < out_tiles) {
        const int64_t at = out_row * p.head_dim + nt * 8 + 2 * t;
        out[at] = from_float<T>(seen ? acc[nt][2 * h] / total : 0.0f);
        out[at + 1] = from_float<T>(seen ? acc[nt][2 * h + 1] / total : 0.0f);
      }
    }
    if (t == 0) p.lse[out_row] = seen ? m[h] + logf(total) : -INFINITY;
  }
}

template <typename T, int kDim>
cudaError_t launch_mma_dim(const AttnParams& p, cudaStream_t stream) {
  const auto kernel =
      p.rotation != nullptr ? mp_attention_mma_kernel<T, kDim, true> : mp_attention_mma_kernel<T, kDim, false>;
  return launch(kernel, p, kTcBlockM, kTcThreads, TcShape<kDim>::kSmemBytes, stream);
}

}  // namespace

template <typename T>
cudaError_t tensor_cores_usable(int head_dim, bool* use) {
  *use = false;
  if (head_dim % 16 != 0 || head_dim > 128) return cudaSuccess;
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, mp_attention_mma_kernel<T, 128, false>);
  if (err != cudaSuccess) return err;
  *use = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_mma(const AttnParams& p, cudaStream_t stream) {
  if (p.head_dim <= 64) return launch_mma_dim<T, 64>(p, stream);
  return launch_mma_dim<T, 128>(p, stream);
}

template cudaError_t tensor_cores_usable<__half>(int head_dim, bool* use);
template cudaError_t tensor_cores_usable<__nv_bfloat16>(int head_dim, bool* use);
template cudaError_t launch_mma<__half>(const AttnParams& p, cudaStream_t stream);
template cudaError_t launch_mma<__nv_bfloat16>(const AttnParams& p, cudaStream_t stream);

}  // namespace astra::mp_attention
