// Python module astra_kernels._C_cuda: torch-facing wrappers over the torch-free
// CUDA launchers of csrc/cuda/astra_cuda.h.
//
// Each wrapper checks devices, dtypes, ranks and sizes (inputs normally arrive
// validated by astra_kernels.ops, but this module can be called directly),
// allocates fresh outputs, launches on the current stream of the inputs' device
// and turns a launch error into a RuntimeError. Nothing synchronizes.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "cuda/astra_cuda.h"

namespace {

constexpr int64_t kMaxGroups = 64;
constexpr int64_t kMaxCodebookSize = 65536;
constexpr int64_t kMaxGroupWidth = 4096;
constexpr int64_t kMaxBits = 16;
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxAttentionLength = int64_t{1} << 30;  // Tq*H/Hkv, Tl, Tr, K

astra_dtype to_astra_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ASTRA_DTYPE_FLOAT32;
    case at::kHalf:
      return ASTRA_DTYPE_FLOAT16;
    case at::kBFloat16:
      return ASTRA_DTYPE_BFLOAT16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
}

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), b_name, " is on ", b.device(), " but ", a_name, " is on ", a.device());
}

// (G, K, Dg) codebooks within the supported ranges.
void check_codebooks(const at::Tensor& codebooks) {
  TORCH_CHECK(codebooks.dim() == 3, "codebooks must have shape (G, K, Dg), got ", codebooks.sizes());
  const int64_t g = codebooks.size(0);
  const int64_t k = codebooks.size(1);
  const int64_t dg = codebooks.size(2);
  TORCH_CHECK(g >= 1 && g <= kMaxGroups, "number of groups G=", g, " is outside 1..", kMaxGroups);
  TORCH_CHECK(k >= 2 && k <= kMaxCodebookSize, "codebook size K=", k, " is outside 2..", kMaxCodebookSize);
  TORCH_CHECK(dg >= 1 && dg <= kMaxGroupWidth, "group width Dg=", dg, " is outside 1..", kMaxGroupWidth);
}

void check_int32_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_bits(int64_t bits) {
  TORCH_CHECK(bits >= 1 && bits <= kMaxBits, "bits must be in 1..", kMaxBits, ", got ", bits);
}

int64_t packed_bytes(int64_t count, int64_t bits) { return (count * bits + 7) / 8; }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "astra_kernels._C_cuda.", op, " failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

