// Unit tests of the torch-free vq_encode core: every compiled SIMD build,
// every exact path (fused, int8 prefilter, blocked GEMM with a naive GEMM)
// against a double precision brute force and the reference.py rules; the
// int8-estimate path against its rounding bound, each SIMD build (AVX-512
// VNNI, AVX2) against the portable code.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/vq_encode.h"
#include "tests/test_harness.h"

namespace {

using astra::core::EncodePath;
using astra::core::EncodePlan;
using astra::core::Simd;

void naive_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                int64_t ldb, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int64_t d = 0; d < k; ++d) s += a[i * lda + d] * b[j * ldb + d];
      c[i * ldc + j] = s;
    }
  }
}

struct Problem {
  int64_t n, g, k, dg, x_stride;
  std::vector<float> x;   // (n, x_stride), features in the first g*dg columns
  std::vector<float> cb;  // (g, k, dg)
  const float* xg(int64_t r, int64_t group) const { return x.data() + r * x_stride + group * dg; }
  float* xg(int64_t r, int64_t group) { return x.data() + r * x_stride + group * dg; }
  const float* e(int64_t group, int64_t code) const { return cb.data() + (group * k + code) * dg; }
  float* e(int64_t group, int64_t code) { return cb.data() + (group * k + code) * dg; }
};

Problem random_problem(int64_t n, int64_t g, int64_t k, int64_t dg, uint32_t seed, int64_t pad = 3) {
  Problem p{n, g, k, dg, g * dg + pad, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  p.x.resize(static_cast<size_t>(n * p.x_stride));
  p.cb.resize(static_cast<size_t>(g * k * dg));
  for (float& v : p.x) v = normal(rng);
  for (float& v : p.cb) v = normal(rng);
  return p;
}

// Random codewords are not separated in one dimension: put them on a
// shuffled lattice of spacing 3 instead.
void spread_scalar_codebook(Problem& p, uint32_t seed) {
  if (p.dg != 1) return;
  std::vector<int64_t> order(static_cast<size_t>(p.k));
  for (int64_t c = 0; c < p.k; ++c) order[static_cast<size_t>(c)] = c;
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  for (int64_t g = 0; g < p.g; ++g) {
    for (int64_t c = 0; c < p.k; ++c) p.e(g, c)[0] = 3.0f * static_cast<float>(order[static_cast<size_t>(c)] - p.k / 2);
  }
}

struct Result {
  std::vector<int32_t> codes;
  std::vector<float> sqdist;
};

Result encode(const Problem& p, Simd simd, EncodePath path, int64_t task_rows = 37) {
  EncodePlan plan(p.cb.data(), {p.g, p.k, p.dg}, simd, path);
  // Reverse order: tasks must not depend on each other.
  for (int64_t t = plan.prepare_tasks() - 1; t >= 0; --t) plan.prepare(t);
  Result r{std::vector<int32_t>(static_cast<size_t>(p.n * p.g), -1),
           std::vector<float>(static_cast<size_t>(p.n * p.g), -1.0f)};
  for (int64_t g = 0; g < p.g; ++g) {
    for (int64_t r0 = 0; r0 < p.n; r0 += task_rows) {
      plan.encode_rows(p.x.data(), p.x_stride, g, r0, std::min(p.n, r0 + task_rows), r.codes.data(),
                       r.sqdist.data(), &naive_gemm);
    }
  }
  return r;
}

double distance(const float* a, const float* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s;
}

std::vector<Simd> simds() {
  std::vector<Simd> out;
  for (Simd s : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
    if (astra::core::simd_supported(s)) out.push_back(s);
  }
  return out;
}

// Every path each instruction set can run (the int8 prefilter needs AVX-512 VNNI).
std::vector<EncodePath> paths(Simd simd) {
  std::vector<EncodePath> out{EncodePath::kFused, EncodePath::kBlockedGemm};
  if (simd == Simd::kAvx512Vnni) out.push_back(EncodePath::kInt8);
  return out;
}

double int8_bound(const Problem& p, int64_t i, int64_t g);

// Chosen distance equals the true minimum up to fp32 score rounding (and, for
// the int8-estimate path, up to its rounding bound), and sqdist is the
// directly computed distance to the chosen codeword.
void check_near_optimal(const Problem& p, const Result& r, bool int8_estimate = false) {
  for (int64_t i = 0; i < p.n; ++i) {
    for (int64_t g = 0; g < p.g; ++g) {
      const int32_t code = r.codes[static_cast<size_t>(i * p.g + g)];
      ASTRA_CHECK(code >= 0 && code < p.k);
      if (code < 0 || code >= p.k) return;
      double best = std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < p.k; ++c) best = std::min(best, distance(p.xg(i, g), p.e(g, c), p.dg));
      double xnorm = 0.0;
      for (int64_t d = 0; d < p.dg; ++d) xnorm += double(p.xg(i, g)[d]) * p.xg(i, g)[d];
      const double chosen = distance(p.xg(i, g), p.e(g, code), p.dg);
      // Scores are O(||x||^2 + ||e||^2) (unit-normal data: ||e||^2 ~ Dg).
      const double tol = 1e-5 * (xnorm + 4.0 * p.dg + 1.0) + (int8_estimate ? int8_bound(p, i, g) : 0.0);
      ASTRA_CHECK(chosen - best <= tol);
      const float sq = r.sqdist[static_cast<size_t>(i * p.g + g)];
      ASTRA_CHECK(std::fabs(sq - chosen) <= 1e-5 * (chosen + 1.0));
    }
  }
}

