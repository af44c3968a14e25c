// Run-time selection of the fp32 attention row kernels, and the portable
// scalar fp64 kernels (fp64 favours exactness over speed: std::exp2).
#include "core/attention_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace astra::core {

namespace {

void softmax_rows_f64(const SoftmaxRowsArgs<double>& a) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  for (int64_t r = 0; r < a.rows; ++r) {
    double* s = a.s + r * a.ld;
    const int64_t visible =
        std::max<int64_t>(0, a.visible != nullptr ? std::min(a.visible[r], a.cols) : a.cols);
    double block_max = kNegInf;
    for (int64_t j = 0; j < visible; ++j) {
      if (a.col_bias != nullptr) s[j] += a.col_bias[j];
      block_max = std::max(block_max, s[j]);
    }
    const double m_old = a.row_max[r];
    const double m_new = std::max(m_old, block_max);
    if (m_new == kNegInf) {
      // std::max drops NaN: a NaN score (a NaN query or key) makes the row NaN, as in the reference
      const bool nan_score = std::any_of(s, s + visible, [](double x) { return std::isnan(x); });
      std::fill(s, s + a.cols, nan_score ? std::numeric_limits<double>::quiet_NaN() : 0.0);
      if (nan_score) a.row_max[r] = a.row_sum[r] = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < visible; ++j) {
      s[j] = std::exp2(s[j] - m_new);
      sum += s[j];
    }
    std::fill(s + visible, s + a.cols, 0.0);
    const double alpha = m_old == kNegInf ? 0.0 : std::exp2(m_old - m_new);
    a.row_sum[r] = a.row_sum[r] * alpha + sum;
    a.row_max[r] = m_new;
    if (alpha != 1.0) {
      double* o = a.o + r * a.ldo;
      for (int64_t j = 0; j < a.width; ++j) o[j] *= alpha;
    }
  }
}

void gather_f64(const GatherArgs<double>& a) {
  const int64_t group_stride = a.codes_per_group * a.row_width;
  for (int64_t e = 0; e < a.entries; ++e) {
    const int32_t* codes = a.codes + e * a.code_stride;
    double* out = a.out + e * a.width;
    const double* first = a.table + codes[0] * a.row_width + a.offset;
    for (int64_t j = 0; j < a.width; ++j) out[j] = first[j] + (a.bias != nullptr ? a.bias[j] : 0.0);
    for (int64_t g = 1; g < a.groups; ++g) {
      const double* row = a.table + g * group_stride + codes[g] * a.row_width + a.offset;
      for (int64_t j = 0; j < a.width; ++j) out[j] += row[j];
    }
  }
}

constexpr AttentionKernels<double> kF64Kernels{Simd::kGeneric, &softmax_rows_f64, &gather_f64};

}  // namespace

const AttentionKernels<float>& attention_kernels_f32(Simd simd) {
  const AttentionKernels<float>* kernels = nullptr;
  if (simd_supported(simd)) {
    switch (simd) {
      case Simd::kAvx512Vnni:
      case Simd::kAvx512:
        kernels = attention_kernels_avx512();
        break;
      case Simd::kAvx2:
        kernels = attention_kernels_avx2();
        break;
      case Simd::kGeneric:
        kernels = attention_kernels_generic();
        break;
    }
  }
  if (kernels == nullptr) {
    throw std::invalid_argument(std::string("no ") + simd_name(simd) +
                                " attention kernels: this CPU or build does not support them");
  }
  return *kernels;
}

const AttentionKernels<double>& attention_kernels_f64() { return kF64Kernels; }

}  // namespace astra::core