cudaStream_t current_stream(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// x (N, G*Dg), any strides; codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) float32.
std::tuple<at::Tensor, at::Tensor> vq_encode(const at::Tensor& x, const at::Tensor& codebooks) {
  check_cuda_tensor(x, "x");
  check_cuda_tensor(codebooks, "codebooks");
  check_same_device(x, "x", codebooks, "codebooks");
  check_codebooks(codebooks);
  const astra_dtype dtype = to_astra_dtype(x, "x");
  TORCH_CHECK(codebooks.scalar_type() == x.scalar_type(), "x is ", x.scalar_type(), " but codebooks are ",
              codebooks.scalar_type());
  TORCH_CHECK(x.dim() == 2, "x must have shape (N, D), got ", x.sizes());
  const int64_t n = x.size(0);
  const int64_t g = codebooks.size(0);
  const int64_t k = codebooks.size(1);
  const int64_t dg = codebooks.size(2);
  TORCH_CHECK(x.size(1) == g * dg, "x has D=", x.size(1), " features but codebooks cover G*Dg=", g * dg);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor codes = at::empty({n, g}, x.options().dtype(at::kInt));
  at::Tensor sqdist = at::empty({n, g}, x.options().dtype(at::kFloat));
  if (n == 0) return {codes, sqdist};
  const at::Tensor cb = codebooks.contiguous();
  const auto workspace_bytes = static_cast<int64_t>(astra_vq_encode_workspace_bytes(n, g, k));
  at::Tensor workspace = at::empty({workspace_bytes}, x.options().dtype(at::kByte));
  check_launch(astra_vq_encode(dtype, x.data_ptr(), n, x.stride(0), x.stride(1), cb.data_ptr(), g, k, dg,
                               workspace.data_ptr(), codes.data_ptr<int32_t>(), sqdist.data_ptr<float>(),
                               current_stream(x)),
               "vq_encode");
  return {codes, sqdist};
}

// codes (N, G) int32 in [0, K), contiguous; codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype.
at::Tensor vq_decode(const at::Tensor& codes, const at::Tensor& codebooks) {
  check_cuda_tensor(codes, "codes");
  check_cuda_tensor(codebooks, "codebooks");
  check_same_device(codebooks, "codebooks", codes, "codes");
  check_codebooks(codebooks);
  const astra_dtype dtype = to_astra_dtype(codebooks, "codebooks");
  check_int32_contiguous(codes, "codes");
  TORCH_CHECK(codes.dim() == 2 && codes.size(1) == codebooks.size(0), "codes must have shape (N, G=",
              codebooks.size(0), "), got ", codes.sizes());
  const int64_t n = codes.size(0);
  const int64_t g = codebooks.size(0);
  const int64_t k = codebooks.size(1);
  const int64_t dg = codebooks.size(2);

  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty({n, g * dg}, codebooks.options());
  if (n == 0) return out;
  const at::Tensor cb = codebooks.contiguous();
  check_launch(astra_vq_decode(dtype, codes.data_ptr<int32_t>(), n, cb.data_ptr(), g, k, dg, out.data_ptr(),
                               current_stream(codes)),
               "vq_decode");
  return out;
}

// codes (M,) int32 in [0, 2**bits), contiguous -> (ceil(M*bits/8),) uint8.
at::Tensor pack_codes(const at::Tensor& codes, int64_t bits) {
  check_cuda_tensor(codes, "codes");
  check_int32_contiguous(codes, "codes");
  TORCH_CHECK(codes.dim() == 1, "codes must be 1-D, got ", codes.sizes());
  check_bits(bits);
  const int64_t count = codes.numel();

  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor packed = at::empty({packed_bytes(count, bits)}, codes.options().dtype(at::kByte));
  if (count == 0) return packed;
  check_launch(astra_pack_codes(codes.data_ptr<int32_t>(), count, static_cast<int>(bits), packed.data_ptr<uint8_t>(),
                                current_stream(codes)),
               "pack_codes");
  return packed;
}

// packed (ceil(count*bits/8),) uint8, contiguous -> (count,) int32.
at::Tensor unpack_codes(const at::Tensor& packed, int64_t bits, int64_t count) {
  check_cuda_tensor(packed, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "packed must be uint8, got ", packed.scalar_type());
  TORCH_CHECK(packed.dim() == 1 && packed.is_contiguous(), "packed must be a contiguous 1-D tensor");
  check_bits(bits);
  TORCH_CHECK(count >= 0, "count must be >= 0, got ", count);
  TORCH_CHECK(packed.numel() == packed_bytes(count, bits), "packed has ", packed.numel(), " bytes but ", count,
              " codes of ", bits, " bits need exactly ", packed_bytes(count, bits));

  const c10::cuda::CUDAGuard guard(packed.device());
  at::Tensor codes = at::empty({count}, packed.options().dtype(at::kInt));
  if (count == 0) return codes;
  check_launch(astra_unpack_codes(packed.data_ptr<uint8_t>(), count, static_cast<int>(bits),
                                  codes.data_ptr<int32_t>(), current_stream(packed)),
               "unpack_codes");
  return codes;
}

void check_same_float_input(const at::Tensor& q, const at::Tensor& t, const char* name) {
  check_cuda_tensor(t, name);
  check_same_device(q, "q", t, name);
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " is ", t.scalar_type(), " but q is ", q.scalar_type());
}

