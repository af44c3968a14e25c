#include "core/vq_decode.h"

#include <cstring>

namespace astra::core {

namespace {

// BYTES > 0: compile-time row size, so each copy is a few inlined moves
// instead of a memcpy call (rows are often 8-128 bytes).
template <size_t BYTES>
void gather_rows(const char* table, size_t row_bytes, int64_t groups, int64_t codes_per_group,
                 const int32_t* codes, int64_t row_begin, int64_t row_end, char* out) {
  const size_t bytes = BYTES > 0 ? BYTES : row_bytes;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int32_t* code = codes + r * groups;
    char* dst = out + static_cast<size_t>(r * groups) * bytes;
    for (int64_t g = 0; g < groups; ++g) {
      const char* src = table + static_cast<size_t>(g * codes_per_group + code[g]) * bytes;
      std::memcpy(dst + static_cast<size_t>(g) * bytes, src, bytes);
    }
  }
}

}  // namespace

void vq_decode_rows(const void* codebooks, VqShape shape, size_t elem_size, const int32_t* codes,
                    int64_t row_begin, int64_t row_end, void* out) {
  const char* table = static_cast<const char*>(codebooks);
  char* dst = static_cast<char*>(out);
  const size_t row_bytes = static_cast<size_t>(shape.width) * elem_size;
  const int64_t g = shape.groups;
  const int64_t k = shape.codes;
  switch (row_bytes) {
    case 8: return gather_rows<8>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    case 16: return gather_rows<16>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    case 32: return gather_rows<32>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    case 48: return gather_rows<48>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    case 64: return gather_rows<64>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    case 96: return gather_rows<96>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    case 128: return gather_rows<128>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
    default: return gather_rows<0>(table, row_bytes, g, k, codes, row_begin, row_end, dst);
  }
}

}  // namespace astra::core
