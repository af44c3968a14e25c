// Unit tests of the torch-free mixed-precision attention core: fp32 with every
// compiled SIMD build and fp64, naive GEMMs, against a double-precision brute
// force of the reference.py contract (materialised remote keys, one softmax).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/attention_kernels.h"
#include "core/mp_attention.h"
#include "tests/test_harness.h"

namespace {

using astra::core::AttentionPlan;
using astra::core::RemoteFormulation;
using astra::core::Simd;

template <class T>
void naive_abt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
               T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p) s += static_cast<double>(a[i * lda + p]) * b[j * ldb + p];
      c[i * ldc + j] = static_cast<T>(s);
    }
  }
}

template <class T>
void naive_ab_add(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                  T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = c[i * ldc + j];
      for (int64_t p = 0; p < k; ++p) s += static_cast<double>(a[i * lda + p]) * b[p * ldb + j];
      c[i * ldc + j] = static_cast<T>(s);
    }
  }
}

struct Case {
  int64_t b, h, hkv, tq, tl, tr, g, k, d;
  bool causal;
  bool bias;
  RemoteFormulation formulation;
  bool token_major_local;  // k/v_local as a (B, Tl, Hkv, d) buffer viewed as (B, Hkv, Tl, d)
  uint32_t seed;
  bool rotary = false;  // remote keys rotated by random angles (2, Tr, d/2)

  std::string name() const {
    std::ostringstream s;
    s << "B" << b << " H" << h << " Hkv" << hkv << " Tq" << tq << " Tl" << tl << " Tr" << tr << " G"
      << g << " K" << k << " d" << d << (causal ? " causal" : "") << (bias ? " bias" : "")
      << (formulation == RemoteFormulation::kCodewords ? " codewords" : " tokens")
      << (token_major_local ? " strided" : "") << (rotary ? " rotary" : "");
    return s.str();
  }
};

// Inputs in double; the kernel under test sees them rounded to T.
struct Problem {
  Case c;
  std::vector<double> q, k_local, v_local, k_table, v_table, k_bias, v_bias;
  std::vector<int32_t> codes;
  std::vector<double> rotation;  // (2, Tr, d/2) cos then sin, or empty
  astra::core::HeadStrides q_strides, local_strides;
  double scale;

  double local_at(const std::vector<double>& t, int64_t b, int64_t kvh, int64_t j,
                  int64_t x) const {
    return t[static_cast<size_t>(b * local_strides.batch + kvh * local_strides.head +
                                 j * local_strides.token + x)];
  }
};

