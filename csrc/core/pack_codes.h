// Wire format of VQ codes: bit-packing, torch-free.
//
// Code i occupies stream bits [i*bits, (i+1)*bits), least significant bit
// first; stream bit j is bit j % 8 of byte j / 8; the last byte is zero-padded
// (astra_kernels/reference.py pack_codes). A range starting at a multiple of
// 8 codes starts on a byte boundary, so chunks of whole 8-code groups can be
// packed or unpacked independently (and in parallel).
#pragma once

#include <cstdint>

namespace astra::core {

constexpr int kMinCodeBits = 1;
constexpr int kMaxCodeBits = 16;

// Bytes of a stream of `count` codes.
inline int64_t packed_bytes(int64_t count, int bits) { return (count * bits + 7) / 8; }

// codes (count,) in [0, 2**bits) (not checked) -> out (packed_bytes(count, bits),).
// Throws std::invalid_argument for bits outside [1, 16].
void pack_codes(const int32_t* codes, int64_t count, int bits, uint8_t* out);

// packed (packed_bytes(count, bits),) -> out (count,).
void unpack_codes(const uint8_t* packed, int64_t count, int bits, int32_t* out);

}  // namespace astra::core
