"""torch.library registration of the ASTRA ops (namespace ``astra``).

Each op takes the backend name as a trailing string argument and forwards to
that backend's implementation, so one registered op serves every backend and
``torch.compile`` / ``torch.export`` see a single opaque node with a fake
(meta) kernel for shape inference. Inputs arrive validated and flattened by
:mod:`astra_kernels.ops`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import backends


def _decoded_rows(codes: Tensor, num_codes: int) -> Tensor:
    """Row of each (token, group) code in the flattened (G*K, Dg) codebook table."""
    g = codes.shape[1]
    return (codes.long() + torch.arange(g, device=codes.device) * num_codes).reshape(-1)


# --- vq_encode -------------------------------------------------------------

@torch.library.custom_op("astra::vq_encode", mutates_args=())
def vq_encode(x: Tensor, codebooks: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """x (N, D), codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) float32."""
    return backends.get(backend).vq_encode(x, codebooks)


@vq_encode.register_fake
def _vq_encode_fake(x, codebooks, backend):
    shape = (x.shape[0], codebooks.shape[0])
    return x.new_empty(shape, dtype=torch.int32), x.new_empty(shape, dtype=torch.float32)


def _vq_encode_setup(ctx, inputs, output):
    x, codebooks, _ = inputs
    ctx.save_for_backward(x, codebooks, output[0])


def _vq_encode_backward(ctx, grad_codes, grad_sqdist):
    # sqdist = ||x_g - e_c||^2 with the code c fixed: d/dx_g = 2 r, d/de_c = -2 r.
    x, codebooks, codes = ctx.saved_tensors
    g, k, dg = codebooks.shape
    n = x.shape[0]
    chosen = codebooks.float().reshape(g * k, dg)[_decoded_rows(codes, k)].reshape(n, g, dg)
    weighted = 2.0 * grad_sqdist.unsqueeze(-1) * (x.float().reshape(n, g, dg) - chosen)
    grad_x = grad_cb = None
    if ctx.needs_input_grad[0]:
        grad_x = weighted.reshape(n, g * dg).to(x.dtype)
    if ctx.needs_input_grad[1]:
        grad_cb = torch.zeros(g * k, dg, dtype=torch.float32, device=x.device)
        grad_cb.index_add_(0, _decoded_rows(codes, k), -weighted.reshape(n * g, dg))
        grad_cb = grad_cb.reshape(g, k, dg).to(codebooks.dtype)
    return grad_x, grad_cb, None


vq_encode.register_autograd(_vq_encode_backward, setup_context=_vq_encode_setup)


@torch.library.custom_op("astra::vq_encode_int8", mutates_args=())
def vq_encode_int8(x: Tensor, codebooks: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """As vq_encode, codes chosen by int8-estimated scores (reference.vq_encode_int8)."""
    return backends.get(backend).vq_encode_int8(x, codebooks)


vq_encode_int8.register_fake(_vq_encode_fake)
# sqdist is the exact distance to the chosen codeword, whichever rule chose it
vq_encode_int8.register_autograd(_vq_encode_backward, setup_context=_vq_encode_setup)


# --- vq_decode -------------------------------------------------------------

@torch.library.custom_op("astra::vq_decode", mutates_args=())
def vq_decode(codes: Tensor, codebooks: Tensor, backend: str) -> Tensor:
    """codes (N, G) int32 in [0, K), codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype."""
    return backends.get(backend).vq_decode(codes, codebooks)


@vq_decode.register_fake
def _(codes, codebooks, backend):
    return codebooks.new_empty((codes.shape[0], codebooks.shape[0] * codebooks.shape[2]))


def _vq_decode_setup(ctx, inputs, output):
    codes, codebooks, _ = inputs
    ctx.save_for_backward(codes)
    ctx.codebook_shape = codebooks.shape


def _vq_decode_backward(ctx, grad):
    (codes,) = ctx.saved_tensors
    g, k, dg = ctx.codebook_shape
    grad_cb = grad.new_zeros((g * k, dg))
    grad_cb.index_add_(0, _decoded_rows(codes, k), grad.reshape(-1, dg))
    return None, grad_cb.reshape(g, k, dg), None


vq_decode.register_autograd(_vq_decode_backward, setup_context=_vq_decode_setup)


# --- wire format -----------------------------------------------------------

@torch.library.custom_op("astra::pack_codes", mutates_args=())
def pack_codes(codes: Tensor, bits: int, backend: str) -> Tensor:
    """codes (M,) int32 in [0, 2**bits) -> (ceil(M*bits/8),) uint8."""
    return backends.get(backend).pack_codes(codes, bits)


@pack_codes.register_fake
def _(codes, bits, backend):
    return codes.new_empty(((codes.shape[0] * bits + 7) // 8,), dtype=torch.uint8)


@torch.library.custom_op("astra::unpack_codes", mutates_args=())
def unpack_codes(packed: Tensor, bits: int, count: int, backend: str) -> Tensor:
    """(ceil(count*bits/8),) uint8 -> (count,) int32."""
    return backends.get(backend).unpack_codes(packed, bits, count)


@unpack_codes.register_fake
def _(packed, bits, count, backend):
    return packed.new_empty((count,), dtype=torch.int32)


# --- mixed-precision attention ---------------------------------------------

@torch.library.custom_op("astra::mixed_precision_attention", mutates_args=())
def mixed_precision_attention(
    q: Tensor,
    k_local: Tensor,
    v_local: Tensor,
    remote_codes: Tensor,
    k_table: Tensor,
    v_table: Tensor,
    k_bias: Tensor | None,
    v_bias: Tensor | None,
    causal: bool,
    scale: float,
    formulation: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """See astra_kernels.reference.mixed_precision_attention; returns (out, lse)."""
    return backends.get(backend).mixed_precision_attention(
        q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, causal, scale, formulation
    )


@mixed_precision_attention.register_fake
def _(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, causal, scale, formulation, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


_ATTN_TENSORS = 8  # q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias


def _mpa_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_ATTN_TENSORS])
    ctx.options = inputs[_ATTN_TENSORS : _ATTN_TENSORS + 3]  # causal, scale, formulation


def _mpa_backward(ctx, grad_out, grad_lse):
    # Whatever backend ran forward, backward recomputes the pure-torch reference
    # under autograd and takes its vector-Jacobian product (memory O(Tq * (Tr + Tl))).
    from . import reference

    tensors = list(ctx.saved_tensors)
    wanted = [i for i, t in enumerate(tensors) if t is not None and t.is_floating_point() and ctx.needs_input_grad[i]]
    for i in wanted:
        tensors[i] = tensors[i].detach().requires_grad_()
    grads = [None] * (_ATTN_TENSORS + 4)
    if wanted:
        with torch.enable_grad():
            out, lse = reference.mixed_precision_attention(*tensors, *ctx.options)
            found = torch.autograd.grad((out, lse), [tensors[i] for i in wanted], (grad_out, grad_lse), allow_unused=True)
        for i, grad in zip(wanted, found):
            grads[i] = grad
    return tuple(grads)


mixed_precision_attention.register_autograd(_mpa_backward, setup_context=_mpa_setup)


# --- merge of attention partials -------------------------------------------

def _token_major(out: Tensor) -> Tensor:
    """(B, H, T, d) stored as (B, T, H, d): one layout for every backend (the fakes'). The C++ kernels
    write it; other backends' outputs are copied there."""
    return out.transpose(1, 2).contiguous().transpose(1, 2)


@torch.library.custom_op("astra::merge_attention", mutates_args=())
def merge_attention(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """See astra_kernels.reference.merge_attention; returns (out, lse), out stored token-major."""
    out, lse = backends.get(backend).merge_attention(out_a, lse_a, out_b, lse_b)
    return _token_major(out), lse


@merge_attention.register_fake
def _(out_a, lse_a, out_b, lse_b, backend):
    b, h, t, d = out_a.shape
    return out_a.new_empty((b, t, h, d)).transpose(1, 2), lse_a.new_empty(lse_a.shape)


def _merge_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])