Problem make_problem(const Case& c) {
  Problem p{c, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 1.0 / std::sqrt(static_cast<double>(c.d))};
  std::mt19937 rng(c.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto fill = [&](std::vector<double>& v, int64_t n, double scale) {
    v.resize(static_cast<size_t>(n));
    for (double& x : v) x = normal(rng) * scale;
  };
  fill(p.q, c.b * c.h * c.tq * c.d, 1.0);
  fill(p.k_local, c.b * c.hkv * c.tl * c.d, 1.0);
  fill(p.v_local, c.b * c.hkv * c.tl * c.d, 1.0);
  fill(p.k_table, c.g * c.k * c.hkv * c.d, 1.0 / std::sqrt(static_cast<double>(c.g)));
  fill(p.v_table, c.g * c.k * c.hkv * c.d, 1.0 / std::sqrt(static_cast<double>(c.g)));
  if (c.bias) {
    fill(p.k_bias, c.hkv * c.d, 1.0);
    fill(p.v_bias, c.hkv * c.d, 1.0);
  }
  p.codes.resize(static_cast<size_t>(c.b * c.tr * c.g));
  // Few distinct codes for the codewords formulation: counts above 1 matter.
  const int64_t used =
      c.formulation == RemoteFormulation::kCodewords ? std::max<int64_t>(1, c.k / 2) : c.k;
  for (int32_t& code : p.codes) code = static_cast<int32_t>(rng() % used);
  if (c.rotary) {
    const int64_t half = c.d / 2;
    p.rotation.resize(static_cast<size_t>(2 * c.tr * half));
    std::uniform_real_distribution<double> angle(-40000.0, 40000.0);  // positions past 32K
    for (int64_t i = 0; i < c.tr * half; ++i) {
      const double a = angle(rng);
      p.rotation[static_cast<size_t>(i)] = std::cos(a);
      p.rotation[static_cast<size_t>(c.tr * half + i)] = std::sin(a);
    }
  }
  p.q_strides = {c.h * c.tq * c.d, c.tq * c.d, c.d};
  p.local_strides = c.token_major_local
                        ? astra::core::HeadStrides{c.tl * c.hkv * c.d, c.d, c.hkv * c.d}
                        : astra::core::HeadStrides{c.hkv * c.tl * c.d, c.tl * c.d, c.d};
  return p;
}

struct Result {
  std::vector<double> out;  // (B, H, Tq, d)
  std::vector<double> lse;  // (B, H, Tq)
};

// The contract, literally: every visible key materialised, one softmax in double.
Result brute_force(const Problem& p) {
  const Case& c = p.c;
  Result r{std::vector<double>(static_cast<size_t>(c.b * c.h * c.tq * c.d)),
           std::vector<double>(static_cast<size_t>(c.b * c.h * c.tq))};
  const int64_t width = c.hkv * c.d;
  for (int64_t b = 0; b < c.b; ++b) {
    // Remote keys/values (all kv heads) and their score biases.
    std::vector<std::vector<double>> keys, values;
    std::vector<double> key_bias;
    auto table_row = [&](const std::vector<double>& table, int64_t g, int64_t code) {
      return table.data() + (g * c.k + code) * width;
    };
    if (c.formulation == RemoteFormulation::kCodewords) {
      std::vector<int64_t> counts(static_cast<size_t>(c.k), 0);
      for (int64_t t = 0; t < c.tr; ++t)
        ++counts[static_cast<size_t>(p.codes[static_cast<size_t>(b * c.tr + t)])];
      for (int64_t code = 0; code < c.k; ++code) {
        if (counts[static_cast<size_t>(code)] == 0) continue;
        std::vector<double> kk(table_row(p.k_table, 0, code),
                               table_row(p.k_table, 0, code) + width);
        std::vector<double> vv(table_row(p.v_table, 0, code),
                               table_row(p.v_table, 0, code) + width);
        for (int64_t x = 0; x < width && c.bias; ++x) {
          kk[static_cast<size_t>(x)] += p.k_bias[static_cast<size_t>(x)];
          vv[static_cast<size_t>(x)] += p.v_bias[static_cast<size_t>(x)];
        }
        keys.push_back(kk);
        values.push_back(vv);
        key_bias.push_back(std::log(static_cast<double>(counts[static_cast<size_t>(code)])));
      }
    } else {
      for (int64_t t = 0; t < c.tr; ++t) {
        std::vector<double> kk(static_cast<size_t>(width), 0.0),
            vv(static_cast<size_t>(width), 0.0);
        for (int64_t g = 0; g < c.g; ++g) {
          const int64_t code = p.codes[static_cast<size_t>((b * c.tr + t) * c.g + g)];
          for (int64_t x = 0; x < width; ++x) {
            kk[static_cast<size_t>(x)] += table_row(p.k_table, g, code)[x];
            vv[static_cast<size_t>(x)] += table_row(p.v_table, g, code)[x];
          }
        }
        for (int64_t x = 0; x < width && c.bias; ++x) {
          kk[static_cast<size_t>(x)] += p.k_bias[static_cast<size_t>(x)];
          vv[static_cast<size_t>(x)] += p.v_bias[static_cast<size_t>(x)];
        }
        if (c.rotary) {  // pairs (i, i + d/2) of each kv head turn by token t's angle i
          const int64_t half = c.d / 2;
          const std::vector<double> plain = kk;
          for (int64_t kvh = 0; kvh < c.hkv; ++kvh) {
            for (int64_t i = 0; i < half; ++i) {
              const double cs = p.rotation[static_cast<size_t>(t * half + i)];
              const double sn = p.rotation[static_cast<size_t>((c.tr + t) * half + i)];
              const size_t lo = static_cast<size_t>(kvh * c.d + i), hi = lo + static_cast<size_t>(half);
              kk[lo] = plain[lo] * cs - plain[hi] * sn;
              kk[hi] = plain[hi] * cs + plain[lo] * sn;
            }
          }
        }
        keys.push_back(kk);
        values.push_back(vv);
        key_bias.push_back(0.0);
      }
    }
    for (int64_t h = 0; h < c.h; ++h) {
      const int64_t kvh = h / (c.h / c.hkv);
      for (int64_t i = 0; i < c.tq; ++i) {
        const double* qi = p.q.data() + ((b * c.h + h) * c.tq + i) * c.d;
        std::vector<double> scores;
        std::vector<const double*> vrows;
        std::vector<double> local_v;
        for (size_t e = 0; e < keys.size(); ++e) {
          double s = 0.0;
          for (int64_t x = 0; x < c.d; ++x)
            s += qi[x] * keys[e][static_cast<size_t>(kvh * c.d + x)];
          scores.push_back(s * p.scale + key_bias[e]);
          vrows.push_back(values[e].data() + kvh * c.d);
        }
        for (int64_t j = 0; j < c.tl; ++j) {
          if (c.causal && j > i + c.tl - c.tq) continue;
          double s = 0.0;
          for (int64_t x = 0; x < c.d; ++x) s += qi[x] * p.local_at(p.k_local, b, kvh, j, x);
          scores.push_back(s * p.scale);
          vrows.push_back(p.v_local.data() + b * p.local_strides.batch +
                          kvh * p.local_strides.head + j * p.local_strides.token);
        }
        const size_t row = static_cast<size_t>((b * c.h + h) * c.tq + i);
        double* out = r.out.data() + row * static_cast<size_t>(c.d);
        if (scores.empty()) {
          r.lse[row] = -std::numeric_limits<double>::infinity();
          continue;
        }
        const double m = *std::max_element(scores.begin(), scores.end());
        double sum = 0.0;
        for (double s : scores) sum += std::exp(s - m);
        for (size_t e = 0; e < scores.size(); ++e) {
          const double w = std::exp(scores[e] - m) / sum;
          for (int64_t x = 0; x < c.d; ++x) out[x] += w * vrows[e][x];
        }
        r.lse[row] = m + std::log(sum);
      }
    }
  }
  return r;
}

template <class T>
std::vector<T> rounded(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Runs the core in T over a split of its tasks into a few ranges (as threads would).
template <class T>
Result run_core(const Problem& p, const astra::core::AttentionKernels<T>& kernels,
                int64_t threads) {
  const Case& c = p.c;
  const std::vector<T> q = rounded<T>(p.q), kl = rounded<T>(p.k_local), vl = rounded<T>(p.v_local);
  const std::vector<T> kt = rounded<T>(p.k_table), vt = rounded<T>(p.v_table);
  const std::vector<T> kb = rounded<T>(p.k_bias), vb = rounded<T>(p.v_bias);
  const std::vector<T> rot = rounded<T>(p.rotation);
  astra::core::AttentionInputs<T> inputs{q.data(),
                                               p.q_strides,
                                               kl.data(),
                                               p.local_strides,
                                               vl.data(),
                                               p.local_strides,
                                               p.codes.data(),
                                               kt.data(),
                                               vt.data(),
                                               c.bias ? kb.data() : nullptr,
                                               c.bias ? vb.data() : nullptr,
                                               c.causal,
                                               p.scale,
                                               c.formulation};
  if (c.rotary) inputs.rotation = rot.data();
  const astra::core::AttentionShape shape{c.b, c.h, c.hkv, c.tq, c.tl, c.tr, c.g, c.k, c.d};
  AttentionPlan<T> plan(shape, inputs, kernels, threads);
  for (int64_t b = 0; b < plan.prepare_tasks(); ++b) plan.prepare(b);
  std::vector<T> out(static_cast<size_t>(c.b * c.h * c.tq * c.d), T(-7));
  std::vector<float> lse(static_cast<size_t>(c.b * c.h * c.tq), -7.0f);
  const astra::core::AttentionGemms<T> gemms{&naive_abt<T>, &naive_ab_add<T>};
  const int64_t tasks = plan.tasks();
  for (int64_t t0 = 0; t0 < tasks; t0 += 3)
    plan.run(t0, std::min(tasks, t0 + 3), gemms, {out.data(), lse.data()});
  return Result{std::vector<double>(out.begin(), out.end()),
                std::vector<double>(lse.begin(), lse.end())};
}

// lse is returned in fp32: its relative error is at least half an fp32 ulp (2^-24).
void check_close(const Result& got, const Result& want, double tol, const std::string& what) {
  const double lse_tol = std::max(tol, 6e-8);
  double worst_out = 0.0, worst_lse = 0.0;
  bool pattern_ok = true;
  for (size_t row = 0; row < want.lse.size(); ++row) {
    const size_t d = want.out.size() / std::max<size_t>(1, want.lse.size());
    const bool visible = std::isfinite(want.lse[row]);
    if (visible != std::isfinite(got.lse[row]) ||
        (!visible && got.lse[row] != -std::numeric_limits<double>::infinity())) {
      pattern_ok = false;
      continue;
    }
    if (visible)
      worst_lse = std::max(worst_lse, std::abs(got.lse[row] - want.lse[row]) /
                                          std::max(1.0, std::abs(want.lse[row])));
    for (size_t x = 0; x < d; ++x) {
      const double g = got.out[row * d + x];
      if (!visible && g != 0.0) pattern_ok = false;
      worst_out = std::max(worst_out, std::abs(g - want.out[row * d + x]));
    }
  }
  if (!pattern_ok)
    astra::test::report_failure(__FILE__, __LINE__, what + ": lse -inf / out 0 pattern differs");
  if (!(worst_out <= tol && worst_lse <= lse_tol)) {
    std::ostringstream msg;
    msg << what << ": max |out error| " << worst_out << " (tolerance " << tol
        << "), max lse relative error " << worst_lse << " (tolerance " << lse_tol << ")";
    astra::test::report_failure(__FILE__, __LINE__, msg.str());
  }
}

// `threads`: the plan's thread hint, which decides how many kv heads share a task.
void check_case(const Case& c, int64_t threads = 1) {
  const Problem p = make_problem(c);
  const Result want = brute_force(p);
  const std::string name = c.name() + " threads " + std::to_string(threads);
  check_close(run_core<double>(p, astra::core::attention_kernels_f64(), threads), want, 1e-11,
              "fp64 " + name);
  for (Simd simd : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
    if (!astra::core::simd_supported(simd)) continue;
    check_close(run_core<float>(p, astra::core::attention_kernels_f32(simd), threads), want, 2e-5,
                std::string("fp32 ") + astra::core::simd_name(simd) + " " + name);
  }
}

constexpr RemoteFormulation kTok = RemoteFormulation::kTokens;
constexpr RemoteFormulation kCw = RemoteFormulation::kCodewords;

ASTRA_TEST(small_shapes_causal_and_full) {
  uint32_t seed = 0;
  for (bool causal : {false, true}) {
    // b, h, hkv, tq, tl, tr, g, k, d
    check_case({2, 4, 2, 9, 11, 13, 1, 37, 16, causal, false, kTok, false, ++seed});
    check_case({2, 4, 2, 9, 11, 13, 1, 37, 16, causal, false, kCw, false, ++seed});
    check_case({1, 3, 3, 5, 7, 6, 16, 19, 8, causal, true, kTok, false, ++seed});
    check_case({1, 2, 1, 4, 6, 10, 32, 8, 32, causal, false, kTok, true, ++seed});
    check_case({1, 1, 1, 1, 5, 3, 1, 3, 5, causal, true, kCw, false, ++seed});
  }
}

ASTRA_TEST(grouped_query_heads) {
  check_case({1, 12, 1, 30, 40, 20, 1, 16, 16, true, false, kTok, false, 11});
  check_case({2, 6, 2, 100, 90, 50, 4, 12, 24, true, true, kTok, true,
              12});  // ragged query blocks (85 per task)
  check_case({1, 8, 2, 17, 17, 40, 1, 9, 33, false, true, kCw, false, 13});
}

ASTRA_TEST(empty_segments_and_more_queries_than_keys) {
  for (bool causal : {false, true}) {
    check_case({2, 4, 2, 9, 11, 0, 1, 5, 16, causal, false, kTok, false, 21});  // no remote tokens
    check_case(
        {2, 4, 2, 9, 11, 0, 1, 5, 16, causal, false, kCw, false, 22});  // no codewords in use
    check_case({2, 4, 2, 9, 0, 13, 1, 37, 16, causal, true, kTok, false, 23});  // no local keys
    check_case({2, 4, 2, 12, 5, 0, 1, 5, 16, causal, false, kTok, false,
                24});  // Tq > Tl: some rows see nothing
    check_case({1, 2, 2, 12, 5, 4, 2, 5, 16, causal, false, kTok, false,
                25});  // ... unless remote tokens exist
    check_case({1, 2, 1, 6, 0, 0, 1, 5, 8, causal, false, kTok, false, 26});  // nothing at all
    check_case({1, 2, 1, 0, 4, 3, 1, 5, 8, causal, false, kTok, false, 27});  // no queries
  }
}

ASTRA_TEST(several_key_blocks_and_query_blocks) {
  // Tl and Tr above kBlockKeys, Tq above kTaskRows, d at and off the vector widths.
  check_case({1, 2, 2, 300, 600, 700, 1, 64, 64, true, false, kTok, false, 31});
  check_case({1, 2, 1, 130, 530, 3000, 1, 1200, 17, true, true, kCw, false, 32});
  check_case({1, 1, 1, 600, 520, 0, 1, 1, 64, true, false, kTok, true, 33});
}

ASTRA_TEST(large_tables_shared_by_several_kv_heads) {
  // Tables above kSharedGatherTableBytes: tasks gather for several kv heads
  // (as many as the thread hint allows), in tiles below kBlockKeys tokens.
  for (int64_t threads : {1, 2, 3, 8}) {
    check_case({1, 8, 4, 20, 9, 40, 32, 600, 16, true, true, kTok, true, 41}, threads);
    check_case({2, 6, 6, 7, 5, 700, 8, 400, 64, true, false, kTok, false, 42}, threads);
  }
}

ASTRA_TEST(rotary_remote_keys) {
  // Gathered keys rotated in the tile: small and odd half widths, GQA, bias, several key and query
  // blocks, tables shared by several kv heads and query blocks, no remote tokens.
  for (int64_t threads : {1, 3}) {
    check_case({2, 4, 2, 9, 11, 13, 2, 37, 16, true, true, kTok, false, 51, true}, threads);
    check_case({1, 2, 1, 5, 4, 7, 1, 5, 6, false, false, kTok, true, 52, true}, threads);
    check_case({1, 4, 1, 300, 300, 600, 1, 64, 64, true, false, kTok, false, 53, true}, threads);
    check_case({1, 8, 4, 300, 20, 40, 32, 600, 16, true, true, kTok, false, 54, true}, threads);
    check_case({1, 2, 2, 5, 6, 0, 1, 5, 10, true, false, kTok, false, 55, true}, threads);
  }
}

// The register-tiled GEMMs of every SIMD build against the naive ones: ragged sizes around the tile
// (6 rows, 2 vectors), an inner dimension of several packed chunks (P.V), leading dimensions past the
// sizes, and C's columns past n never written.
ASTRA_TEST(simd_gemms_match_naive_gemms) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {6, 16, 64}, {256, 513, 64}, {37, 64, 512},
                               {5, 80, 33}, {13, 3, 0}, {0, 4, 4}, {12, 40, 17}, {9, 48, 1100}};
  for (Simd simd : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
    if (!astra::core::simd_supported(simd)) continue;
    const auto& kernels = astra::core::attention_kernels_f32(simd);
    for (const auto& shape : shapes) {
      const int64_t m = shape[0], n = shape[1], k = shape[2];
      const int64_t lda = k + 3, ldb_t = k + 1, ldb = n + 5, ldc = n + 7;
      std::vector<float> a(static_cast<size_t>(std::max<int64_t>(1, m * lda)));
      std::vector<float> bt(static_cast<size_t>(std::max<int64_t>(1, n * ldb_t)));
      std::vector<float> b(static_cast<size_t>(std::max<int64_t>(1, k * ldb)));
      std::vector<float> c0(static_cast<size_t>(std::max<int64_t>(1, m * ldc)));
      for (auto* v : {&a, &bt, &b, &c0})
        for (float& x : *v) x = normal(rng);
      for (int pass = 0; pass < 2; ++pass) {  // abt, then ab_add
        std::vector<float> got = c0, want = c0;
        if (pass == 0) {
          kernels.gemm_abt(m, n, k, a.data(), lda, bt.data(), ldb_t, got.data(), ldc);
          naive_abt<float>(m, n, k, a.data(), lda, bt.data(), ldb_t, want.data(), ldc);
        } else {
          kernels.gemm_ab_add(m, n, k, a.data(), lda, b.data(), ldb, got.data(), ldc);
          naive_ab_add<float>(m, n, k, a.data(), lda, b.data(), ldb, want.data(), ldc);
        }
        double worst = 0.0;
        bool untouched = true;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < ldc; ++j) {
            const size_t at = static_cast<size_t>(i * ldc + j);
            if (j < n) worst = std::max(worst, static_cast<double>(std::abs(got[at] - want[at])));
            else untouched = untouched && got[at] == c0[at];
          }
        }
        std::ostringstream what;
        what << astra::core::simd_name(simd) << (pass == 0 ? " abt " : " ab_add ") << m << "x" << n << "x" << k;
        if (!(worst <= 1e-4 * std::max<int64_t>(1, k)) || !untouched)
          astra::test::report_failure(__FILE__, __LINE__, what.str() + (untouched ? ": values differ" : ": wrote past n"));
      }
    }
  }
}

