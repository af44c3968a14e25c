// Unit tests of the code bit-packing wire format against a bit-by-bit model
// of astra_kernels/reference.py.
#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/pack_codes.h"
#include "tests/test_harness.h"

namespace {

using astra::core::packed_bytes;

std::vector<uint8_t> pack_bitwise(const std::vector<int32_t>& codes, int bits) {
  std::vector<uint8_t> out(static_cast<size_t>(packed_bytes(static_cast<int64_t>(codes.size()), bits)), 0);
  for (size_t i = 0; i < codes.size(); ++i) {
    for (int b = 0; b < bits; ++b) {
      const size_t j = i * bits + b;  // stream bit
      if ((codes[i] >> b) & 1) out[j / 8] = static_cast<uint8_t>(out[j / 8] | (1u << (j % 8)));
    }
  }
  return out;
}

std::vector<int32_t> random_codes(size_t count, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> codes(count);
  for (int32_t& c : codes) c = static_cast<int32_t>(rng() & ((1u << bits) - 1));
  return codes;
}

ASTRA_TEST(pack_matches_the_bitwise_wire_format) {
  for (int bits = 1; bits <= 16; ++bits) {
    for (size_t count : {1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 1001}) {
      const std::vector<int32_t> codes = random_codes(count, bits, static_cast<uint32_t>(bits * 7919 + count));
      std::vector<uint8_t> packed(static_cast<size_t>(packed_bytes(static_cast<int64_t>(count), bits)), 0xAB);
      astra::core::pack_codes(codes.data(), static_cast<int64_t>(count), bits, packed.data());
      ASTRA_CHECK(packed == pack_bitwise(codes, bits));
      std::vector<int32_t> back(count, -1);
      astra::core::unpack_codes(packed.data(), static_cast<int64_t>(count), bits, back.data());
      ASTRA_CHECK(back == codes);
    }
  }
}

ASTRA_TEST(extreme_values_and_padding) {
  for (int bits = 1; bits <= 16; ++bits) {
    const std::vector<int32_t> ones(13, (1 << bits) - 1);
    std::vector<uint8_t> packed(static_cast<size_t>(packed_bytes(13, bits)), 0xFF);
    astra::core::pack_codes(ones.data(), 13, bits, packed.data());
    ASTRA_CHECK(packed == pack_bitwise(ones, bits));  // includes zeroed padding bits
  }
}

ASTRA_TEST(chunks_of_eight_codes_are_independent_streams) {
  const int64_t count = 1003;
  for (int bits : {1, 3, 10, 16}) {
    const std::vector<int32_t> codes = random_codes(count, bits, static_cast<uint32_t>(bits));
    std::vector<uint8_t> whole(static_cast<size_t>(packed_bytes(count, bits)));
    astra::core::pack_codes(codes.data(), count, bits, whole.data());
    std::vector<uint8_t> chunked(whole.size(), 0);
    std::vector<int32_t> back(codes.size(), -1);
    for (int64_t c0 = 0; c0 < count; c0 += 96) {
      const int64_t n = c0 + 96 < count ? 96 : count - c0;
      astra::core::pack_codes(codes.data() + c0, n, bits, chunked.data() + c0 * bits / 8);
      astra::core::unpack_codes(whole.data() + c0 * bits / 8, n, bits, back.data() + c0);
    }
    ASTRA_CHECK(chunked == whole);
    ASTRA_CHECK(back == codes);
  }
}

ASTRA_TEST(bits_out_of_range_throw) {
  int32_t code = 0;
  uint8_t byte = 0;
  for (int bits : {0, 17}) {
    bool threw = false;
    try {
      astra::core::pack_codes(&code, 1, bits, &byte);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    ASTRA_CHECK(threw);
  }
}

}  // namespace

int main() { return astra::test::run_all(); }