ASTRA_TEST(random_inputs_pick_the_nearest_codeword) {
  const int64_t widths[] = {1, 2, 3, 4, 5, 8, 12, 16, 17, 24, 31, 32, 33, 48, 64, 65, 96, 130};
  const int64_t sizes[] = {2, 3, 17, 64, 65, 100, 257};
  uint32_t seed = 1;
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      for (int64_t dg : widths) {
        for (int64_t k : sizes) {
          const int64_t n = 1 + (seed * 7) % 70;
          const int64_t g = 1 + seed % 3;
          const Problem p = random_problem(n, g, k, dg, seed++);
          check_near_optimal(p, encode(p, simd, path));
        }
      }
    }
  }
}

ASTRA_TEST(well_separated_codebooks_give_exact_codes) {
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      for (int64_t dg : {1, 4, 7, 24, 48, 64, 100}) {
        for (int64_t k : {2, 50, 129, 1000}) {
          Problem p = random_problem(67, 2, k, dg, static_cast<uint32_t>(dg * 1000 + k));
          for (float& v : p.cb) v *= 1000.0f;  // codewords far apart relative to the noise
          spread_scalar_codebook(p, static_cast<uint32_t>(k));
          std::mt19937 rng(static_cast<uint32_t>(k));
          std::vector<int32_t> want(static_cast<size_t>(p.n * p.g));
          for (int64_t i = 0; i < p.n; ++i) {
            for (int64_t g = 0; g < p.g; ++g) {
              const int32_t c = static_cast<int32_t>(rng() % k);
              want[static_cast<size_t>(i * p.g + g)] = c;
              for (int64_t d = 0; d < dg; ++d) p.xg(i, g)[d] = p.e(g, c)[d] + 1e-3f * p.xg(i, g)[d];
            }
          }
          const Result r = encode(p, simd, path);
          ASTRA_CHECK(r.codes == want);
        }
      }
    }
  }
}

ASTRA_TEST(duplicate_codewords_resolve_to_the_lowest_index) {
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      for (int64_t dg : {1, 3, 8, 24, 32, 96, 200}) {
        const int64_t k = 300;
        Problem p = random_problem(40, 1, k, dg, static_cast<uint32_t>(dg));
        spread_scalar_codebook(p, 9);
        // Codeword 5 copied to 70, 150 and 299 (other SIMD lanes, panels and
        // GEMM column blocks); codeword 0 copied to 1.
        for (int64_t c : {70, 150, 299}) std::copy(p.e(0, 5), p.e(0, 5) + dg, p.e(0, c));
        std::copy(p.e(0, 0), p.e(0, 0) + dg, p.e(0, 1));
        for (int64_t i = 0; i < p.n; ++i) {
          const int64_t src = i % 2 == 0 ? 150 : 1;
          const float noise = i < 10 ? 0.0f : 1e-3f;  // exact copies and nearby points
          for (int64_t d = 0; d < dg; ++d) p.xg(i, 0)[d] = p.e(0, src)[d] + noise * p.xg(i, 0)[d];
        }
        const Result r = encode(p, simd, path);
        for (int64_t i = 0; i < p.n; ++i) ASTRA_CHECK_EQ(r.codes[i], i % 2 == 0 ? 5 : 0);
      }
    }
  }
}

