// Templated fp32 bodies of the attention row kernels (attention_kernels.h),
// instantiated once per instruction set by attention_kernels_<isa>.cpp with a
// traits type S: the argmin traits (simd_<isa>.h) plus add, sub, max (the
// second operand when either is NaN), reduce_max, reduce_add, exp2_reduced and
// scale_pow2 (see exp2 below).
//
// Include only after the ISA's `#pragma GCC target` and traits; everything
// here has internal linkage (see argmin_kernels_impl.h for why).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/attention_gemm_impl.h"
#include "core/attention_kernels.h"

namespace astra::core {
namespace {

// 2^f on [-0.5, 0.5]: degree-6 polynomial fitted for relative error; with the
// exact scaling by 2^n below, exp2 is within 1 ulp of the true value over
// [-126, 0] (checked against fp64 on 2M random points).
constexpr float kExp2C0 = 1.0f;
constexpr float kExp2C1 = 0.693147182464599609375f;
constexpr float kExp2C2 = 0.2402264773845672607421875f;
constexpr float kExp2C3 = 0.055503424257040023803710938f;
constexpr float kExp2C4 = 0.0096184909343719482421875f;
constexpr float kExp2C5 = 0.001339470618404448032379150f;
constexpr float kExp2C6 = 0.00015332501789089292287826538f;
// Below this, 2^x is 0 for our purposes (the running max contributes 1).
constexpr float kExp2Min = -127.0f;

// 2^x for x <= 0 (x = score - running max); -inf and x < -127 give 0, NaN stays NaN.
// S::exp2_reduced(x) must return (round(x), x - round(x)) and
// S::scale_pow2(p, n) must return p * 2^n for integral n in [-127, 0] (0 at -127).
template <class S>
inline typename S::F exp2(typename S::F x) {
  using F = typename S::F;
  x = S::max(S::broadcast(kExp2Min), x);  // a NaN x is returned, so it propagates
  F n, f;
  S::exp2_reduced(x, n, f);
  F p = S::broadcast(kExp2C6);
  p = S::fmadd(p, f, S::broadcast(kExp2C5));
  p = S::fmadd(p, f, S::broadcast(kExp2C4));
  p = S::fmadd(p, f, S::broadcast(kExp2C3));
  p = S::fmadd(p, f, S::broadcast(kExp2C2));
  p = S::fmadd(p, f, S::broadcast(kExp2C1));
  p = S::fmadd(p, f, S::broadcast(kExp2C0));
  return S::scale_pow2(p, n);
}

template <class S>
void softmax_rows(const SoftmaxRowsArgs<float>& a) {
  using F = typename S::F;
  constexpr int W = S::kWidth;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  const F neg_inf = S::broadcast(kNegInf);
  const int64_t vectors = (a.cols + W - 1) / W;
  for (int64_t r = 0; r < a.rows; ++r) {
    float* s = a.s + r * a.ld;
    const int64_t visible = a.visible != nullptr ? std::min(a.visible[r], a.cols) : a.cols;
    const int64_t live =
        (std::max<int64_t>(visible, 0) + W - 1) / W;  // vectors with a visible column
    // Pass 1: biased, masked scores (stored back when they changed) and their max, in two
    // independent chains (even and odd vectors).
    const auto biased = [&](int64_t v) {
      F x = S::load(s + v * W);
      if (a.col_bias != nullptr) x = S::add(x, S::load(a.col_bias + v * W));
      const int64_t left = visible - v * W;
      if (left < W) x = S::select(S::first_lanes(static_cast<int>(left)), x, neg_inf);
      if (a.col_bias != nullptr || left < W) S::store(s + v * W, x);
      return x;
    };
    F vmax0 = neg_inf, vmax1 = neg_inf;
    int64_t v = 0;
    for (; v + 2 <= live; v += 2) {
      vmax0 = S::max(vmax0, biased(v));
      vmax1 = S::max(vmax1, biased(v + 1));
    }
    if (v < live) vmax0 = S::max(vmax0, biased(v));
    const float m_old = a.row_max[r];
    const float m_new = std::max(m_old, live > 0 ? S::reduce_max(S::max(vmax0, vmax1)) : kNegInf);
    const F zero = S::broadcast(0.0f);
    if (m_new == kNegInf) {
      // S::max drops NaN: a NaN score (a NaN query or key) makes the row NaN, as in the reference
      bool nan_score = false;
      for (int64_t c = 0; c < visible && !nan_score; ++c) nan_score = std::isnan(s[c]);
      for (v = 0; v < vectors; ++v) S::store(s + v * W, nan_score ? S::broadcast(kNaN) : zero);
      if (nan_score) a.row_max[r] = a.row_sum[r] = kNaN;
      continue;
    }
    // Pass 2: probabilities and their sum (in four chains: the adds' latency would bound the
    // loop); columns past the visible ones are 0.
    const F vm = S::broadcast(m_new);
    const auto prob = [&](int64_t v) {
      const F p = exp2<S>(S::sub(S::load(s + v * W), vm));
      S::store(s + v * W, p);
      return p;
    };
    F vsum0 = zero, vsum1 = zero, vsum2 = zero, vsum3 = zero;
    for (v = 0; v + 4 <= live; v += 4) {
      vsum0 = S::add(vsum0, prob(v));
      vsum1 = S::add(vsum1, prob(v + 1));
      vsum2 = S::add(vsum2, prob(v + 2));
      vsum3 = S::add(vsum3, prob(v + 3));
    }
    for (; v < live; ++v) vsum0 = S::add(vsum0, prob(v));
    for (; v < vectors; ++v) S::store(s + v * W, zero);
    // An unchanged max (the usual case past the first blocks) needs no exp2: alpha is exactly 1.
    const float alpha = m_old == kNegInf ? 0.0f : m_old == m_new ? 1.0f : std::exp2(m_old - m_new);
    const F vsum = S::add(S::add(vsum0, vsum1), S::add(vsum2, vsum3));
    a.row_sum[r] = a.row_sum[r] * alpha + S::reduce_add(vsum);
    a.row_max[r] = m_new;
    if (alpha != 1.0f) {
      float* o = a.o + r * a.ldo;
      const F va = S::broadcast(alpha);
      int64_t j = 0;
      for (; j + W <= a.width; j += W) S::store(o + j, S::mul(S::load(o + j), va));
      for (; j < a.width; ++j) o[j] *= alpha;
    }
  }
}

// Up to kGatherVectors vectors of a row stay in registers while the G table
// rows are summed into them.
constexpr int kGatherVectors = 4;
// The rows of the entry this far ahead are prefetched, their first bytes only (the hardware prefetcher
// follows a row once it is read): random rows, one per group, are latency-bound otherwise.
constexpr int64_t kGatherAhead = 2;
constexpr int64_t kGatherPrefetchBytes = 256;

template <class S>
void gather(const GatherArgs<float>& a) {
  using F = typename S::F;
  constexpr int W = S::kWidth;
  const int64_t group_stride = a.codes_per_group * a.row_width;
  const int64_t bytes = a.width * static_cast<int64_t>(sizeof(float));
  for (int64_t e = 0; e < a.entries; ++e) {
    if (e + kGatherAhead < a.entries) {
      const int32_t* ahead = a.codes + (e + kGatherAhead) * a.code_stride;
      for (int64_t g = 0; g < a.groups; ++g) {
        const char* row =
            reinterpret_cast<const char*>(a.table + g * group_stride + ahead[g] * a.row_width + a.offset);
        for (int64_t b = 0; b < std::min(kGatherPrefetchBytes, bytes); b += 64) __builtin_prefetch(row + b);
      }
    }
    const int32_t* codes = a.codes + e * a.code_stride;
    const float* first = a.table + codes[0] * a.row_width + a.offset;
    float* out = a.out + e * a.width;
    int64_t j0 = 0;
    while (j0 + W <= a.width) {
      const int nv = static_cast<int>(std::min<int64_t>(kGatherVectors, (a.width - j0) / W));
      F acc[kGatherVectors];
      for (int v = 0; v < nv; ++v) {
        acc[v] = S::load(first + j0 + v * W);
        if (a.bias != nullptr) acc[v] = S::add(acc[v], S::load(a.bias + j0 + v * W));
      }
      for (int64_t g = 1; g < a.groups; ++g) {
        const float* row = a.table + g * group_stride + codes[g] * a.row_width + a.offset + j0;
        for (int v = 0; v < nv; ++v) acc[v] = S::add(acc[v], S::load(row + v * W));
      }
      for (int v = 0; v < nv; ++v) S::store(out + j0 + v * W, acc[v]);
      j0 += nv * W;
    }
    for (int64_t j = j0; j < a.width; ++j) {
      float acc = first[j] + (a.bias != nullptr ? a.bias[j] : 0.0f);
      for (int64_t g = 1; g < a.groups; ++g)
        acc += a.table[g * group_stride + codes[g] * a.row_width + a.offset + j];
      out[j] = acc;
    }
  }
}

template <class S>
constexpr AttentionKernels<float> make_attention_kernels(Simd simd) {
  return AttentionKernels<float>{simd, &softmax_rows<S>, &gather<S>, &gemm_abt<S>, &gemm_ab_add<S>};
}

}  // namespace
}  // namespace astra::core