// q (B, H, Tq, d) and k_local, v_local (B, Hkv, Tl, d), any strides; remote_codes (B, Tr, G)
// int32 contiguous, values in [0, K) (not checked here: ops.py validates them); k_table,
// v_table (G, K, Hkv*d); k_bias, v_bias (Hkv*d,) or None; formulation "tokens" or "codewords"
// (G = 1) -> out (B, H, Tq, d) in q's dtype, lse (B, H, Tq) float32.
std::tuple<at::Tensor, at::Tensor> mixed_precision_attention(
    const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local, const at::Tensor& remote_codes,
    const at::Tensor& k_table, const at::Tensor& v_table, const std::optional<at::Tensor>& k_bias,
    const std::optional<at::Tensor>& v_bias, bool causal, double scale, const std::string& formulation) {
  check_cuda_tensor(q, "q");
  TORCH_CHECK(q.scalar_type() != at::kDouble,
              "the CUDA mixed_precision_attention runs float32, float16 or bfloat16 inputs, got float64; "
              "use the 'reference' or 'cpu' backend for float64");
  const astra_dtype dtype = to_astra_dtype(q, "q");
  check_same_float_input(q, k_local, "k_local");
  check_same_float_input(q, v_local, "v_local");
  check_same_float_input(q, k_table, "k_table");
  check_same_float_input(q, v_table, "v_table");
  check_cuda_tensor(remote_codes, "remote_codes");
  check_same_device(q, "q", remote_codes, "remote_codes");
  check_int32_contiguous(remote_codes, "remote_codes");

  TORCH_CHECK(q.dim() == 4, "q must have shape (B, H, Tq, d), got ", q.sizes());
  TORCH_CHECK(k_local.dim() == 4 && v_local.sizes() == k_local.sizes(),
              "k_local and v_local must both have shape (B, Hkv, Tl, d), got ", k_local.sizes(), " and ",
              v_local.sizes());
  const int64_t b = q.size(0);
  const int64_t h = q.size(1);
  const int64_t tq = q.size(2);
  const int64_t d = q.size(3);
  const int64_t hkv = k_local.size(1);
  const int64_t tl = k_local.size(2);
  TORCH_CHECK(k_local.size(0) == b && k_local.size(3) == d, "k_local ", k_local.sizes(), " does not match q ",
              q.sizes(), " in batch or head dim");
  TORCH_CHECK(hkv >= 1 && h % hkv == 0, "query heads H=", h, " must be a multiple of key/value heads Hkv=", hkv);
  TORCH_CHECK(d >= 1 && d <= kMaxHeadDim, "head dim d=", d, " is outside 1..", kMaxHeadDim);
  TORCH_CHECK(remote_codes.dim() == 3 && remote_codes.size(0) == b, "remote_codes must have shape (B=", b,
              ", Tr, G), got ", remote_codes.sizes());
  const int64_t tr = remote_codes.size(1);
  const int64_t g = remote_codes.size(2);
  TORCH_CHECK(k_table.dim() == 3 && v_table.sizes() == k_table.sizes(),
              "k_table and v_table must both have shape (G, K, Hkv*d), got ", k_table.sizes(), " and ",
              v_table.sizes());
  const int64_t k = k_table.size(1);
  TORCH_CHECK(k_table.size(0) == g, "remote_codes have G=", g, " groups but the tables have ", k_table.size(0));
  TORCH_CHECK(k_table.size(2) == hkv * d, "tables have width ", k_table.size(2), " but Hkv*d = ", hkv * d);
  TORCH_CHECK(g >= 1 && k >= 1, "the tables are empty: G=", g, ", K=", k);
  for (const auto& [bias, name] : {std::make_pair(&k_bias, "k_bias"), std::make_pair(&v_bias, "v_bias")}) {
    if (!bias->has_value()) continue;
    check_same_float_input(q, bias->value(), name);
    TORCH_CHECK(bias->value().dim() == 1 && bias->value().size(0) == hkv * d, name, " must have shape (", hkv * d,
                ",), got ", bias->value().sizes());
  }
  TORCH_CHECK(formulation == "tokens" || formulation == "codewords", "formulation must be 'tokens' or 'codewords', got '",
              formulation, "'");
  TORCH_CHECK(formulation == "tokens" || g == 1, "the codewords formulation needs G = 1 (one codebook), got G=", g);
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  TORCH_CHECK(tq * (h / hkv) <= kMaxAttentionLength && tl <= kMaxAttentionLength && tr <= kMaxAttentionLength &&
                  k <= kMaxAttentionLength,
              "sizes beyond the kernel's limits (Tq*H/Hkv, Tl, Tr, K <= 2^30)");

  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({b, h, tq, d}, q.options());
  at::Tensor lse = at::empty({b, h, tq}, q.options().dtype(at::kFloat));
  if (b == 0 || tq == 0) return {out, lse};
  const at::Tensor kt = k_table.contiguous();
  const at::Tensor vt = v_table.contiguous();
  const at::Tensor kb = k_bias.has_value() ? k_bias->contiguous() : at::Tensor();
  const at::Tensor vb = v_bias.has_value() ? v_bias->contiguous() : at::Tensor();

  astra_mp_attention_problem problem{};
  problem.dtype = dtype;
  problem.batch = b;
  problem.heads = h;
  problem.kv_heads = hkv;
  problem.queries = tq;
  problem.local_keys = tl;
  problem.remote_tokens = tr;
  problem.groups = g;
  problem.codebook_size = k;
  problem.head_dim = d;
  problem.q = q.data_ptr();
  problem.k_local = k_local.data_ptr();
  problem.v_local = v_local.data_ptr();
  for (int i = 0; i < 4; ++i) {
    problem.q_strides[i] = q.stride(i);
    problem.k_strides[i] = k_local.stride(i);
    problem.v_strides[i] = v_local.stride(i);
  }
  problem.remote_codes = remote_codes.data_ptr<int32_t>();
  problem.k_table = kt.data_ptr();
  problem.v_table = vt.data_ptr();
  problem.k_bias = kb.defined() ? kb.data_ptr() : nullptr;
  problem.v_bias = vb.defined() ? vb.data_ptr() : nullptr;
  problem.causal = causal ? 1 : 0;
  problem.scale = static_cast<float>(scale);
  problem.formulation = formulation == "codewords" ? ASTRA_ATTENTION_CODEWORDS : ASTRA_ATTENTION_TOKENS;
  problem.out = out.data_ptr();
  problem.lse = lse.data_ptr<float>();
  const auto workspace_bytes = static_cast<int64_t>(astra_mp_attention_workspace_bytes(&problem));
  at::Tensor workspace = at::empty({workspace_bytes}, q.options().dtype(at::kByte));
  check_launch(astra_mp_attention(&problem, workspace_bytes > 0 ? workspace.data_ptr() : nullptr, current_stream(q)),
               "mixed_precision_attention");
  return {out, lse};
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() =
      "ASTRA CUDA kernels: grouped VQ encode/decode, code bit-packing and mixed-precision attention "
      "(see astra_kernels.cuda)";
  m.def("vq_encode", &vq_encode, "x (N, D), codebooks (G, K, Dg) -> (codes (N, G) int32, sqdist (N, G) float32)",
        py::arg("x"), py::arg("codebooks"));
  m.def("vq_decode", &vq_decode, "codes (N, G) int32, codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype",
        py::arg("codes"), py::arg("codebooks"));
  m.def("pack_codes", &pack_codes, "codes (M,) int32 -> (ceil(M*bits/8),) uint8", py::arg("codes"), py::arg("bits"));
  m.def("unpack_codes", &unpack_codes, "packed (ceil(count*bits/8),) uint8 -> (count,) int32", py::arg("packed"),
        py::arg("bits"), py::arg("count"));
  m.def("mixed_precision_attention", &mixed_precision_attention,
        "q (B, H, Tq, d), k_local/v_local (B, Hkv, Tl, d), remote_codes (B, Tr, G) int32, k_table/v_table "
        "(G, K, Hkv*d), k_bias/v_bias (Hkv*d,) or None -> (out (B, H, Tq, d) in q's dtype, lse (B, H, Tq) float32)",
        py::arg("q"), py::arg("k_local"), py::arg("v_local"), py::arg("remote_codes"), py::arg("k_table"),
        py::arg("v_table"), py::arg("k_bias"), py::arg("v_bias"), py::arg("causal"), py::arg("scale"),
        py::arg("formulation"));
}