ASTRA_TEST(all_equal_scores_give_index_zero) {
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      Problem p = random_problem(9, 2, 77, 5, 3);
      std::fill(p.cb.begin(), p.cb.end(), 0.5f);
      const Result r = encode(p, simd, path);
      for (int32_t c : r.codes) ASTRA_CHECK_EQ(c, 0);
    }
  }
}

ASTRA_TEST(non_finite_groups_get_code_zero) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      for (int64_t dg : {1, 6, 24, 100}) {
        Problem p = random_problem(8, 3, 40, dg, 11);
        // Group 1 of rows 0..3: NaN, +Inf, -Inf, and finite values whose squares overflow.
        p.xg(0, 1)[dg - 1] = nan;
        p.xg(1, 1)[0] = inf;
        p.xg(2, 1)[dg / 2] = -inf;
        p.xg(3, 1)[0] = 3e19f;
        const Result clean = encode(random_problem(8, 3, 40, dg, 11), simd, path);
        const Result r = encode(p, simd, path);
        for (int64_t i = 0; i < 4; ++i) {
          ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(i * 3 + 1)], 0);
          ASTRA_CHECK(!std::isfinite(r.sqdist[static_cast<size_t>(i * 3 + 1)]));
          // Other groups of the same rows are unaffected.
          ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(i * 3)], clean.codes[static_cast<size_t>(i * 3)]);
          ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(i * 3 + 2)], clean.codes[static_cast<size_t>(i * 3 + 2)]);
        }
        for (int64_t i = 4; i < p.n; ++i) ASTRA_CHECK(std::isfinite(r.sqdist[static_cast<size_t>(i * 3 + 1)]));
      }
    }
  }
}

ASTRA_TEST(non_finite_codewords_never_win) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      for (int64_t dg : {2, 24, 100}) {
        Problem p = random_problem(30, 1, 50, dg, 5);
        p.e(0, 0)[0] = nan;
        p.e(0, 17)[dg - 1] = inf;
        // Rows that would pick 0 or 17 if those were finite.
        for (int64_t d = 0; d < dg; ++d) {
          p.xg(0, 0)[d] = d == 0 ? 0.0f : p.e(0, 0)[d];
          p.xg(1, 0)[d] = d == dg - 1 ? 0.0f : p.e(0, 17)[d];
        }
        const Result r = encode(p, simd, path);
        for (int64_t i = 0; i < p.n; ++i) {
          ASTRA_CHECK(r.codes[i] != 0 && r.codes[i] != 17);
          ASTRA_CHECK(std::isfinite(r.sqdist[i]));
        }
      }
    }
  }
}

ASTRA_TEST(extreme_shapes) {
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      const Problem large_k = random_problem(5, 1, 65536, 2, 21);
      check_near_optimal(large_k, encode(large_k, simd, path));
      const Problem wide = random_problem(3, 1, 7, 4096, 22, 0);
      check_near_optimal(wide, encode(wide, simd, path));
      const Problem many_groups = random_problem(3, 64, 2, 1, 23, 0);
      check_near_optimal(many_groups, encode(many_groups, simd, path));
      const Problem split_packing = random_problem(9, 2, 1000, 700, 25);  // several prepare tasks per group
      check_near_optimal(split_packing, encode(split_packing, simd, path));
      const Problem one_row = random_problem(1, 2, 1000, 24, 24);
      check_near_optimal(one_row, encode(one_row, simd, path, 1));
    }
  }
}

ASTRA_TEST(repeated_rows_with_zero_stride) {
  for (Simd simd : simds()) {
    for (EncodePath path : paths(simd)) {
      Problem p = random_problem(1, 2, 33, 24, 31);
      p.n = 11;
      p.x_stride = 0;  // every row aliases row 0 (an expanded tensor)
      const Result r = encode(p, simd, path);
      for (int64_t i = 1; i < p.n; ++i) {
        ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(i * 2)], r.codes[0]);
        ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(i * 2 + 1)], r.codes[1]);
      }
    }
  }
}

