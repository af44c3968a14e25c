// Unit tests of the torch-free codebook gather.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/vq_decode.h"
#include "tests/test_harness.h"

namespace {

// Gathers with elements of T for every row split, compared element by element.
template <class T>
void check_gather(int64_t n, int64_t g, int64_t k, int64_t dg, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<T> table(static_cast<size_t>(g * k * dg));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<T>(rng());
  std::vector<int32_t> codes(static_cast<size_t>(n * g));
  for (int32_t& c : codes) c = static_cast<int32_t>(rng() % k);
  std::vector<T> out(static_cast<size_t>(n * g * dg), T{});
  const astra::core::VqShape shape{g, k, dg};
  for (int64_t r0 = 0; r0 < n; r0 += 5) {
    astra::core::vq_decode_rows(table.data(), shape, sizeof(T), codes.data(), r0,
                                r0 + 5 < n ? r0 + 5 : n, out.data());
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < g; ++j) {
      const T* want = table.data() + (j * k + codes[static_cast<size_t>(r * g + j)]) * dg;
      const T* got = out.data() + (r * g + j) * dg;
      ASTRA_CHECK(std::memcmp(want, got, static_cast<size_t>(dg) * sizeof(T)) == 0);
    }
  }
}

ASTRA_TEST(gather_copies_the_coded_rows) {
  uint32_t seed = 0;
  for (int64_t dg : {1, 2, 3, 4, 8, 12, 16, 24, 32, 48, 64, 100, 4096}) {
    for (int64_t g : {1, 3, 32}) {
      check_gather<float>(17, g, 9, dg, ++seed);
      check_gather<uint16_t>(17, g, 9, dg, ++seed);  // fp16 / bf16 storage
    }
  }
}

ASTRA_TEST(single_row_and_large_codebook) {
  check_gather<float>(1, 1, 65536, 2, 7);
  check_gather<uint16_t>(3, 64, 2, 1, 8);
}

}  // namespace

int main() { return astra::test::run_all(); }