ASTRA_TEST(fp32_exp2_is_accurate) {
  // One row: scores in [-130, 0] (log2 units) with the max at 0, some biased;
  // probabilities must be within 2 ulp-ish of exp2 in double.
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> uniform(-130.0, 0.0);
  const int64_t n = 203;
  for (Simd simd : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
    if (!astra::core::simd_supported(simd)) continue;
    std::vector<float> s(256), bias(256, 0.0f), o(3, 1.0f);
    std::vector<double> x(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      s[static_cast<size_t>(j)] = static_cast<float>(uniform(rng));
      bias[static_cast<size_t>(j)] = j % 3 == 0 ? -0.25f : 0.0f;
      x[static_cast<size_t>(j)] =
          static_cast<double>(s[static_cast<size_t>(j)] + bias[static_cast<size_t>(j)]);
    }
    s[7] = 0.0f;
    bias[7] = 0.0f;
    x[7] = 0.0;
    float row_max = -std::numeric_limits<float>::infinity(), row_sum = 0.0f;
    const astra::core::SoftmaxRowsArgs<float> args{
        s.data(), 256, 1, n, bias.data(), nullptr, &row_max, &row_sum, o.data(), 3, 3};
    astra::core::attention_kernels_f32(simd).softmax_rows(args);
    ASTRA_CHECK_EQ(row_max, 0.0f);
    double worst = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double want = std::exp2(x[static_cast<size_t>(j)]);
      if (want < 1e-37) continue;
      worst = std::max(worst, std::abs(s[static_cast<size_t>(j)] - want) / want);
    }
    ASTRA_CHECK(worst < 2.5e-7);
  }
}