ASTRA_TEST(path_rule_follows_the_measured_crossover) {
  for (Simd simd : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
    const int64_t w = astra::core::gemm_min_width(simd);
    const EncodePath mid = simd == Simd::kAvx512Vnni ? EncodePath::kInt8 : EncodePath::kFused;
    ASTRA_CHECK(astra::core::choose_encode_path(astra::core::kInt8MinWidth - 1, simd) == EncodePath::kFused);
    ASTRA_CHECK(astra::core::choose_encode_path(astra::core::kInt8MinWidth, simd) == mid);
    ASTRA_CHECK(astra::core::choose_encode_path(w - 1, simd) == mid);
    ASTRA_CHECK(astra::core::choose_encode_path(w, simd) == EncodePath::kBlockedGemm);
    ASTRA_CHECK(astra::core::choose_encode_path(4096, simd) == EncodePath::kBlockedGemm);
    ASTRA_CHECK(astra::core::int8_estimate_beats_exact(simd) == (simd == Simd::kAvx512Vnni));
  }
}


// --- the int8-estimate path (approximate) -----------------------------------

// 2B of argmin_int8.h for row i, group g: the most by which the chosen
// codeword's true score may exceed the best one (with the grids' rounding).
double int8_bound(const Problem& p, int64_t i, int64_t g) {
  const float levels = 127.0f;
  float peak_e = 0.0f;
  for (int64_t c = 0; c < p.k; ++c) {
    for (int64_t d = 0; d < p.dg; ++d) peak_e = std::max(peak_e, std::fabs(p.e(g, c)[d]));
  }
  float peak_x = 0.0f;
  for (int64_t d = 0; d < p.dg; ++d) peak_x = std::max(peak_x, std::fabs(p.xg(i, g)[d]));
  const float step_e = std::max(peak_e / levels, astra::core::kInt8MinStep);
  const float step_x = std::max(peak_x / levels, astra::core::kInt8MinStep);
  double l1_x = 0.0, l1_e = 0.0;
  for (int64_t d = 0; d < p.dg; ++d) l1_x += std::fabs(std::nearbyint(p.xg(i, g)[d] * (1.0f / step_x)));
  for (int64_t c = 0; c < p.k; ++c) {
    double l1 = 0.0;
    for (int64_t d = 0; d < p.dg; ++d) l1 += std::fabs(std::nearbyint(p.e(g, c)[d] * (1.0f / step_e)));
    l1_e = std::max(l1_e, l1);
  }
  return 2.0 * double(step_x) * step_e * (l1_x + l1_e + 0.5 * double(p.dg));
}

ASTRA_TEST(int8_estimates_stay_within_their_rounding_bound) {
  const int64_t widths[] = {1, 3, 4, 5, 17, 24, 33, 64, 130, 768};
  const int64_t sizes[] = {2, 17, 33, 100, 1024};
  uint32_t seed = 100;
  for (Simd simd : simds()) {
    for (int64_t dg : widths) {
      for (int64_t k : sizes) {
        if (dg * k > 200000) continue;
        const Problem p = random_problem(1 + (seed * 7) % 40, 1 + seed % 3, k, dg, seed);
        ++seed;
        check_near_optimal(p, encode(p, simd, EncodePath::kInt8Estimate), /*int8_estimate=*/true);
      }
    }
  }
}

// The int8 SIMD builds that this CPU runs (AVX-512 VNNI, AVX2), each compared with the portable code.
std::vector<Simd> int8_simd_builds() {
  std::vector<Simd> out;
  for (Simd s : {Simd::kAvx2, Simd::kAvx512Vnni}) {
    if (astra::core::simd_supported(s)) out.push_back(s);
  }
  return out;
}

// Duplicates, NaN / inf / overflowing codewords, zero, subnormal and
// non-finite rows, and a row equal to a duplicated codeword (5 = 70 = 150 = 299).
Problem adversarial_int8_problem() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  Problem odd = random_problem(40, 2, 300, 24, 9);
  for (int64_t c : {70, 150, 299}) std::copy(odd.e(0, 5), odd.e(0, 5) + 24, odd.e(0, c));
  odd.e(1, 0)[0] = nan;
  odd.e(1, 17)[3] = inf;
  std::fill(odd.e(1, 40), odd.e(1, 40) + 24, 3e30f);  // squares overflow
  std::fill(odd.xg(0, 0), odd.xg(0, 0) + 24, 0.0f);    // zero row
  std::fill(odd.xg(1, 0), odd.xg(1, 0) + 24, 1e-41f);  // subnormal row
  odd.xg(2, 1)[4] = nan;
  odd.xg(3, 1)[0] = -inf;
  std::copy(odd.e(0, 150), odd.e(0, 150) + 24, odd.xg(4, 0));
  return odd;
}

