// Mixed-precision attention on CUDA cores, every dtype and d <= 256 (head dim classes
// 32/64/128/256, padded with zeros): queries, keys, values and probabilities in fp32. The
// algorithm: mp_attention.cu.
//
// CUDA-core kernel. 128 threads as 16 row groups x 8 column lanes: thread (tr, tc)
// owns rows tr*kRows + i of the block, score columns tc*4 + j of a key tile and
// output columns c*32 + tc*4 + e (float4 groups). Q^T, K^T, V and P^T sit in shared
// memory as fp32 so the inner loops read float4/float2 vectors.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "mp_attention_launch.cuh"
#include "mp_attention_loaders.cuh"

namespace astra::mp_attention {

namespace {

constexpr int kSimtThreads = 128;
constexpr int kSimtBlockN = 32;
constexpr int kSimtLanes = 8;  // threads sharing a row
constexpr int kSimtRowGroups = kSimtThreads / kSimtLanes;
constexpr int kSimtKeysPerLane = kSimtBlockN / kSimtLanes;
static_assert(kSimtKeysPerLane == 4, "one float4 of scores per row and lane");
static_assert(kWarpSize % kSimtLanes == 0, "the lanes of a row sit in one warp");

template <int kDim>
struct SimtShape {
  static_assert(kDim % 32 == 0 && kDim <= kMaxHeadDim, "head dim class");
  static constexpr int kBlockM = kDim <= 128 ? 64 : 32;
  static constexpr int kRows = kBlockM / kSimtRowGroups;  // 4 or 2: one float4 / float2
  static constexpr int kVecs = kDim / 32;                 // float4 output groups per row and lane
  // Pitches keep float4 alignment and stagger banks.
  static constexpr int kQPitch = kBlockM + 4;
  static constexpr int kKPitch = kSimtBlockN + 4;
  static constexpr int kVPitch = kDim + 4;
  static constexpr int kQFloats = kDim * kQPitch;      // Q^T [kDim][kQPitch]
  static constexpr int kKFloats = kDim * kKPitch;      // K^T [kDim][kKPitch]
  static constexpr int kVFloats = kSimtBlockN * kVPitch;  // V [kBlockN][kVPitch]
  static constexpr int kPFloats = kSimtBlockN * kQPitch;  // P^T [kBlockN][kQPitch]
  static constexpr size_t kSmemBytes =
      sizeof(float) * static_cast<size_t>(kQFloats + kKFloats + kVFloats + kPFloats + kSimtBlockN);
};

template <int N>
__device__ __forceinline__ void load_vec(const float* src, float (&dst)[N]) {
  static_assert(N == 2 || N == 4, "float2 or float4");
  if constexpr (N == 4) {
    const float4 v = *reinterpret_cast<const float4*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
  } else {
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
  }
}

// kRotated: p.rotation is set (remote keys rotated while staged).
template <typename T, int kDim, bool kRotated>
__global__ void __launch_bounds__(kSimtThreads, kMinBlocksPerSm) mp_attention_simt_kernel(AttnParams p) {
  using S = SimtShape<kDim>;
  constexpr int kRows = S::kRows;
  extern __shared__ __align__(16) unsigned char smem[];
  float* qt = reinterpret_cast<float*>(smem);
  float* kt = qt + S::kQFloats;
  float* vs = kt + S::kKFloats;
  float* pt = vs + S::kVFloats;
  float* key_bias = pt + S::kPFloats;

  const int tid = threadIdx.x;
  const int tc = tid % kSimtLanes;
  const int tr = tid / kSimtLanes;
  const BlockRows blk = block_rows(p, S::kBlockM);
  const int shift = p.local - p.queries;
  // Padded dims are zero in Q and K: the dot stops at d rounded up to 8.
  const int d_dot = (p.head_dim + 7) & ~7;

  for (int idx = tid; idx < S::kBlockM * kDim; idx += kSimtThreads) {
    const int r = idx / kDim;
    const int dd = idx % kDim;
    qt[dd * S::kQPitch + r] = to_float(load_query<T>(p, blk, blk.row0 + r, dd));
  }

  int query[kRows];
  float m[kRows];
  float l[kRows];  // this lane's share of the row sum
  float acc[kRows][kDim / 8];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    query[i] = (blk.row0 + tr * kRows + i) / p.group;
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDim / 8; ++c) acc[i][c] = 0.0f;
  }

  auto store = [&](int n, int dd, KeyValue kv) {
    kt[dd * S::kKPitch + n] = kv.k;
    vs[n * S::kVPitch + dd] = kv.v;
  };

