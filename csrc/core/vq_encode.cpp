#include "core/vq_encode.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>

namespace astra::core {

namespace {

// GEMM path blocking. Tall GEMM calls amortise the GEMM's packing of the
// codebook block (sgemm runs faster at 512-1024 rows than at 256:
// benchmarks/RESULTS.md, tuning constants); the score buffer (rows x code
// block, at most kGemmScoreBytes) is read once by the argmin pass, a
// negligible O(rows * K) next to the O(rows * K * Dg) GEMM even from L3.
constexpr int64_t kGemmRows = 1024;
constexpr int64_t kGemmScoreBytes = 4 << 20;

// Codebook floats packed per prepare task: splits a single wide group across
// threads without making tasks too small to pay for themselves.
constexpr int64_t kPackFloatsPerTask = 64 * 1024;

// Sums f(0) + ... + f(n-1) in 8 interleaved partial sums: a single running
// sum would serialize on the add latency (4 cycles per element).
template <class Term>
float sum_terms(int64_t n, Term f) {
  float partial[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) partial[l] += f(i + l);
  }
  for (int l = 0; i < n; ++i, ++l) partial[l] += f(i);
  return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
         ((partial[2] + partial[6]) + (partial[3] + partial[7]));
}

float squared_norm(const float* v, int64_t n) {
  return sum_terms(n, [v](int64_t i) { return v[i] * v[i]; });
}

}  // namespace

int64_t gemm_min_width(Simd simd) {
  switch (simd) {
    case Simd::kAvx512Vnni:
    case Simd::kAvx512:
      return 1536;
    case Simd::kAvx2:
      return 512;
    case Simd::kGeneric:
      break;
  }
  return 512;
}

EncodePath choose_encode_path(int64_t width, Simd simd) {
  if (width >= gemm_min_width(simd)) return EncodePath::kBlockedGemm;
  if (simd == Simd::kAvx512Vnni && width >= kInt8MinWidth) return EncodePath::kInt8;
  return EncodePath::kFused;
}

bool int8_estimate_beats_exact(Simd simd) { return simd == Simd::kAvx512Vnni; }

void EncodePlan::AlignedFree::operator()(void* p) const { std::free(p); }