// Problems for the bit-identity tests: every width 1..67 against sizes around
// the panel widths (16, 32), and the adversarial inputs of the exact paths.
std::vector<Problem> int8_identity_problems() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  uint32_t seed = 300;
  std::vector<Problem> problems;
  for (int64_t dg = 1; dg <= 67; ++dg) {
    for (int64_t k : {2, 15, 16, 17, 31, 33, 100, 257}) {
      if ((dg + k) % 3 != 0 && k > 33) continue;  // every width and size, not every pair of them
      problems.push_back(random_problem(3 + seed % 37, 1 + seed % 3, k, dg, seed, seed % 5));
      ++seed;
    }
  }
  for (int64_t dg : {96, 130, 768}) problems.push_back(random_problem(21, 1, 1000, dg, seed++));
  problems.push_back(random_problem(5, 1, 65536, 2, seed++));   // K = 2^16
  problems.push_back(random_problem(70, 1, 4099, 24, seed++));  // K past one L1 block of panels
  problems.push_back(adversarial_int8_problem());
  // e and -e have bit-equal norms: a zero row ties every pair, and picks the lower index
  Problem mirrored = random_problem(6, 1, 64, 9, 11);
  for (int64_t c = 32; c < 64; ++c) {
    for (int64_t d = 0; d < 9; ++d) mirrored.e(0, c)[d] = -mirrored.e(0, c - 32)[d];
  }
  std::fill(mirrored.xg(0, 0), mirrored.xg(0, 0) + 9, 0.0f);
  problems.push_back(mirrored);
  Problem same = random_problem(9, 1, 77, 5, 12);  // every estimate equal
  std::fill(same.cb.begin(), same.cb.end(), 0.5f);
  problems.push_back(same);
  Problem dead = random_problem(4, 1, 20, 7, 13);  // no finite codeword
  std::fill(dead.cb.begin(), dead.cb.end(), nan);
  problems.push_back(dead);
  for (float scale : {1e-39f, 1e-30f, 1e-15f, 1e15f, 1e18f}) {  // subnormal to huge grids
    Problem p = random_problem(20, 2, 64, 8, seed++);
    for (float& v : p.cb) v *= scale;
    for (float& v : p.x) v *= scale > 1.0f ? 1.0f / scale : scale;
    problems.push_back(p);
  }
  Problem zero_stride = random_problem(1, 2, 33, 24, 14);
  zero_stride.n = 11;
  zero_stride.x_stride = 0;  // every row aliases row 0
  problems.push_back(zero_stride);
  return problems;
}

// Every SIMD build and the portable code must pick the same codes, bit for bit.
ASTRA_TEST(int8_estimate_simd_builds_equal_portable) {
  const std::vector<Problem> problems = int8_identity_problems();
  for (Simd simd : int8_simd_builds()) {
    std::fprintf(stderr, "  %s (%s) vs portable: %zu problems\n", astra::core::simd_name(simd),
                 astra::core::int8_kernels(simd).name, problems.size());
    for (const Problem& p : problems) {
      const Result fast = encode(p, simd, EncodePath::kInt8Estimate);
      const Result portable = encode(p, Simd::kGeneric, EncodePath::kInt8Estimate);
      ASTRA_CHECK(fast.codes == portable.codes);
      if (fast.codes != portable.codes) {
        std::fprintf(stderr, "  differ: n=%ld g=%ld k=%ld dg=%ld\n", static_cast<long>(p.n), static_cast<long>(p.g),
                     static_cast<long>(p.k), static_cast<long>(p.dg));
      }
    }
  }
  if (int8_simd_builds().empty()) std::fprintf(stderr, "  skipped: this CPU runs no int8 SIMD kernels\n");
}

ASTRA_TEST(int8_estimate_non_finite_codewords_never_win) {
  const Problem odd = adversarial_int8_problem();
  for (Simd simd : simds()) {
    const Result r = encode(odd, simd, EncodePath::kInt8Estimate);
    for (int64_t i = 4; i < odd.n; ++i) {
      const int32_t c = r.codes[static_cast<size_t>(i * 2 + 1)];
      ASTRA_CHECK(c != 0 && c != 17 && c != 40);
    }
    ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(2 * 2 + 1)], 0);  // the NaN group
    ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(3 * 2 + 1)], 0);  // the -inf group
    ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(4 * 2)], 5);      // the copy of codeword 150 = 5
  }
}

