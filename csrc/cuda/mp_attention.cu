// Mixed-precision attention forward (astra_kernels.reference.mixed_precision_attention):
// local queries attend to remote tokens known only by their VQ codes, then to the
// full-precision local keys.
//
// A block owns BLOCK_M rows of one (batch, kv head). Row r is query r / GROUP of
// query head kv_head * GROUP + r % GROUP (GROUP = H / Hkv), so the query heads that
// read one kv head share every key tile (remote rows are gathered once for all of
// them) and the rows of a block cover few consecutive queries (tight causal bounds).
// An FA2-style online softmax (row max m, row sum l, output acc; fp32, natural-log
// domain) runs over key tiles staged in shared memory, in the contract's key order:
//   remote  "codewords" (G = 1): the K projected codewords (table row + bias), each
//           with the score bias log(count), count = this batch row's number of remote
//           tokens with that code (an exact integer histogram; count 0 hides it);
//           or "tokens": each remote token's K/V is the fp32 sum of its G table rows
//           (+ bias), gathered tile by tile into shared memory, never into global;
//   local   the full-precision keys; the causal mask (query i sees local key j iff
//           j <= i + Tl - Tq) is evaluated only on tiles that cross it.
// Epilogue: out = acc / l and lse = m + log(l); a row that saw no key (l = 0) gets
// out 0 and lse -inf.
//
// Two kernels (the launcher picks per call):
//   * CUDA cores, every dtype and d <= 256 (head dim classes 32/64/128/256, padded
//     with zeros): queries, keys, values and probabilities in fp32.
//   * Tensor cores, fp16/bf16 with d % 16 == 0 and d <= 128 on sm_80+: mma.sync
//     m16n8k16 with fp32 accumulators, the FA2 register layout (scores never leave
//     registers). fp32 operands that 16 bits cannot hold exactly (remote K/V that are
//     sums of table rows or carry a bias, and the probabilities) enter the MMA as
//     hi + lo 16-bit parts, so they keep ~2x the 16-bit precision, like the fp32
//     reference. Queries and local keys/values are exact in their own dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "astra_cuda.h"

namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridX = 2147483647;
constexpr int kMaxHeadDim = 256;
// Bound on Tq*GROUP, Tl, Tr and K: tile arithmetic stays in int.
constexpr int64_t kMaxLength = int64_t{1} << 30;
// Both attention kernels aim at 2 resident blocks per SM (shared memory allows it for
// every head dim class on sm_90); without the hint ptxas capped registers lower and spilled.
constexpr int kMinBlocksPerSm = 2;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

enum RemoteKind : int { kNoRemote = 0, kRemoteTokens = 1, kRemoteCodewords = 2 };

struct AttnParams {
  const void* q;  // (B, H, Tq, d)
  int64_t q_stride[4];
  const void* k_local;  // (B, Hkv, Tl, d)
  int64_t k_stride[4];
  const void* v_local;  // (B, Hkv, Tl, d)
  int64_t v_stride[4];
  const int32_t* codes;   // (B, Tr, G) contiguous
  const int32_t* counts;  // (B, K) tokens per codeword (codewords only)
  const void* k_table;    // (G, K, Hkv*d) contiguous
  const void* v_table;
  const void* k_bias;  // (Hkv*d,) or null
  const void* v_bias;
  void* out;   // (B, H, Tq, d) contiguous
  float* lse;  // (B, H, Tq) contiguous
  int batch, heads, kv_heads, group, queries, local, remote, groups, codebook_size, head_dim;
  int row_blocks;  // blocks per (batch, kv head)
  int remote_kind;
  int causal;
  float scale;
};

// This block's (batch, kv head) and first row.
struct BlockRows {
  int64_t b;
  int kvh;
  int row0;
};

__device__ __forceinline__ BlockRows block_rows(const AttnParams& p, int block_m) {
  const int64_t block = blockIdx.x;
  const int64_t bh = block / p.row_blocks;
  BlockRows r;
  r.row0 = static_cast<int>(block - bh * p.row_blocks) * block_m;
  r.kvh = static_cast<int>(bh % p.kv_heads);
  r.b = bh / p.kv_heads;
  return r;
}

