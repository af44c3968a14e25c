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
//           with rotary angles, both features of each pair (i, i + d/2) are gathered
//           by one thread and the key rotated in its registers before it is staged;
//   local   the full-precision keys; the causal mask (query i sees local key j iff
//           j <= i + Tl - Tq) is evaluated only on tiles that cross it.
// Epilogue: out = acc / l and lse = m + log(l); a row that saw no key (l = 0) gets
// out 0 and lse -inf.
//
// Two kernel families; the launcher below picks per call:
//   * CUDA cores, every dtype and d <= 256 (mp_attention_simt.cu);
//   * tensor cores, fp16/bf16 with d % 16 == 0 and d <= 128 on sm_80+ (mp_attention_mma.cu).
// Their shared device code (parameters, loads, key staging): mp_attention_loaders.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "astra_cuda.h"
#include "mp_attention_launch.cuh"
#include "mp_attention_loaders.cuh"

namespace astra::mp_attention {

namespace {

// Bound on Tq*GROUP, Tl, Tr and K: tile arithmetic stays in int.
constexpr int64_t kMaxLength = int64_t{1} << 30;
constexpr size_t kWorkspaceAlign = 256;

bool needs_counts(const astra_mp_attention_problem& pr) {
  return pr.formulation == ASTRA_ATTENTION_CODEWORDS && pr.remote_tokens > 0;
}

template <typename T>
cudaError_t mp_attention_typed(const AttnParams& p, cudaStream_t stream) {
  if constexpr (!std::is_same<T, float>::value) {
    bool tensor_cores = false;
    const cudaError_t err = tensor_cores_usable<T>(p.head_dim, &tensor_cores);
    if (err != cudaSuccess) return err;
    if (tensor_cores) return launch_mma<T>(p, stream);
  }
  return launch_simt<T>(p, stream);
}

bool valid_problem(const astra_mp_attention_problem& pr) {
  const bool dtype_ok = pr.dtype == ASTRA_DTYPE_FLOAT32 || pr.dtype == ASTRA_DTYPE_FLOAT16 ||
                        pr.dtype == ASTRA_DTYPE_BFLOAT16;
  const bool formulation_ok = pr.formulation == ASTRA_ATTENTION_TOKENS ||
                           (pr.formulation == ASTRA_ATTENTION_CODEWORDS && pr.groups == 1);
  if (!dtype_ok || !formulation_ok) return false;
  if (pr.rotation != nullptr && (pr.formulation != ASTRA_ATTENTION_TOKENS || pr.head_dim % 2 != 0)) return false;
  if (pr.batch < 0 || pr.heads < 1 || pr.kv_heads < 1 || pr.heads % pr.kv_heads != 0) return false;
  if (pr.head_dim < 1 || pr.head_dim > kMaxHeadDim || pr.groups < 1 || pr.codebook_size < 1) return false;
  if (pr.queries < 0 || pr.local_keys < 0 || pr.remote_tokens < 0 || !(pr.scale == pr.scale)) return false;
  const int64_t rows = pr.queries * (pr.heads / pr.kv_heads);
  return rows <= kMaxLength && pr.local_keys <= kMaxLength && pr.remote_tokens <= kMaxLength &&
         pr.codebook_size <= kMaxLength && pr.batch <= kMaxLength && pr.heads <= kMaxLength;
}

}  // namespace

}  // namespace astra::mp_attention

extern "C" size_t astra_mp_attention_workspace_bytes(const astra_mp_attention_problem* problem) {
  using namespace astra::mp_attention;
  if (!needs_counts(*problem)) return 0;
  const size_t bytes = static_cast<size_t>(problem->batch) * static_cast<size_t>(problem->codebook_size) *
                       sizeof(int32_t);
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

extern "C" cudaError_t astra_mp_attention(const astra_mp_attention_problem* problem, void* workspace,
                                          cudaStream_t stream) {
  using namespace astra::mp_attention;
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
  // Only the tokens formulation reads it (valid_problem), and only when there are remote tokens.
  p.rotation = pr.remote_tokens > 0 ? pr.rotation : nullptr;
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
    const cudaError_t err =
        launch_codeword_counts(pr.remote_codes, pr.batch, p.remote, p.codebook_size, counts, stream);
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