// Python module astra_kernels._C: the C++ CPU backend. The only file that
// includes <torch/extension.h> (the expensive header); kernels live in
// csrc/cpu (ATen glue) and csrc/core (torch-free).
#include <torch/extension.h>

#include "core/argmin_int8.h"
#include "core/cpu_features.h"
#include "core/vq_encode.h"
#include "cpu/attention_ops.h"
#include "cpu/vq_ops.h"

namespace {

// What this build runs on this machine, for diagnostics and tests.
pybind11::dict capabilities() {
  pybind11::dict caps;
  caps["simd"] = astra::core::simd_name(astra::core::active_simd());
  caps["simd_detected"] = astra::core::simd_name(astra::core::detect_simd());
  caps["encode_gemm_min_width"] = astra::core::gemm_min_width(astra::core::active_simd());
  caps["int8_estimate"] = astra::core::int8_kernels(astra::core::active_simd()).name;
  caps["int8_estimate_faster"] = astra::core::int8_estimate_beats_exact(astra::core::active_simd());
  return caps;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "ASTRA C++ CPU kernels (vq_encode, vq_encode_int8, vq_decode, pack_codes, unpack_codes, "
      "mixed_precision_attention, attention_after, merge_attention)";
  const auto no_gil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("vq_encode", &astra::cpu::vq_encode, pybind11::arg("x"), pybind11::arg("codebooks"), no_gil,
        "x (N, D), codebooks (G, K, Dg) -> (codes (N, G) int32, sqdist (N, G) float32)");
  m.def("vq_encode_int8", &astra::cpu::vq_encode_int8, pybind11::arg("x"), pybind11::arg("codebooks"), no_gil,
        "x (N, D), codebooks (G, K, Dg) -> (codes (N, G) int32 by int8-estimated scores, sqdist (N, G) float32)");
  pybind11::class_<astra::cpu::VqEncoder>(m, "VqEncoder",
                                         "vq_encode (exact=True) or vq_encode_int8 with prepared codebooks")
      .def(pybind11::init<const at::Tensor&, bool>(), pybind11::arg("codebooks"), pybind11::arg("exact"), no_gil)
      .def("encode", &astra::cpu::VqEncoder::encode, pybind11::arg("x"), no_gil,
           "x (N, D) -> (codes (N, G) int32, sqdist (N, G) float32)");
  m.def("vq_decode", &astra::cpu::vq_decode, pybind11::arg("codes"), pybind11::arg("codebooks"), no_gil,
        "codes (N, G) int32, codebooks (G, K, Dg) -> (N, G*Dg) in codebooks.dtype");
  m.def("pack_codes", &astra::cpu::pack_codes, pybind11::arg("codes"), pybind11::arg("bits"), no_gil,
        "codes (M,) int32 -> (ceil(M*bits/8),) uint8 little-endian bit stream");
  m.def("unpack_codes", &astra::cpu::unpack_codes, pybind11::arg("packed"), pybind11::arg("bits"),
        pybind11::arg("count"), no_gil, "packed uint8 stream -> (count,) int32");
  m.def("mixed_precision_attention", &astra::cpu::mixed_precision_attention, pybind11::arg("q"),
        pybind11::arg("k_local"), pybind11::arg("v_local"), pybind11::arg("remote_codes"),
        pybind11::arg("k_table"), pybind11::arg("v_table"), pybind11::arg("k_bias"),
        pybind11::arg("v_bias"), pybind11::arg("causal"), pybind11::arg("scale"),
        pybind11::arg("formulation"), pybind11::arg("remote_rotation") = pybind11::none(), no_gil,
        "q (B, H, Tq, d), k/v_local (B, Hkv, Tl, d), remote_codes (B, Tr, G) int32, "
        "tables (G, K, Hkv*d), biases (Hkv*d,) or None, remote_rotation (2, Tr, d/2) (cos, sin) or None -> "
        "(out (B, H, Tq, d) in q.dtype, lse (B, H, Tq) float32)");
  m.def("attention_after", &astra::cpu::attention_after, pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"),
        pybind11::arg("prior_out"), pybind11::arg("prior_lse"), pybind11::arg("causal"), pybind11::arg("scale"),
        no_gil,
        "q (B, H, Tq, d), k/v (B, Hkv, Tk, d), prior (out (B, H, Tq, d), lse (B, H, Tq)) -> (out over both key "
        "sets, stored token-major; lse)");
  m.def("merge_attention", &astra::cpu::merge_attention, pybind11::arg("out_a"), pybind11::arg("lse_a"),
        pybind11::arg("out_b"), pybind11::arg("lse_b"), no_gil,
        "out_a, out_b (B, H, T, d), lse_a, lse_b (B, H, T) float32 -> (out (B, H, T, d) stored token-major, "
        "lse (B, H, T) float32)");
  m.def("capabilities", &capabilities,
        "dict: simd (kernels in use: avx512_vnni, avx512, avx2 or generic; capped by ASTRA_CPU_SIMD), "
        "simd_detected (best this CPU supports), encode_gemm_min_width (smallest Dg on the GEMM path), "
        "int8_estimate (vq_encode_int8 kernels: avx512_vnni, avx2 or portable), int8_estimate_faster (whether "
        "vq_encode_int8 is faster than vq_encode)");
}