// Query element (row, dd) of this block's (batch, kv head); 0 past the rows or past d.
template <typename T>
__device__ __forceinline__ T load_query(const AttnParams& p, const BlockRows& blk, int row, int dd) {
  if (row >= p.queries * p.group || dd >= p.head_dim) return from_float<T>(0.0f);
  const int64_t query = row / p.group;
  const int64_t head = static_cast<int64_t>(blk.kvh) * p.group + row % p.group;
  return static_cast<const T*>(p.q)[blk.b * p.q_stride[0] + head * p.q_stride[1] + query * p.q_stride[2] +
                                    dd * p.q_stride[3]];
}

// Key segments: remote tokens or codewords (one of them), then local keys.
enum Segment : int { kSegTokens = 0, kSegCodewords = 1, kSegLocal = 2 };

struct KeyValue {
  float k, v;
};

__device__ __forceinline__ int segment_keys(const AttnParams& p, Segment seg) {
  return seg == kSegLocal ? p.local : (seg == kSegCodewords ? p.codebook_size : p.remote);
}

// Feature dd of key `key` (in range) of this block's kv head.
template <typename T>
__device__ __forceinline__ KeyValue key_value(const AttnParams& p, Segment seg, const BlockRows& blk, int key,
                                              int dd) {
  KeyValue kv;
  if (seg == kSegLocal) {
    const int64_t k_off = blk.b * p.k_stride[0] + blk.kvh * p.k_stride[1] + key * p.k_stride[2] + dd * p.k_stride[3];
    const int64_t v_off = blk.b * p.v_stride[0] + blk.kvh * p.v_stride[1] + key * p.v_stride[2] + dd * p.v_stride[3];
    kv.k = to_float(static_cast<const T*>(p.k_local)[k_off]);
    kv.v = to_float(static_cast<const T*>(p.v_local)[v_off]);
    return kv;
  }
  const T* k_table = static_cast<const T*>(p.k_table);
  const T* v_table = static_cast<const T*>(p.v_table);
  const int64_t width = static_cast<int64_t>(p.kv_heads) * p.head_dim;
  const int64_t col = static_cast<int64_t>(blk.kvh) * p.head_dim + dd;
  if (seg == kSegCodewords) {
    const int64_t at = key * width + col;
    kv.k = to_float(k_table[at]);
    kv.v = to_float(v_table[at]);
  } else {
    // Sum of the token's G table rows, in group order like the reference.
    const int32_t* codes = p.codes + (blk.b * p.remote + key) * p.groups;
    kv.k = 0.0f;
    kv.v = 0.0f;
    for (int g = 0; g < p.groups; ++g) {
      const int64_t at = (static_cast<int64_t>(g) * p.codebook_size + codes[g]) * width + col;
      kv.k += to_float(k_table[at]);
      kv.v += to_float(v_table[at]);
    }
  }
  if (p.k_bias != nullptr) kv.k += to_float(static_cast<const T*>(p.k_bias)[col]);
  if (p.v_bias != nullptr) kv.v += to_float(static_cast<const T*>(p.v_bias)[col]);
  return kv;
}

// Stages keys [n0, n0 + kBlockN) of a segment: store(n, dd, kv) for every n < kBlockN and
// dd < kDim (zeros past the segment or past d), and key_bias[n], the additive score bias
// (0; log(count) for codewords; -inf hides unused codewords and keys past the segment).
template <typename T, int kBlockN, int kDim, int kThreads, typename Store>
__device__ __forceinline__ void stage_keys(const AttnParams& p, Segment seg, const BlockRows& blk, int n0,
                                           Store store, float* key_bias) {
  const int n_keys = segment_keys(p, seg);
  for (int idx = threadIdx.x; idx < kBlockN * kDim; idx += kThreads) {
    const int n = idx / kDim;
    const int dd = idx % kDim;
    const int key = n0 + n;
    KeyValue kv{0.0f, 0.0f};
    if (key < n_keys && dd < p.head_dim) kv = key_value<T>(p, seg, blk, key, dd);
    store(n, dd, kv);
  }
  if (threadIdx.x < kBlockN) {
    const int key = n0 + static_cast<int>(threadIdx.x);
    float bias = -INFINITY;
    if (key < n_keys) {
      bias = 0.0f;
      if (seg == kSegCodewords) {
        const int count = p.counts[blk.b * p.codebook_size + key];
        bias = count > 0 ? logf(static_cast<float>(count)) : -INFINITY;
      }
    }
    key_bias[threadIdx.x] = bias;
  }
}

