// Checks of the registered ops' arguments, with the messages of astra_kernels/_checks.py.
#include "ops_common/input_checks.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <sstream>

namespace astra::checks {

namespace {

constexpr int64_t kMaxGroups = 64;
constexpr int64_t kMaxCodebookSize = 65536;
constexpr int64_t kMaxGroupWidth = 4096;
constexpr int64_t kMaxBits = 16;

// Python's repr of a dtype: torch.float32.
std::string dtype_repr(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

// printf's %g, as the Python checks format a scale.
std::string g_format(double value) {
  if (std::isnan(value)) return "nan";  // Python prints no sign
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

}  // namespace

std::string shape_repr(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

void codebook_shape(const at::Tensor& codebooks) {
  TORCH_CHECK_VALUE(codebooks.dim() == 3, "codebooks must have shape (G, K, D/G), got ", shape_repr(codebooks.sizes()),
                    " (rank ", codebooks.dim(), ")");
  const int64_t g = codebooks.size(0), k = codebooks.size(1), dg = codebooks.size(2);
  TORCH_CHECK_VALUE(g != 0 && k != 0 && dg != 0, "codebooks is empty: shape (G=", g, ", K=", k, ", D/G=", dg, ")");
  TORCH_CHECK_VALUE(g >= 1 && g <= kMaxGroups, "number of groups G=", g, " is outside the supported range 1..",
                    kMaxGroups);
  TORCH_CHECK_VALUE(k >= 2 && k <= kMaxCodebookSize, "codebook size K=", k, " is outside the supported range 2..",
                    kMaxCodebookSize);
  TORCH_CHECK_VALUE(dg >= 1 && dg <= kMaxGroupWidth, "group width D/G=", dg, " is outside the supported range 1..",
                    kMaxGroupWidth);
}

void encode_op(const at::Tensor& x, const at::Tensor& codebooks) {
  codebook_shape(codebooks);
  TORCH_CHECK_VALUE(x.dim() == 2, "x must have shape (N, D), got ", shape_repr(x.sizes()));
  const int64_t g = codebooks.size(0), dg = codebooks.size(2), d = x.size(1);
  if (d != g * dg) {
    std::ostringstream hint;
    if (d % g) {
      hint << "D is not divisible by G";
    } else {
      hint << "D/G=" << d / g << " differs from codebooks.shape[2]=" << dg;
    }
    TORCH_CHECK_VALUE(false, "x has D=", d, " features but codebooks (G=", g, ", K, D/G=", dg, ") cover G*D/G=", g * dg,
                      " (", hint.str(), ")");
  }
}

void codes_in_range(const at::Tensor& codes, int64_t upper, const char* name, const std::string& what) {
  if (codes.numel() == 0) return;
  const auto [lo_t, hi_t] = at::aminmax(codes);
  const int64_t lo = lo_t.item<int64_t>();
  const int64_t hi = hi_t.item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < upper, name, " contains ", lo < 0 ? lo : hi, ", outside [0, ", upper, ") (", what,
                    ")");
}

void decode_op(const at::Tensor& codes, const at::Tensor& codebooks) {
  codebook_shape(codebooks);
  const int64_t g = codebooks.size(0), k = codebooks.size(1);
  TORCH_CHECK_VALUE(codes.dim() == 2 && codes.size(1) == g, "codes must have shape (..., G=", g, "), got ",
                    shape_repr(codes.sizes()));
  codes_in_range(codes, k, "codes", "codebook size K=" + std::to_string(k));
}

void bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits >= 1 && bits <= kMaxBits, "bits=", bits, " is outside the supported range 1..", kMaxBits);
}

void pack_op(const at::Tensor& codes, int64_t nbits) {
  bits(nbits);
  TORCH_CHECK_VALUE(codes.dim() == 1, "codes must be 1-D, got shape ", shape_repr(codes.sizes()));
  codes_in_range(codes, int64_t{1} << nbits, "codes", "not representable in bits=" + std::to_string(nbits));
}

void unpack_op(const at::Tensor& packed, int64_t nbits, int64_t count) {
  bits(nbits);
  TORCH_CHECK_VALUE(packed.dim() == 1, "packed must be 1-D, got shape ", shape_repr(packed.sizes()));
  TORCH_CHECK_VALUE(count >= 0, "count must be >= 0, got ", count);
  const int64_t expected = (count * nbits + 7) / 8;
  TORCH_CHECK_VALUE(packed.numel() == expected, "packed has ", packed.numel(), " bytes but ", count, " codes of ",
                    nbits, " bits need exactly ", expected);
}

void attention_scale(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "scale must be a positive finite number, got ", g_format(scale));
}