// A NaN query gives a NaN out row and lse (reference.py), not the 0 / -inf of a row with no
// visible key, whether it meets remote, local or both kinds of keys; other rows are unchanged.
ASTRA_TEST(nan_query_gives_nan_row) {
  constexpr size_t kNanRow = 1 * 3 + 2;  // head 1, query 2 of (B=1, H=2, Tq=3)
  for (RemoteFormulation f : {kTok, kCw}) {
    for (int64_t tr : {0, 4}) {
      for (int64_t tl : {0, 5}) {
        if (tr == 0 && tl == 0) continue;
        const Case c{1, 2, 1, 3, tl, tr, 1, 6, 8, false, false, f, false, 7};
        Problem p = make_problem(c);
        const Result clean = brute_force(p);
        p.q[kNanRow * static_cast<size_t>(c.d)] = std::numeric_limits<double>::quiet_NaN();
        auto check = [&](const Result& got, const std::string& what) {
          const size_t d = static_cast<size_t>(c.d);
          for (size_t row = 0; row < clean.lse.size(); ++row) {
            bool ok = row == kNanRow ? std::isnan(got.lse[row])
                                     : std::abs(got.lse[row] - clean.lse[row]) < 1e-5;
            for (size_t x = 0; x < d; ++x) {
              const double g = got.out[row * d + x];
              ok = ok && (row == kNanRow ? std::isnan(g) : std::abs(g - clean.out[row * d + x]) < 1e-5);
            }
            if (!ok)
              astra::test::report_failure(__FILE__, __LINE__,
                                          what + " " + c.name() + " row " + std::to_string(row));
          }
        };
        check(run_core<double>(p, astra::core::attention_kernels_f64(), 1), "fp64");
        for (Simd simd : {Simd::kGeneric, Simd::kAvx2, Simd::kAvx512, Simd::kAvx512Vnni}) {
          if (!astra::core::simd_supported(simd)) continue;
          check(run_core<float>(p, astra::core::attention_kernels_f32(simd), 1),
                std::string("fp32 ") + astra::core::simd_name(simd));
        }
      }
    }
  }
}

}  // namespace

int main() { return astra::test::run_all(); }