def _reference_vjp(fn, ctx, grad_out, grad_lse, options=()) -> list:
    """Gradients of the saved tensors through the pure-torch ``fn`` (out, lse), whatever backend ran forward."""
    tensors = [t.detach().requires_grad_(ctx.needs_input_grad[i]) for i, t in enumerate(ctx.saved_tensors)]
    wanted = [t for t in tensors if t.requires_grad]
    grads = iter(())
    if wanted:
        with torch.enable_grad():
            pairs = [(o, g) for o, g in zip(fn(*tensors, *options), (grad_out, grad_lse)) if o.requires_grad]
            outs, grad_outs = zip(*pairs)  # lse needs no gradient when only the outputs' inputs require one
            grads = iter(torch.autograd.grad(outs, wanted, grad_outs, allow_unused=True))
    return [next(grads) if t.requires_grad else None for t in tensors]


def _merge_backward(ctx, grad_out, grad_lse):
    from . import reference

    return (*_reference_vjp(reference.merge_attention, ctx, grad_out, grad_lse), None)


merge_attention.register_autograd(_merge_backward, setup_context=_merge_setup)


# --- attention continuing from a partial -----------------------------------

@torch.library.custom_op("astra::attention_after", mutates_args=())
def attention_after(q: Tensor, k: Tensor, v: Tensor, prior_out: Tensor, prior_lse: Tensor, causal: bool, scale: float,
                    backend: str) -> tuple[Tensor, Tensor]:
    """See astra_kernels.reference.attention_after; returns (out, lse), out stored token-major."""
    out, lse = backends.get(backend).attention_after(q, k, v, prior_out, prior_lse, causal, scale)
    return _token_major(out), lse


@attention_after.register_fake
def _(q, k, v, prior_out, prior_lse, causal, scale, backend):
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d)).transpose(1, 2), q.new_empty((b, h, t), dtype=torch.float32)


def _after_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.options = inputs[5:7]  # causal, scale


def _after_backward(ctx, grad_out, grad_lse):
    from . import reference

    return (*_reference_vjp(reference.attention_after, ctx, grad_out, grad_lse, ctx.options), None, None, None)


attention_after.register_autograd(_after_backward, setup_context=_after_setup)
