// Portable vector traits (GCC/Clang vector extensions, 4 lanes) for the
// templated CPU kernels: SSE2 on x86-64, NEON on AArch64, scalar elsewhere.
#pragma once

#include <cstdint>
#include <cstring>

namespace astra::core {
namespace {

struct SimdGeneric {
  static constexpr int kWidth = 4;
  // 2 x 4 tile: the fastest of the tile shapes tried on x86-64 SSE2
  // (benchmarks/RESULTS.md, tuning constants).
  static constexpr int kTileRows = 2;
  static constexpr int kTileVectors = 4;

  typedef float F __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
  using M = I;  // -1 lanes where true

  static F load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static I load(const int32_t* p) {
    I v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, F v) { std::memcpy(p, &v, sizeof v); }
  static void store(int32_t* p, I v) { std::memcpy(p, &v, sizeof v); }
  static F broadcast(float v) { return F{v, v, v, v}; }
  static I broadcast(int32_t v) { return I{v, v, v, v}; }
  static I lane_index() { return I{0, 1, 2, 3}; }
  static I add(I a, I b) { return a + b; }
  // No fused multiply-add guaranteed here: a product and a sum (ties still
  // break exactly, every lane runs the same operations).
  static F fmadd(F a, F b, F c) { return a * b + c; }
  static F mul(F a, F b) { return a * b; }
  // Lanes l < n: base[l * stride]; other lanes 0 (not read).
  static F gather(const float* base, int32_t stride, int n) {
    F v = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int l = 0; l < n && l < kWidth; ++l) v[l] = base[l * stride];
    return v;
  }
  static M first_lanes(int n) { return lane_index() < broadcast(n); }
  // IEEE `<`: false for NaN, so a NaN score never wins.
  static M less(F a, F b) { return a < b; }
  static F select(M m, F if_true, F if_false) { return m ? if_true : if_false; }
  static I select(M m, I if_true, I if_false) { return m ? if_true : if_false; }
};

}  // namespace
}  // namespace astra::core