  // Folds the staged tile (keys n0 + [0, kBlockN)) into (m, l, acc); `causal` applies
  // the local causal mask. Ends with a barrier: the tile buffers are free again.
  auto attend = [&](int n0, bool causal) {
    __syncthreads();  // the tile (and Q) are staged
    float s[kRows][kSimtKeysPerLane];
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kSimtKeysPerLane; ++j) s[i][j] = 0.0f;
    for (int d0 = 0; d0 < d_dot; d0 += 8) {
#pragma unroll
      for (int dd = d0; dd < d0 + 8; ++dd) {
        float a[kRows];
        float b[kSimtKeysPerLane];
        load_vec(&qt[dd * S::kQPitch + tr * kRows], a);
        load_vec(&kt[dd * S::kKPitch + tc * kSimtKeysPerLane], b);
#pragma unroll
        for (int i = 0; i < kRows; ++i)
#pragma unroll
          for (int j = 0; j < kSimtKeysPerLane; ++j) s[i][j] = fmaf(a[i], b[j], s[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSimtKeysPerLane; ++j) {
        const int col = tc * kSimtKeysPerLane + j;
        // (q.k) * scale + bias, rounded in the reference's order.
        float score = s[i][j] * p.scale + key_bias[col];
        if (causal && n0 + col > query[i] + shift) score = -INFINITY;
        s[i][j] = score;
        tile_max = fmaxf(tile_max, score);
      }
#pragma unroll
      for (int offset = 1; offset < kSimtLanes; offset <<= 1)
        tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, offset));
      const float m_new = fmaxf(m[i], tile_max);
      const float pivot = softmax_pivot(m_new);
      const float alpha = expf(m[i] - pivot);
      m[i] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kSimtKeysPerLane; ++j) {
        const float prob = expf(s[i][j] - pivot);
        pt[(tc * kSimtKeysPerLane + j) * S::kQPitch + tr * kRows + i] = prob;
        sum += prob;
      }
      l[i] = fmaf(l[i], alpha, sum);
#pragma unroll
      for (int c = 0; c < kDim / 8; ++c) acc[i][c] *= alpha;
    }
    __syncthreads();  // P^T complete
#pragma unroll 4
    for (int n = 0; n < kSimtBlockN; ++n) {
      float prob[kRows];
      load_vec(&pt[n * S::kQPitch + tr * kRows], prob);
#pragma unroll
      for (int c = 0; c < S::kVecs; ++c) {
        if (c * 32 < p.head_dim) {
          float v[4];
          load_vec(&vs[n * S::kVPitch + c * 32 + tc * 4], v);
#pragma unroll
          for (int i = 0; i < kRows; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][c * 4 + e] = fmaf(prob[i], v[e], acc[i][c * 4 + e]);
        }
      }
    }
    __syncthreads();  // before the next tile overwrites K^T, V, P^T
  };

  if (p.remote_kind != kNoRemote) {
    const Segment seg = p.remote_kind == kRemoteCodewords ? kSegCodewords : kSegTokens;
    const int n_keys = segment_keys(p, seg);
    for (int n0 = 0; n0 < n_keys; n0 += kSimtBlockN) {
      stage_keys<T, kSimtBlockN, kDim, kSimtThreads, kRotated>(p, seg, blk, n0, store, key_bias);
      attend(n0, false);
    }
  }
  const LocalKeys local = local_keys(p, blk.row0, S::kBlockM);
  for (int n0 = 0; n0 < local.end; n0 += kSimtBlockN) {
    stage_keys<T, kSimtBlockN, kDim, kSimtThreads, kRotated>(p, kSegLocal, blk, n0, store, key_bias);
    attend(n0, p.causal && n0 + kSimtBlockN > local.full);
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    float total = l[i];
#pragma unroll
    for (int offset = 1; offset < kSimtLanes; offset <<= 1) total += __shfl_xor_sync(kFullMask, total, offset);
    const int row = blk.row0 + tr * kRows + i;
    if (row >= p.queries * p.group) continue;
    const int64_t head = static_cast<int64_t>(blk.kvh) * p.group + row % p.group;
    const int64_t out_row = (blk.b * p.heads + head) * p.queries + query[i];
    const bool seen = total > 0.0f;
#pragma unroll
    for (int c = 0; c < S::kVecs; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int dd = c * 32 + tc * 4 + e;
        if (dd < p.head_dim) out[out_row * p.head_dim + dd] = from_float<T>(seen ? acc[i][c * 4 + e] / total : 0.0f);
      }
    if (tc == 0) p.lse[out_row] = seen ? m[i] + logf(total) : -INFINITY;
  }
}

template <typename T, int kDim>
cudaError_t launch_simt_dim(const AttnParams& p, cudaStream_t stream) {
  const auto kernel =
      p.rotation != nullptr ? mp_attention_simt_kernel<T, kDim, true> : mp_attention_simt_kernel<T, kDim, false>;
  return launch(kernel, p, SimtShape<kDim>::kBlockM, kSimtThreads, SimtShape<kDim>::kSmemBytes, stream);
}

}  // namespace

template <typename T>
cudaError_t launch_simt(const AttnParams& p, cudaStream_t stream) {
  if (p.head_dim <= 32) return launch_simt_dim<T, 32>(p, stream);
  if (p.head_dim <= 64) return launch_simt_dim<T, 64>(p, stream);
  if (p.head_dim <= 128) return launch_simt_dim<T, 128>(p, stream);
  return launch_simt_dim<T, 256>(p, stream);
}

template cudaError_t launch_simt<float>(const AttnParams& p, cudaStream_t stream);
template cudaError_t launch_simt<__half>(const AttnParams& p, cudaStream_t stream);
template cudaError_t launch_simt<__nv_bfloat16>(const AttnParams& p, cudaStream_t stream);

}  // namespace astra::mp_attention