namespace {

// 64-byte aligned so every panel row starts on a cache line.
void* aligned_buffer(size_t bytes) {
  void* p = std::aligned_alloc(64, ((bytes + 63) / 64) * 64);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

EncodePlan::EncodePlan(const float* codebooks, VqShape shape, Simd simd, EncodePath path)
    : codebooks_(codebooks),
      shape_(shape),
      kernels_(argmin_kernels(simd)),
      path_(path) {
  if (shape.groups < 1 || shape.codes < 1 || shape.width < 1) {
    throw std::invalid_argument("EncodePlan: G, K and Dg must be positive");
  }
  if (shape.codes > std::numeric_limits<int32_t>::max() / 2) {
    throw std::invalid_argument("EncodePlan: K does not fit int32 codeword indices");
  }
  const int64_t g = shape.groups;
  const int64_t k = shape.codes;
  if (path_ == EncodePath::kInt8 || path_ == EncodePath::kInt8Estimate) int8_kernels_ = &int8_kernels(simd);
  if (path_ == EncodePath::kInt8 && int8_kernels_->argmin == nullptr) {
    throw std::invalid_argument(std::string("EncodePlan: the int8 path needs AVX-512 VNNI, not ") + simd_name(simd));
  }
  if (int8() && shape.width > kInt8MaxWidth) {
    throw std::invalid_argument("EncodePlan: the int8 paths take groups of at most " +
                                std::to_string(kInt8MaxWidth) + " features");
  }
  if (path_ == EncodePath::kFused) {
    const int64_t p = kernels_.panel_width;
    num_panels_ = (k + p - 1) / p;
    const int64_t floats = g * num_panels_ * shape.width * p;
    panels_.reset(static_cast<float*>(aligned_buffer(static_cast<size_t>(floats) * sizeof(float))));
    norms_.resize(static_cast<size_t>(g * num_panels_ * p));
  } else if (int8()) {
    const int64_t p = int8_kernels_->panel_width;
    num_panels_ = (k + p - 1) / p;
    const int64_t words = g * int8_group_words();
    int8_panels_.reset(static_cast<int32_t*>(aligned_buffer(static_cast<size_t>(words) * sizeof(int32_t))));
    norms_.resize(static_cast<size_t>(g * num_panels_ * p));
    if (int8_kernels_->layout == Int8Layout::kQuads) int8_offsets_.resize(norms_.size());
    int8_grids_.resize(static_cast<size_t>(g));
  } else {
    norms_.resize(static_cast<size_t>(g * k));
    first_duplicate_.resize(static_cast<size_t>(g * k));
  }
}

int64_t EncodePlan::panels_per_task() const {
  const int64_t floats_per_panel = shape_.width * kernels_.panel_width;
  return std::max<int64_t>(1, kPackFloatsPerTask / floats_per_panel);
}

int64_t EncodePlan::int8_group_words() const {
  return num_panels_ * int8_words(int8_kernels_->layout, shape_.width) * int8_kernels_->panel_width;
}

int32_t* EncodePlan::int8_group_panels(int64_t g) const { return int8_panels_.get() + g * int8_group_words(); }

int64_t EncodePlan::prepare_tasks() const {
  if (path_ != EncodePath::kFused) return shape_.groups;
  return shape_.groups * ((num_panels_ + panels_per_task() - 1) / panels_per_task());
}

void EncodePlan::prepare(int64_t task) {
  const int64_t k = shape_.codes;
  const int64_t dg = shape_.width;
  if (path_ == EncodePath::kFused) {
    const int64_t p = kernels_.panel_width;
    const int64_t per_task = panels_per_task();
    const int64_t tasks_per_group = (num_panels_ + per_task - 1) / per_task;
    const int64_t g = task / tasks_per_group;
    const int64_t first_panel = (task % tasks_per_group) * per_task;
    const int64_t first_code = first_panel * p;
    // Packing the codewords of these panels only; the group's last panel gets the padding.
    const int64_t codes = std::min(k - first_code, per_task * p);
    kernels_.pack(codebooks_ + (g * k + first_code) * dg, codes, dg,
                  panels_.get() + (g * num_panels_ + first_panel) * dg * p,
                  norms_.data() + g * num_panels_ * p + first_code);
    return;
  }
  if (int8()) {
    const int64_t g = task;
    const int64_t p = int8_kernels_->panel_width;
    int32_t* offsets = int8_offsets_.empty() ? nullptr : int8_offsets_.data() + g * num_panels_ * p;
    int8_grids_[static_cast<size_t>(g)] = int8_kernels_->pack(codebooks_ + g * k * dg, k, dg, int8_group_panels(g),
                                                              norms_.data() + g * num_panels_ * p, offsets);
    return;
  }
  const int64_t g = task;
  const float* cb = codebooks_ + g * k * dg;
  float* norms = norms_.data() + g * k;
  for (int64_t code = 0; code < k; ++code) norms[code] = squared_norm(cb + code * dg, dg);
  // The GEMM may round identical columns differently (block edges, kernel
  // variants); map every codeword to the lowest index of a bitwise-identical
  // one so exact duplicates still resolve to the lowest index.
  std::vector<int32_t> order(static_cast<size_t>(k));
  std::iota(order.begin(), order.end(), 0);
  const size_t row_bytes = static_cast<size_t>(dg) * sizeof(float);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const int c = std::memcmp(cb + a * dg, cb + b * dg, row_bytes);
    return c != 0 ? c < 0 : a < b;
  });
  int32_t* first = first_duplicate_.data() + g * k;
  for (int64_t i = 0; i < k; ++i) {
    const int32_t code = order[static_cast<size_t>(i)];
    const int32_t prev = i > 0 ? order[static_cast<size_t>(i - 1)] : code;
    const bool same = i > 0 && std::memcmp(cb + code * dg, cb + prev * dg, row_bytes) == 0;
    first[code] = same ? first[prev] : code;
  }
}

