// vq_decode on CPU tensors: row gather of the torch-free core, parallel over rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/vq_decode.h"
#include "cpu/vq_ops.h"
#include "ops_common/input_checks.h"

namespace astra::cpu {

namespace {
// Rows per parallel chunk (G row copies each).
constexpr int64_t kDecodeGrainRows = 256;
}  // namespace

at::Tensor vq_decode(const at::Tensor& codes, const at::Tensor& codebooks) {
  TORCH_CHECK(codes.device().is_cpu() && codebooks.device().is_cpu(),
              "astra CPU vq_decode: tensors must be on the CPU");
  checks::decode_op(codes, codebooks);  // every code indexes the table
  const at::Tensor c = codes.to(at::kInt).contiguous();
  const at::Tensor cb = codebooks.contiguous();
  const int64_t n = c.size(0);
  const core::VqShape shape{cb.size(0), cb.size(1), cb.size(2)};
  at::Tensor out = at::empty({n, shape.groups * shape.width}, cb.options());
  const void* table = cb.data_ptr();
  const int32_t* code_p = c.data_ptr<int32_t>();
  void* out_p = out.data_ptr();
  const size_t elem_size = cb.element_size();
  at::parallel_for(0, n, kDecodeGrainRows, [&](int64_t begin, int64_t end) {
    core::vq_decode_rows(table, shape, elem_size, code_p, begin, end, out_p);
  });
  return out;
}

}  // namespace astra::cpu
