// pack_codes / unpack_codes on CPU tensors, parallel over chunks of whole
// 8-code groups (each starts on a byte boundary of the stream).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/pack_codes.h"
#include "cpu/vq_ops.h"
#include "ops_common/input_checks.h"

namespace astra::cpu {

namespace {

// 8-code groups per parallel chunk (64Ki codes): below that threads cost more than they save.
constexpr int64_t kGroupsPerChunk = 8192;

}  // namespace

at::Tensor pack_codes(const at::Tensor& codes, int64_t bits) {
  TORCH_CHECK(codes.device().is_cpu(), "astra CPU pack_codes: expected a CPU tensor of codes");
  checks::pack_op(codes, bits);
  const at::Tensor c = codes.to(at::kInt).contiguous();
  const int64_t count = c.numel();
  at::Tensor out = at::empty({core::packed_bytes(count, static_cast<int>(bits))},
                             c.options().dtype(at::kByte));
  const int32_t* src = c.data_ptr<int32_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, (count + 7) / 8, kGroupsPerChunk, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * 8;
    core::pack_codes(src + first, std::min(count, end * 8) - first, static_cast<int>(bits),
                     dst + begin * bits);
  });
  return out;
}

at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t count) {
  TORCH_CHECK(packed.device().is_cpu(), "astra CPU unpack_codes: expected a CPU tensor");
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed must be a uint8 tensor, got ", packed.scalar_type());
  checks::unpack_op(packed, bits, count);
  const at::Tensor p = packed.contiguous();
  at::Tensor out = at::empty({count}, p.options().dtype(at::kInt));
  const uint8_t* src = p.data_ptr<uint8_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  at::parallel_for(0, (count + 7) / 8, kGroupsPerChunk, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * 8;
    core::unpack_codes(src + begin * bits, std::min(count, end * 8) - first, static_cast<int>(bits),
                       dst + first);
  });
  return out;
}

}  // namespace astra::cpu