void EncodePlan::encode_rows_gemm(const float* x, int64_t x_row_stride, int64_t g, int64_t rows,
                                  int32_t* best, GemmABt gemm) const {
  if (gemm == nullptr) throw std::invalid_argument("EncodePlan: the blocked-GEMM path needs a GEMM");
  const int64_t k = shape_.codes;
  const int64_t dg = shape_.width;
  const float* cb = codebooks_ + g * k * dg;
  const float* norms = norms_.data() + g * k;
  const int64_t row_block = std::min(rows, kGemmRows);
  int64_t code_block = kGemmScoreBytes / (row_block * static_cast<int64_t>(sizeof(float)));
  code_block = std::min(k, std::max<int64_t>(256, code_block / 64 * 64));
  std::vector<float> dots(static_cast<size_t>(row_block * code_block));
  std::vector<float> best_score(static_cast<size_t>(row_block));
  for (int64_t r0 = 0; r0 < rows; r0 += row_block) {
    const int64_t n = std::min(row_block, rows - r0);
    std::fill(best_score.begin(), best_score.begin() + n, std::numeric_limits<float>::infinity());
    std::fill(best + r0, best + r0 + n, 0);
    for (int64_t k0 = 0; k0 < k; k0 += code_block) {
      const int64_t kb = std::min(code_block, k - k0);
      gemm(n, kb, dg, x + r0 * x_row_stride, x_row_stride, cb + k0 * dg, dg, dots.data(), kb);
      kernels_.scores(ScoresArgminArgs{dots.data(), kb, n, kb, norms + k0, static_cast<int32_t>(k0),
                                       best_score.data(), best + r0});
    }
  }
  const int32_t* first = first_duplicate_.data() + g * k;
  for (int64_t i = 0; i < rows; ++i) best[i] = first[best[i]];
}

void EncodePlan::encode_rows(const float* x, int64_t x_row_stride, int64_t g, int64_t row_begin,
                             int64_t row_end, int32_t* codes, float* sqdist, GemmABt gemm) const {
  const int64_t rows = row_end - row_begin;
  if (rows <= 0) return;
  const int64_t groups = shape_.groups;
  const int64_t k = shape_.codes;
  const int64_t dg = shape_.width;
  const float* xg = x + row_begin * x_row_stride + g * dg;
  std::vector<int32_t> best(static_cast<size_t>(rows));
  if (path_ == EncodePath::kFused) {
    const int64_t p = kernels_.panel_width;
    kernels_.packed(PackedArgminArgs{xg, x_row_stride, rows, dg,
                                     panels_.get() + g * num_panels_ * dg * p,
                                     norms_.data() + g * num_panels_ * p, num_panels_, best.data()});
  } else if (int8()) {
    const int64_t p = int8_kernels_->panel_width;
    const Int8Codebook book{int8_group_panels(g),
                            norms_.data() + g * num_panels_ * p,
                            int8_offsets_.empty() ? nullptr : int8_offsets_.data() + g * num_panels_ * p,
                            num_panels_,
                            int8_grids_[static_cast<size_t>(g)],
                            codebooks_ + g * k * dg,
                            k,
                            dg};
    const Int8Argmin argmin = path_ == EncodePath::kInt8 ? int8_kernels_->argmin : int8_kernels_->estimate;
    argmin(book, xg, x_row_stride, rows, best.data());
  } else {
    encode_rows_gemm(xg, x_row_stride, g, rows, best.data(), gemm);
  }
  const int64_t out = row_begin * groups + g;
  kernels_.finish(FinishArgs{xg, x_row_stride, rows, dg, codebooks_ + g * k * dg, best.data(), codes + out,
                             sqdist + out, groups});
}

}  // namespace astra::core