// Local keys this block's rows may see: [0, end); with `causal`, keys below `full` are
// visible to all of them (tiles past it need the causal mask).
struct LocalKeys {
  int end;
  int full;
};

__device__ __forceinline__ LocalKeys local_keys(const AttnParams& p, int row0, int block_m) {
  if (!p.causal) return {p.local, p.local};
  const int shift = p.local - p.queries;
  const int first = row0 / p.group;
  const int last = min((row0 + block_m - 1) / p.group, p.queries - 1);
  const int end = min(max(last + shift + 1, 0), p.local);
  return {end, min(max(first + shift + 1, 0), end)};
}

// Online-softmax rescale point: m_new, or 0 while the row has seen no key (m = -inf),
// so that exp(-inf - 0) = 0 instead of NaN.
__device__ __forceinline__ float softmax_pivot(float m_new) { return m_new == -INFINITY ? 0.0f : m_new; }

// ---------------------------------------------------------------------------
// CUDA-core kernel. 128 threads as 16 row groups x 8 column lanes: thread (tr, tc)
// owns rows tr*kRows + i of the block, score columns tc*4 + j of a key tile and
// output columns c*32 + tc*4 + e (float4 groups). Q^T, K^T, V and P^T sit in shared
// memory as fp32 so the inner loops read float4/float2 vectors.

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

