// Codebook gather (vq_decode), torch-free and dtype-agnostic.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/vq_encode.h"

namespace astra::core {

// out[r, g*Dg:(g+1)*Dg] = codebooks[g, codes[r, g]] for rows [row_begin, row_end).
// codebooks: (G, K, Dg) contiguous, elements of elem_size bytes; codes: (N, G)
// contiguous int32 in [0, K) (not checked); out: (N, G*Dg) contiguous.
void vq_decode_rows(const void* codebooks, VqShape shape, size_t elem_size, const int32_t* codes,
                    int64_t row_begin, int64_t row_end, void* out);

}  // namespace astra::core