// Feature d of codeword j in packed panels of `kernels`' layout, as an integer.
int32_t packed_value(const astra::core::Int8Kernels& kernels, const std::vector<int32_t>& panels, int64_t width,
                     int64_t j, int64_t d) {
  const int64_t pw = kernels.panel_width;
  const bool quads = kernels.layout == astra::core::Int8Layout::kQuads;
  const int64_t per_word = quads ? 4 : 2;
  const int64_t index = ((j / pw) * astra::core::int8_words(kernels.layout, width) + d / per_word) * pw + j % pw;
  const auto word = static_cast<uint32_t>(panels[static_cast<size_t>(index)]);
  if (quads) return static_cast<int8_t>((word >> (8 * (d % 4))) & 0xFFu);
  return static_cast<int16_t>((word >> (16 * (d % 2))) & 0xFFFFu);
}

// The two packed layouts hold the same grid: same step, bounds and norms, and
// the same int8 value of every feature of every codeword; padding is zero.
ASTRA_TEST(int8_layouts_pack_the_same_grid) {
  using astra::core::Int8Grid;
  using astra::core::Int8Kernels;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Int8Kernels& portable = astra::core::int8_kernels(Simd::kGeneric);
  for (Simd simd : int8_simd_builds()) {
    const Int8Kernels& kernels = astra::core::int8_kernels(simd);
    for (int64_t dg : {1, 2, 3, 7, 8, 9, 24, 67}) {
      for (int64_t k : {1, 7, 16, 17, 33, 100}) {
        Problem p = random_problem(1, 1, k, dg, static_cast<uint32_t>(dg * 131 + k));
        if (k > 3) p.e(0, 2)[dg - 1] = nan;
        if (k > 5) std::fill(p.e(0, 5), p.e(0, 5) + dg, 1e30f);  // squares overflow
        // Buffers prefilled with garbage: the packing must write every word and norm.
        auto pack = [&](const Int8Kernels& kn, std::vector<int32_t>& panels, std::vector<float>& norms) {
          const int64_t padded = (k + kn.panel_width - 1) / kn.panel_width * kn.panel_width;
          panels.assign(static_cast<size_t>(padded * astra::core::int8_words(kn.layout, dg)), -1);
          norms.assign(static_cast<size_t>(padded), -1.0f);
          std::vector<int32_t> offsets(static_cast<size_t>(padded), -1);
          return kn.pack(p.cb.data(), k, dg, panels.data(), norms.data(), offsets.data());
        };
        std::vector<int32_t> a_panels, b_panels;
        std::vector<float> a_norms, b_norms;
        const Int8Grid a = pack(kernels, a_panels, a_norms);
        const Int8Grid b = pack(portable, b_panels, b_norms);
        ASTRA_CHECK(a.scale == b.scale && a.max_l1 == b.max_l1 && a.norm_peak == b.norm_peak);
        const int64_t padded_features = static_cast<int64_t>(a_panels.size() / a_norms.size());
        const int64_t padded_width = padded_features * (kernels.layout == astra::core::Int8Layout::kQuads ? 4 : 2);
        for (int64_t j = 0; j < static_cast<int64_t>(a_norms.size()); ++j) {
          const float norm = a_norms[static_cast<size_t>(j)];
          if (j >= k) {
            ASTRA_CHECK(std::isinf(norm));
          } else {
            ASTRA_CHECK(std::memcmp(&norm, &b_norms[static_cast<size_t>(j)], sizeof(float)) == 0);
          }
          for (int64_t d = 0; d < padded_width; ++d) {
            const int32_t want = j < k && d < dg ? packed_value(portable, b_panels, dg, j, d) : 0;
            ASTRA_CHECK_EQ(packed_value(kernels, a_panels, dg, j, d), want);
          }
        }
      }
    }
  }
}

ASTRA_TEST(int8_estimate_duplicates_resolve_to_the_lowest_index) {
  for (Simd simd : simds()) {
    for (int64_t dg : {8, 24, 96}) {
      Problem p = random_problem(12, 1, 300, dg, static_cast<uint32_t>(dg));
      for (int64_t c : {70, 150, 299}) std::copy(p.e(0, 5), p.e(0, 5) + dg, p.e(0, c));
      for (int64_t i = 0; i < p.n; ++i) std::copy(p.e(0, 150), p.e(0, 150) + dg, p.xg(i, 0));
      const Result r = encode(p, simd, EncodePath::kInt8Estimate);
      for (int64_t i = 0; i < p.n; ++i) ASTRA_CHECK_EQ(r.codes[static_cast<size_t>(i)], 5);
    }
  }
}

}  // namespace

int main() { return astra::test::run_all(); }