template <typename T, int kDim>
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
      stage_keys<T, kSimtBlockN, kDim, kSimtThreads>(p, seg, blk, n0, store, key_bias);
      attend(n0, false);
    }
  }
  const LocalKeys local = local_keys(p, blk.row0, S::kBlockM);
  for (int n0 = 0; n0 < local.end; n0 += kSimtBlockN) {
    stage_keys<T, kSimtBlockN, kDim, kSimtThreads>(p, kSegLocal, blk, n0, store, key_bias);
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

// ---------------------------------------------------------------------------
// Tensor-core kernel (fp16/bf16, d % 16 == 0, d <= 128). 4 warps; warp w owns rows
// 16w..16w+15 of the block. Fragment layouts of mma.sync m16n8k16 (g = lane / 4,
// t = lane % 4; 32-bit registers hold two 16-bit elements, lower index in the low half):
//   A (16 x 16, row major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..),
//                           a3 = (g+8, 2t+8..)
//   B (16 x 8, k x n):      b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t+8.., n = g)
//   C (16 x 8, fp32):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// so the score accumulators of two adjacent 8-key tiles are exactly the A fragment of
// P for the P.V product. Shared memory: Q [64][kDim+8], K hi/lo [64][kDim+8] (row n =
// key: B of Q.K^T), V^T hi/lo [kDim][64+8] (row = feature: B of P.V), all 16-bit; the
// +8 padding makes every fragment load conflict-free.

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

template <typename T, int kDim>
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

  // split: the keys/values need their lo parts (fp32 sums of table rows, or biased rows).
  auto stage = [&](Segment seg, int n0, bool split) {
    stage_keys<T, kTcBlockN, kDim, kTcThreads>(
        p, seg, blk, n0,
        [&](int n, int dd, KeyValue kv) {
          const T kh = from_float<T>(kv.k);
          const T vh = from_float<T>(kv.v);
          k_hi[n * S::kQPitch + dd] = bits16(kh);
          vt_hi[dd * S::kVPitch + n] = bits16(vh);
          if (split) {
            k_lo[n * S::kQPitch + dd] = bits16(from_float<T>(kv.k - to_float(kh)));
            vt_lo[dd * S::kVPitch + n] = bits16(from_float<T>(kv.v - to_float(vh)));
          }
        },
        key_bias);
  };

  auto attend = [&](int n0, bool causal, bool split) {
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
          if (split) {
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
          if (split) {
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
    const int n_keys = segment_keys(p, seg);
    for (int n0 = 0; n0 < n_keys; n0 += kTcBlockN) {
      stage(seg, n0, split);
      attend(n0, false, split);
    }
  }
  const LocalKeys local = local_keys(p, blk.row0, kTcBlockM);
  for (int n0 = 0; n0 < local.end; n0 += kTcBlockN) {
    stage(kSegLocal, n0, false);
    attend(n0, p.causal && n0 + kTcBlockN > local.full, false);
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

// ---------------------------------------------------------------------------
// Codeword histogram: counts[b, code] = number of remote tokens of batch row b with
// that code (G = 1), exact integers.

constexpr int kCountThreads = 256;
constexpr int64_t kMaxCountBlocks = 65535;  // grid-stride beyond this

__global__ void __launch_bounds__(kCountThreads)
    codeword_counts_kernel(const int32_t* __restrict__ codes, int64_t n, int remote, int codebook_size,
                           int32_t* __restrict__ counts) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCountThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCountThreads + threadIdx.x; i < n; i += stride)
    atomicAdd(&counts[(i / remote) * codebook_size + codes[i]], 1);
}

// ---------------------------------------------------------------------------
// launcher

constexpr size_t kWorkspaceAlign = 256;

bool needs_counts(const astra_mp_attention_problem& pr) {
  return pr.formulation == ASTRA_ATTENTION_CODEWORDS && pr.remote_tokens > 0;
}

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

// Tensor cores for 16-bit inputs with d % 16 == 0, d <= 128, when the kernel was
// compiled for sm_80+ (mma.sync m16n8k16 with bf16 needs it).
template <typename T>
cudaError_t use_tensor_cores(int head_dim, bool* use) {
  *use = false;
  if constexpr (std::is_same<T, float>::value) {
    return cudaSuccess;
  } else {
    if (head_dim % 16 != 0 || head_dim > 128) return cudaSuccess;
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, mp_attention_mma_kernel<T, 128>);
    if (err != cudaSuccess) return err;
    *use = attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
    return cudaSuccess;
  }
}

template <typename T>
cudaError_t mp_attention_typed(const AttnParams& p, cudaStream_t stream) {
  bool tensor_cores = false;
  const cudaError_t err = use_tensor_cores<T>(p.head_dim, &tensor_cores);
  if (err != cudaSuccess) return err;
  if constexpr (!std::is_same<T, float>::value) {
    if (tensor_cores) {
      if (p.head_dim <= 64)
        return launch(mp_attention_mma_kernel<T, 64>, p, kTcBlockM, kTcThreads, TcShape<64>::kSmemBytes, stream);
      return launch(mp_attention_mma_kernel<T, 128>, p, kTcBlockM, kTcThreads, TcShape<128>::kSmemBytes, stream);
    }
  }
  if (p.head_dim <= 32)
    return launch(mp_attention_simt_kernel<T, 32>, p, SimtShape<32>::kBlockM, kSimtThreads, SimtShape<32>::kSmemBytes,
                  stream);
  if (p.head_dim <= 64)
    return launch(mp_attention_simt_kernel<T, 64>, p, SimtShape<64>::kBlockM, kSimtThreads, SimtShape<64>::kSmemBytes,
                  stream);
  if (p.head_dim <= 128)
    return launch(mp_attention_simt_kernel<T, 128>, p, SimtShape<128>::kBlockM, kSimtThreads,
                  SimtShape<128>::kSmemBytes, stream);
  return launch(mp_attention_simt_kernel<T, 256>, p, SimtShape<256>::kBlockM, kSimtThreads,
                SimtShape<256>::kSmemBytes, stream);
}

bool valid_problem(const astra_mp_attention_problem& pr) {
  const bool dtype_ok = pr.dtype == ASTRA_DTYPE_FLOAT32 || pr.dtype == ASTRA_DTYPE_FLOAT16 ||
                        pr.dtype == ASTRA_DTYPE_BFLOAT16;
  const bool formulation_ok = pr.formulation == ASTRA_ATTENTION_TOKENS ||
                           (pr.formulation == ASTRA_ATTENTION_CODEWORDS && pr.groups == 1);
  if (!dtype_ok || !formulation_ok) return false;
  if (pr.batch < 0 || pr.heads < 1 || pr.kv_heads < 1 || pr.heads % pr.kv_heads != 0) return false;
  if (pr.head_dim < 1 || pr.head_dim > kMaxHeadDim || pr.groups < 1 || pr.codebook_size < 1) return false;
  if (pr.queries < 0 || pr.local_keys < 0 || pr.remote_tokens < 0 || !(pr.scale == pr.scale)) return false;
  const int64_t rows = pr.queries * (pr.heads / pr.kv_heads);
  return rows <= kMaxLength && pr.local_keys <= kMaxLength && pr.remote_tokens <= kMaxLength &&
         pr.codebook_size <= kMaxLength && pr.batch <= kMaxLength && pr.heads <= kMaxLength;
}

}  // namespace

