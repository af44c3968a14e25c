// Device code shared by the mixed-precision attention kernels (mp_attention_simt.cu,
// mp_attention_mma.cu): their parameters, dtype conversions, the rows a block owns, query
// loads, key/value staging (local keys, remote tokens summed from table rows and optionally
// rotated, codewords), the causal bounds of the local segment and the online-softmax pivot.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace astra::mp_attention {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxHeadDim = 256;
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
  const float* rotation;  // (2, Tr, d/2) cos then sin of the remote tokens' angles; null unless tokens, Tr > 0
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

// Features dd and dd + half of remote token `key` (in range) of this block's kv head, as
// key_value gives them, its key rotated by the token's angle dd (pair (dd, dd + half), half = d/2).
template <typename T>
__device__ __forceinline__ void rotated_token_pair(const AttnParams& p, const BlockRows& blk, int key, int dd,
                                                   int half, KeyValue& first, KeyValue& second) {
  const T* k_table = static_cast<const T*>(p.k_table);
  const T* v_table = static_cast<const T*>(p.v_table);
  const int64_t width = static_cast<int64_t>(p.kv_heads) * p.head_dim;
  const int64_t col = static_cast<int64_t>(blk.kvh) * p.head_dim + dd;
  const int32_t* codes = p.codes + (blk.b * p.remote + key) * p.groups;
  float k0 = 0.0f, k1 = 0.0f, v0 = 0.0f, v1 = 0.0f;
  for (int g = 0; g < p.groups; ++g) {
    const int64_t at = (static_cast<int64_t>(g) * p.codebook_size + codes[g]) * width + col;
    k0 += to_float(k_table[at]);
    k1 += to_float(k_table[at + half]);
    v0 += to_float(v_table[at]);
    v1 += to_float(v_table[at + half]);
  }
  if (p.k_bias != nullptr) {
    const T* bias = static_cast<const T*>(p.k_bias) + col;
    k0 += to_float(bias[0]);
    k1 += to_float(bias[half]);
  }
  if (p.v_bias != nullptr) {
    const T* bias = static_cast<const T*>(p.v_bias) + col;
    v0 += to_float(bias[0]);
    v1 += to_float(bias[half]);
  }
  const float* angle = p.rotation + static_cast<int64_t>(key) * half + dd;  // cos; sin Tr*half further
  const float c = angle[0];
  const float s = angle[static_cast<int64_t>(p.remote) * half];
  first = {k0 * c - k1 * s, v0};
  second = {k1 * c + k0 * s, v1};
}

// Stages keys [n0, n0 + kBlockN) of a segment: store(n, dd, kv) for every n < kBlockN and
// dd < kDim (zeros past the segment or past d), and key_bias[n], the additive score bias
// (0; log(count) for codewords; -inf hides unused codewords and keys past the segment).
// kRotated (p.rotation set, kernels compiled apart so that plain calls pay nothing): remote
// tokens go by pairs, item (n, j), j < kDim / 2, stores features j and j + d/2 for j < d/2,
// else the zero padding j + d/2 and j + kDim/2 (together [d, kDim)).
template <typename T, int kBlockN, int kDim, int kThreads, bool kRotated, typename Store>
__device__ __forceinline__ void stage_keys(const AttnParams& p, Segment seg, const BlockRows& blk, int n0,
                                           Store store, float* key_bias) {
  const int n_keys = segment_keys(p, seg);
  if (kRotated && seg == kSegTokens) {
    constexpr int kPairs = kDim / 2;
    const int half = p.head_dim / 2;
    for (int idx = threadIdx.x; idx < kBlockN * kPairs; idx += kThreads) {
      const int n = idx / kPairs;
      const int j = idx % kPairs;
      const int key = n0 + n;
      KeyValue first{0.0f, 0.0f};
      KeyValue second{0.0f, 0.0f};
      if (j < half) {
        if (key < n_keys) rotated_token_pair<T>(p, blk, key, j, half, first, second);
        store(n, j, first);
        store(n, j + half, second);
      } else {
        store(n, j + half, first);
        store(n, j + kPairs, second);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < kBlockN * kDim; idx += kThreads) {
      const int n = idx / kDim;
      const int dd = idx % kDim;
      const int key = n0 + n;
      KeyValue kv{0.0f, 0.0f};
      if (key < n_keys && dd < p.head_dim) kv = key_value<T>(p, seg, blk, key, dd);
      store(n, dd, kv);
    }
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

}  // namespace astra::mp_attention
