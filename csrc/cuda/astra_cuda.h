// Torch-free C ABI of the ASTRA CUDA kernels.
//
// Every launcher enqueues its work on `stream` and returns the first CUDA error
// it met (cudaErrorInvalidValue for arguments outside the documented ranges);
// nothing synchronizes. Pointers are device pointers; sizes and strides are in
// elements. Shapes use N rows, G groups, K codewords, Dg = D / G features per group.
#pragma once

#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum astra_dtype {
  ASTRA_DTYPE_FLOAT32 = 0,
  ASTRA_DTYPE_FLOAT16 = 1,
  ASTRA_DTYPE_BFLOAT16 = 2,
} astra_dtype;

// Bytes of device scratch memory astra_vq_encode needs (256-byte aligned).
size_t astra_vq_encode_workspace_bytes(int64_t n, int64_t g, int64_t k);

// Nearest codeword per (row, group), with the contract of
// astra_kernels.reference.vq_encode (fp32 scores ||e||^2 - 2 x.e, lowest index on
// ties, non-finite groups -> code 0, sqdist computed directly in fp32).
//   x: (N, G*Dg) of `dtype`, element (i, j) at x[i * x_stride_row + j * x_stride_col]
//   codebooks: (G, K, Dg) of `dtype`, contiguous
//   workspace: astra_vq_encode_workspace_bytes(N, G, K) bytes, 256-byte aligned
//   codes: (N, G) int32 out, contiguous; sqdist: (N, G) float32 out, contiguous
// Ranges: N >= 0, 1 <= G <= 65535, 2 <= K <= 2^30, 1 <= Dg <= 2^30.
cudaError_t astra_vq_encode(astra_dtype dtype, const void* x, int64_t n, int64_t x_stride_row,
                            int64_t x_stride_col, const void* codebooks, int64_t g, int64_t k, int64_t dg,
                            void* workspace, int32_t* codes, float* sqdist, cudaStream_t stream);

// Codebook row gather, a bit copy:
//   codes: (N, G) int32 in [0, K), contiguous; codebooks: (G, K, Dg) of `dtype`, contiguous
//   out: (N, G*Dg) of `dtype`, contiguous
cudaError_t astra_vq_decode(astra_dtype dtype, const int32_t* codes, int64_t n, const void* codebooks, int64_t g,
                            int64_t k, int64_t dg, void* out, cudaStream_t stream);

// Wire format (astra_kernels.reference.pack_codes): code i occupies stream bits
// [i*bits, (i+1)*bits), least significant bit first; stream bit j is bit j % 8 of
// byte j / 8; the last byte is zero-padded. 1 <= bits <= 16.
//   codes: (count,) int32 in [0, 2^bits); packed: (ceil(count*bits/8),) uint8
cudaError_t astra_pack_codes(const int32_t* codes, int64_t count, int bits, uint8_t* packed, cudaStream_t stream);
cudaError_t astra_unpack_codes(const uint8_t* packed, int64_t count, int bits, int32_t* codes, cudaStream_t stream);

// Mixed-precision attention forward, the contract of
// astra_kernels.reference.mixed_precision_attention: query head h reads kv head
// h / (H / Hkv); the remote segment (Tr tokens known by their codes) precedes the
// local one and is always visible; `causal` masks only the local segment, queries
// aligned to the end of the local keys (query i sees local key j iff
// j <= i + Tl - Tq); a query with no visible key gets out 0 and lse -inf. With
// `rotation`, remote token t's key (sum of its G rows + bias, per kv head) is rotated
// over the feature pairs (i, i + d/2): k'[i] = k[i] cos - k[i + d/2] sin,
// k'[i + d/2] = k[i + d/2] cos + k[i] sin (angle i of token t); values never are.
typedef enum astra_attention_formulation {
  ASTRA_ATTENTION_TOKENS = 0,     // each remote token's K/V = sum of its G table rows (+ bias)
  ASTRA_ATTENTION_CODEWORDS = 1,  // the K codewords, score bias log(token count); G = 1 only
} astra_attention_formulation;

typedef struct astra_mp_attention_problem {
  astra_dtype dtype;      // of q, k_local, v_local, the tables, the biases and out
  int64_t batch;          // B >= 0
  int64_t heads;          // H >= 1, a multiple of kv_heads
  int64_t kv_heads;       // Hkv >= 1
  int64_t queries;        // Tq >= 0
  int64_t local_keys;     // Tl >= 0
  int64_t remote_tokens;  // Tr >= 0
  int64_t groups;         // G >= 1
  int64_t codebook_size;  // K >= 1
  int64_t head_dim;       // d, 1..256
  const void* q;          // (B, H, Tq, d): element (b, h, i, e) at q[sum of index * stride]
  int64_t q_strides[4];
  const void* k_local;    // (B, Hkv, Tl, d), strided like q
  int64_t k_strides[4];
  const void* v_local;    // (B, Hkv, Tl, d), strided like q
  int64_t v_strides[4];
  const int32_t* remote_codes;  // (B, Tr, G) contiguous, values in [0, K)
  const void* k_table;    // (G, K, Hkv*d) contiguous
  const void* v_table;    // (G, K, Hkv*d) contiguous
  const void* k_bias;     // (Hkv*d,) contiguous, or NULL
  const void* v_bias;     // (Hkv*d,) contiguous, or NULL
  int causal;
  float scale;            // score = (q . k) * scale (+ log(count) for codewords)
  astra_attention_formulation formulation;
  const float* rotation;  // (2, Tr, d/2) contiguous: cos then sin of the remote tokens' rotary
                          // angles, or NULL; needs ASTRA_ATTENTION_TOKENS and an even d
  void* out;              // (B, H, Tq, d) contiguous, out
  float* lse;             // (B, H, Tq) contiguous, out: natural-log sum of exp of the scores
} astra_mp_attention_problem;

// Bytes of device scratch memory astra_mp_attention needs (256-byte aligned; 0 when
// none: the codewords formulation needs a (B, K) histogram when Tr > 0).
size_t astra_mp_attention_workspace_bytes(const astra_mp_attention_problem* problem);

// Ranges: as listed in the struct, with Tq*H/Hkv, Tl, Tr, K <= 2^30.
cudaError_t astra_mp_attention(const astra_mp_attention_problem* problem, void* workspace, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