AttentionSizes attention_op(const at::Tensor& q, const at::Tensor& k_local, const at::Tensor& v_local,
                            const at::Tensor& remote_codes, const at::Tensor& k_table, const at::Tensor& v_table,
                            const std::optional<at::Tensor>& k_bias, const std::optional<at::Tensor>& v_bias,
                            double scale, const std::string& formulation,
                            const std::optional<at::Tensor>& remote_rotation) {
  TORCH_CHECK_VALUE(q.dim() == 4, "q must have shape (B, H, Tq, d), got ", shape_repr(q.sizes()));
  TORCH_CHECK_VALUE(k_local.dim() == 4 && v_local.sizes() == k_local.sizes(),
                    "k_local and v_local must both have shape (B, Hkv, Tl, d), got ", shape_repr(k_local.sizes()),
                    " and ", shape_repr(v_local.sizes()));
  AttentionSizes s{};
  s.batch = q.size(0);
  s.heads = q.size(1);
  s.queries = q.size(2);
  s.head_dim = q.size(3);
  s.kv_heads = k_local.size(1);
  s.local = k_local.size(2);
  TORCH_CHECK_VALUE(k_local.size(0) == s.batch && k_local.size(3) == s.head_dim, "k_local ",
                    shape_repr(k_local.sizes()), " does not match q ", shape_repr(q.sizes()), " in batch or head dim");
  TORCH_CHECK_VALUE(s.kv_heads != 0 && s.heads % s.kv_heads == 0, "query heads H=", s.heads,
                    " must be a multiple of key/value heads Hkv=", s.kv_heads);
  TORCH_CHECK_VALUE(s.head_dim != 0, "head dim d=0 must be at least 1");
  TORCH_CHECK_VALUE(remote_codes.dim() == 3 && remote_codes.size(0) == s.batch, "remote_codes must have shape (B=",
                    s.batch, ", Tr, G), got ", shape_repr(remote_codes.sizes()));
  s.remote = remote_codes.size(1);
  s.groups = remote_codes.size(2);
  TORCH_CHECK_VALUE(k_table.dim() == 3 && v_table.sizes() == k_table.sizes(),
                    "k_table and v_table must both have shape (G, K, Hkv*d), got ", shape_repr(k_table.sizes()),
                    " and ", shape_repr(v_table.sizes()));
  s.codebook_size = k_table.size(1);
  const int64_t width = k_table.size(2);
  TORCH_CHECK_VALUE(k_table.size(0) == s.groups, "remote_codes have G=", s.groups, " groups but the tables have ",
                    k_table.size(0));
  TORCH_CHECK_VALUE(width == s.kv_heads * s.head_dim, "tables have width ", width, " but Hkv*d = ", s.kv_heads, "*",
                    s.head_dim, " = ", s.kv_heads * s.head_dim);
  TORCH_CHECK_VALUE(s.codebook_size != 0, "the tables are empty (K=0)");
  for (const auto& [bias, name] : {std::make_pair(&k_bias, "k_bias"), std::make_pair(&v_bias, "v_bias")}) {
    if (!bias->has_value()) continue;
    const at::Tensor& t = bias->value();
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == width, name, " must have shape (", width, ",), got ",
                      shape_repr(t.sizes()));
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), name, " is ", dtype_repr(t.scalar_type()), " but q is ",
                     dtype_repr(q.scalar_type()), "; all float inputs must share q's dtype");
  }
  TORCH_CHECK_VALUE(formulation == "tokens" || formulation == "codewords",
                    "formulation must be 'tokens' or 'codewords', got '", formulation, "'");
  TORCH_CHECK_VALUE(formulation == "tokens" || s.groups == 1,
                    "the codewords formulation needs G = 1 (one codebook), got G=", s.groups);
  attention_scale(scale);
  codes_in_range(remote_codes, s.codebook_size, "remote_codes", "table size K=" + std::to_string(s.codebook_size));
  if (remote_rotation.has_value()) rotation_input(remote_rotation.value(), q, s.remote, s.head_dim, formulation);
  return s;
}

void rotation_input(const at::Tensor& rotation, const at::Tensor& q, int64_t remote, int64_t head_dim,
                    const std::string& formulation) {
  TORCH_CHECK_VALUE(formulation != "codewords",
                    "the codewords formulation attends each codeword once, so it cannot rotate remote keys at their "
                    "tokens' positions; use the tokens formulation with remote_rotation");
  TORCH_CHECK_VALUE(head_dim % 2 == 0, "remote_rotation needs an even head dim (RoPE rotates pairs of features), got d=",
                    head_dim);
  TORCH_CHECK_VALUE(rotation.dim() == 3 && rotation.size(0) == 2 && rotation.size(1) == remote &&
                        rotation.size(2) == head_dim / 2,
                    "remote_rotation must have shape (2, Tr=", remote, ", d/2=", head_dim / 2, ") (cos, sin), got ",
                    shape_repr(rotation.sizes()));
  TORCH_CHECK_TYPE(at::isFloatingType(rotation.scalar_type()), "remote_rotation must be a float tensor, got ",
                   dtype_repr(rotation.scalar_type()));
  TORCH_CHECK_VALUE(rotation.device() == q.device(), "remote_rotation is on ", rotation.device(), " but q is on ",
                    q.device(), "; all inputs must be on the same device");
}

void attention_after_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& prior_out,
                        const at::Tensor& prior_lse, double scale) {
  TORCH_CHECK_VALUE(k.dim() == 4, "k must have shape (B, Hkv, Tk, d), got ", shape_repr(k.sizes()));
  TORCH_CHECK_VALUE(q.dim() == 4 && prior_out.sizes() == q.sizes() && prior_out.scalar_type() == q.scalar_type(),
                    "prior out must match q's shape ", shape_repr(q.sizes()), " and dtype ",
                    dtype_repr(q.scalar_type()), ", got ", shape_repr(prior_out.sizes()), " ",
                    dtype_repr(prior_out.scalar_type()));
  const auto rows = q.sizes().slice(0, 3);
  TORCH_CHECK_VALUE(prior_lse.sizes() == rows && prior_lse.scalar_type() == at::kFloat,
                    "prior lse must be float32 of shape ", shape_repr(rows), ", got ", shape_repr(prior_lse.sizes()),
                    " ", dtype_repr(prior_lse.scalar_type()));
  TORCH_CHECK_VALUE(v.sizes() == k.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(3) && k.size(1) != 0 &&
                        q.size(1) % k.size(1) == 0,
                    "k and v must have shape (B=", q.size(0), ", Hkv, Tk, d=", q.size(3),
                    ") with H % Hkv == 0, got ", shape_repr(k.sizes()), " and ", shape_repr(v.sizes()));
  TORCH_CHECK_VALUE(q.size(3) != 0, "head dim d=0 must be at least 1");
  attention_scale(scale);
}

}  // namespace astra::checks
