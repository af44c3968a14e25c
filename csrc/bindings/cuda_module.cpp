// Python module astra_kernels._C_cuda: the CUDA backend. The only file of it that includes
// <torch/extension.h> (the expensive header); the ATen glue lives in csrc/cuda_ops and the
// torch-free kernels behind their C ABI in csrc/cuda.
#include <torch/extension.h>

#include "cuda_ops/attention_ops.h"
#include "cuda_ops/vq_ops.h"

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() =
      "ASTRA CUDA kernels: grouped VQ encode/decode, code bit-packing and mixed-precision attention "
      "(see astra_kernels.cuda)";
  m.def("vq_encode", &astra::cuda::vq_encode,
        "x (N, D), codebooks (G, K, Dg) -> (codes (N, G) int32, sqdist (N, G) float32)", py::arg("x"),
        py::arg("codebooks"));
  m.def("vq_decode", &astra::cuda::vq_decode,
        "codes (N, G) int32, codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype", py::arg("codes"),
        py::arg("codebooks"));
  m.def("pack_codes", &astra::cuda::pack_codes, "codes (M,) int32 -> (ceil(M*bits/8),) uint8", py::arg("codes"),
        py::arg("bits"));
  m.def("unpack_codes", &astra::cuda::unpack_codes, "packed (ceil(count*bits/8),) uint8 -> (count,) int32",
        py::arg("packed"), py::arg("bits"), py::arg("count"));
  m.def("mixed_precision_attention", &astra::cuda::mixed_precision_attention,
        "q (B, H, Tq, d), k_local/v_local (B, Hkv, Tl, d), remote_codes (B, Tr, G) int32, k_table/v_table "
        "(G, K, Hkv*d), k_bias/v_bias (Hkv*d,) or None, remote_rotation (2, Tr, d/2) (cos, sin) or None -> "
        "(out (B, H, Tq, d) in q's dtype, lse (B, H, Tq) float32)",
        py::arg("q"), py::arg("k_local"), py::arg("v_local"), py::arg("remote_codes"), py::arg("k_table"),
        py::arg("v_table"), py::arg("k_bias"), py::arg("v_bias"), py::arg("causal"), py::arg("scale"),
        py::arg("formulation"), py::arg("remote_rotation") = py::none());
}