extern "C" size_t astra_mp_attention_workspace_bytes(const astra_mp_attention_problem* problem) {
  if (!needs_counts(*problem)) return 0;
  const size_t bytes = static_cast<size_t>(problem->batch) * static_cast<size_t>(problem->codebook_size) *
                       sizeof(int32_t);
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

extern "C" cudaError_t astra_mp_attention(const astra_mp_attention_problem* problem, void* workspace,
                                          cudaStream_t stream) {
  const astra_mp_attention_problem& pr = *problem;
  if (!valid_problem(pr)) return cudaErrorInvalidValue;
  if (pr.batch == 0 || pr.queries == 0) return cudaSuccess;

  AttnParams p{};
  p.q = pr.q;
  p.k_local = pr.k_local;
  p.v_local = pr.v_local;
  for (int i = 0; i < 4; ++i) {
    p.q_stride[i] = pr.q_strides[i];
    p.k_stride[i] = pr.k_strides[i];
    p.v_stride[i] = pr.v_strides[i];
  }
  p.codes = pr.remote_codes;
  p.k_table = pr.k_table;
  p.v_table = pr.v_table;
  p.k_bias = pr.k_bias;
  p.v_bias = pr.v_bias;
  p.out = pr.out;
  p.lse = pr.lse;
  p.batch = static_cast<int>(pr.batch);
  p.heads = static_cast<int>(pr.heads);
  p.kv_heads = static_cast<int>(pr.kv_heads);
  p.group = static_cast<int>(pr.heads / pr.kv_heads);
  p.queries = static_cast<int>(pr.queries);
  p.local = static_cast<int>(pr.local_keys);
  p.remote = static_cast<int>(pr.remote_tokens);
  p.groups = static_cast<int>(pr.groups);
  p.codebook_size = static_cast<int>(pr.codebook_size);
  p.head_dim = static_cast<int>(pr.head_dim);
  p.causal = pr.causal != 0;
  p.scale = pr.scale;
  p.remote_kind = pr.remote_tokens == 0 ? kNoRemote
                                        : (pr.formulation == ASTRA_ATTENTION_CODEWORDS ? kRemoteCodewords : kRemoteTokens);

  if (needs_counts(pr)) {
    int32_t* counts = static_cast<int32_t*>(workspace);
    const int64_t n = pr.batch * pr.remote_tokens;
    cudaError_t err = cudaMemsetAsync(counts, 0, static_cast<size_t>(pr.batch * pr.codebook_size) * sizeof(int32_t),
                                      stream);
    if (err != cudaSuccess) return err;
    const int64_t blocks = (n + kCountThreads - 1) / kCountThreads;
    codeword_counts_kernel<<<static_cast<unsigned>(blocks < kMaxCountBlocks ? blocks : kMaxCountBlocks),
                             kCountThreads, 0, stream>>>(pr.remote_codes, n, p.remote, p.codebook_size, counts);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    p.counts = counts;
  }

  switch (pr.dtype) {
    case ASTRA_DTYPE_FLOAT32:
      return mp_attention_typed<float>(p, stream);
    case ASTRA_DTYPE_FLOAT16:
      return mp_attention_typed<__half>(p, stream);
    case ASTRA_DTYPE_BFLOAT16:
      return mp_attention_typed<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}
