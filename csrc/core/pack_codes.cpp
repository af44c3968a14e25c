#include "core/pack_codes.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace astra::core {

namespace {

// 8 codes of B bits are exactly B bytes; with B a compile-time constant the
// shifts fold into a few register operations per group.
template <int B>
inline void pack_group(const int32_t* codes, uint8_t* out) {
  constexpr uint64_t kMask = (uint64_t{1} << B) - 1;
  uint64_t lo = 0;  // stream bits 0..63
  uint64_t hi = 0;  // stream bits 64..127
  for (int i = 0; i < 8; ++i) {
    const uint64_t v = static_cast<uint32_t>(codes[i]) & kMask;
    const int s = i * B;
    if (s < 64) {
      lo |= v << s;
      if (s + B > 64) hi |= v >> (64 - s);
    } else {
      hi |= v << (s - 64);
    }
  }
  for (int j = 0; j < B; ++j) {
    out[j] = static_cast<uint8_t>(j < 8 ? lo >> (8 * j) : hi >> (8 * (j - 8)));
  }
}

template <int B>
inline void unpack_group(const uint8_t* in, int32_t* codes) {
  constexpr uint64_t kMask = (uint64_t{1} << B) - 1;
  uint64_t lo = 0;
  uint64_t hi = 0;
  for (int j = 0; j < B; ++j) {
    if (j < 8) {
      lo |= uint64_t{in[j]} << (8 * j);
    } else {
      hi |= uint64_t{in[j]} << (8 * (j - 8));
    }
  }
  for (int i = 0; i < 8; ++i) {
    const int s = i * B;
    uint64_t v;
    if (s < 64) {
      v = lo >> s;
      if (s + B > 64) v |= hi << (64 - s);
    } else {
      v = hi >> (s - 64);
    }
    codes[i] = static_cast<int32_t>(v & kMask);
  }
}

template <int B>
void pack_stream(const int32_t* codes, int64_t count, uint8_t* out) {
  const int64_t groups = count / 8;
  for (int64_t i = 0; i < groups; ++i) pack_group<B>(codes + 8 * i, out + B * i);
  const int64_t tail = count - 8 * groups;
  if (tail > 0) {
    int32_t padded[8] = {};  // zero codes give the zero padding bits
    uint8_t bytes[B];
    std::memcpy(padded, codes + 8 * groups, static_cast<size_t>(tail) * sizeof(int32_t));
    pack_group<B>(padded, bytes);
    std::memcpy(out + B * groups, bytes, static_cast<size_t>(packed_bytes(tail, B)));
  }
}

template <int B>
void unpack_stream(const uint8_t* packed, int64_t count, int32_t* out) {
  const int64_t groups = count / 8;
  for (int64_t i = 0; i < groups; ++i) unpack_group<B>(packed + B * i, out + 8 * i);
  const int64_t tail = count - 8 * groups;
  if (tail > 0) {
    uint8_t bytes[B] = {};
    int32_t codes[8];
    std::memcpy(bytes, packed + B * groups, static_cast<size_t>(packed_bytes(tail, B)));
    unpack_group<B>(bytes, codes);
    std::memcpy(out + 8 * groups, codes, static_cast<size_t>(tail) * sizeof(int32_t));
  }
}

void check_bits(int bits) {
  if (bits < kMinCodeBits || bits > kMaxCodeBits) {
    throw std::invalid_argument("code bits must be in [1, 16], got " + std::to_string(bits));
  }
}

// Calls F<B>::run(args...) for the runtime bit width.
template <template <int> class F, int B = kMinCodeBits, class... Args>
void dispatch_bits(int bits, Args... args) {
  if constexpr (B <= kMaxCodeBits) {
    if (bits == B) return F<B>::run(args...);
    return dispatch_bits<F, B + 1>(bits, args...);
  }
}

template <int B>
struct Pack {
  static void run(const int32_t* codes, int64_t count, uint8_t* out) { pack_stream<B>(codes, count, out); }
};

template <int B>
struct Unpack {
  static void run(const uint8_t* packed, int64_t count, int32_t* out) {
    unpack_stream<B>(packed, count, out);
  }
};

}  // namespace

void pack_codes(const int32_t* codes, int64_t count, int bits, uint8_t* out) {
  check_bits(bits);
  dispatch_bits<Pack>(bits, codes, count, out);
}

void unpack_codes(const uint8_t* packed, int64_t count, int bits, int32_t* out) {
  check_bits(bits);
  dispatch_bits<Unpack>(bits, packed, count, out);
}

}  // namespace astra::core
