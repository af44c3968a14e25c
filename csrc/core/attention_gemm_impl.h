// Templated fp32 GEMMs of the fused attention (AttentionGemms in mp_attention.h), instantiated once per
// instruction set through attention_kernels_impl.h with its traits type S (load, store, broadcast,
// fmadd, transpose8: an 8 x 8 block transposed). Sized for the attention's shapes: the inner dimension
// is the head dim (scores, Q.K^T) or a key block (P.V), the outer ones a few hundred rows and keys. A
// register tile of kGemmRows rows by kGemmVectors vectors accumulates over the inner dimension; the
// right operand is first packed in panels of the tile's width, transposed for the scores (the key
// block), in chunks of up to 32 KB of rows for P.V: it stays in L1 while the rows stream past it.
//
// Include only from attention_kernels_impl.h; everything here has internal linkage.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace astra::core {
namespace {

// 6 rows x 2 vectors: 12 accumulators, 2 right-operand vectors and a broadcast in 16 registers.
constexpr int kGemmRows = 6;
constexpr int kGemmVectors = 2;

// C[r, v*W + l] (+)= sum_p A[r, p] * B[p, v*W + l] for r < MR, v < NV, over p < k. The loops over the
// tile are unrolled explicitly: GCC otherwise keeps a stack copy of the accumulators, stored and
// reloaded around every tile (many tiles here: k is only the head dim for the scores).
template <class S, int MR, int NV, bool Accumulate>
inline void gemm_tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                      int64_t ldc) {
  using F = typename S::F;
  constexpr int W = S::kWidth;
  F acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Accumulate ? S::load(c + r * ldc + v * W) : S::broadcast(0.0f);
  }
  for (int64_t p = 0; p < k; ++p) {
    F bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + p * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const F ar = S::broadcast(a[r * lda + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fmadd(ar, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) S::store(c + r * ldc + v * W, acc[r][v]);
  }
}

// Rows [0, m) in tiles of kGemmRows, the last one shorter.
template <class S, int NV, bool Accumulate>
inline void gemm_rows(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                      int64_t ldc) {
  int64_t i = 0;
  for (; i + kGemmRows <= m; i += kGemmRows) {
    gemm_tile<S, kGemmRows, NV, Accumulate>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  }
  const float* ai = a + i * lda;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 5: gemm_tile<S, 5, NV, Accumulate>(k, ai, lda, b, ldb, ci, ldc); break;
    case 4: gemm_tile<S, 4, NV, Accumulate>(k, ai, lda, b, ldb, ci, ldc); break;
    case 3: gemm_tile<S, 3, NV, Accumulate>(k, ai, lda, b, ldb, ci, ldc); break;
    case 2: gemm_tile<S, 2, NV, Accumulate>(k, ai, lda, b, ldb, ci, ldc); break;
    case 1: gemm_tile<S, 1, NV, Accumulate>(k, ai, lda, b, ldb, ci, ldc); break;
    default: break;
  }
}

// C (m, n) = A (m, k) . B^T, B (n, k): B packed transposed in panels of kGemmVectors * W columns (zero
// past n); a last partial panel goes through a scratch tile, so no column of C past n is written.
template <class S>
void gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
              float* c, int64_t ldc) {
  constexpr int64_t kPanel = kGemmVectors * S::kWidth;
  if (m <= 0 || n <= 0) return;
  thread_local std::vector<float> packed_buffer, scratch;
  packed_buffer.resize(static_cast<size_t>(k * kPanel));
  float* packed = packed_buffer.data();
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    const int64_t cols = std::min(kPanel, n - j0);
    // 8 x 8 blocks through registers, the rest element by element
    const int64_t block_cols = cols / 8 * 8, block_k = k / 8 * 8;
    for (int64_t j = 0; j < block_cols; j += 8) {
      for (int64_t p = 0; p < block_k; p += 8) {
        S::transpose8(b + (j0 + j) * ldb + p, ldb, packed + p * kPanel + j, kPanel);
      }
    }
    for (int64_t j = 0; j < kPanel; ++j) {
      for (int64_t p = j < block_cols ? block_k : 0; p < k; ++p) {
        packed[p * kPanel + j] = j < cols ? b[(j0 + j) * ldb + p] : 0.0f;
      }
    }
    if (cols == kPanel) {
      gemm_rows<S, kGemmVectors, false>(m, k, a, lda, packed, kPanel, c + j0, ldc);
      continue;
    }
    scratch.resize(static_cast<size_t>(m * kPanel));
    gemm_rows<S, kGemmVectors, false>(m, k, a, lda, packed, kPanel, scratch.data(), kPanel);
    for (int64_t i = 0; i < m; ++i) {
      std::copy(scratch.data() + i * kPanel, scratch.data() + i * kPanel + cols, c + i * ldc + j0);
    }
  }
}

// C (m, n) += A (m, k) . B, B (k, n): panels of kGemmVectors vectors, each copied in chunks of its rows
// to a contiguous buffer first (B's rows are a tile's or a head's, up to a few KB apart: read in place,
// a panel's lines would fall in a few L1 sets and miss on every tile of rows), then single vectors read
// in place, then the last columns (n % W) one by one.
template <class S>
void gemm_ab_add(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                 float* c, int64_t ldc) {
  constexpr int64_t W = S::kWidth;
  constexpr int64_t kPanel = kGemmVectors * W;
  constexpr int64_t kChunk = 8192 / kPanel;  // rows per packed chunk: 32 KB
  if (m <= 0 || n <= 0) return;
  thread_local std::vector<float> packed_buffer;
  packed_buffer.resize(static_cast<size_t>(std::min(k, kChunk) * kPanel));
  float* packed = packed_buffer.data();
  int64_t j0 = 0;
  for (; j0 + kPanel <= n; j0 += kPanel) {
    for (int64_t p0 = 0; p0 < k; p0 += kChunk) {
      const int64_t rows = std::min(kChunk, k - p0);
      for (int64_t p = 0; p < rows; ++p) {
        for (int v = 0; v < kGemmVectors; ++v) {
          S::store(packed + p * kPanel + v * W, S::load(b + (p0 + p) * ldb + j0 + v * W));
        }
      }
      gemm_rows<S, kGemmVectors, true>(m, rows, a + p0, lda, packed, kPanel, c + j0, ldc);
    }
  }
  for (; j0 + W <= n; j0 += W) gemm_rows<S, 1, true>(m, k, a, lda, b + j0, ldb, c + j0, ldc);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = j0; j < n; ++j) {
      float sum = c[i * ldc + j];
      for (int64_t p = 0; p < k; ++p) sum += a[i * lda + p] * b[p * ldb + j];
      c[i * ldc + j] = sum;
    }
  }
}

}  // namespace
}  // namespace astra::core
