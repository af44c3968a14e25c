"""torch.library registration of the ASTRA ops (namespace ``astra``).

Each op's schema is defined once and ends in an optional ``backend`` string
(``str? backend=None``). Without it, an op runs on its inputs' device the way
torch's own ops do: the kernels registered for the ``cpu`` and ``cuda``
dispatch keys run the fastest backend available for that device (the order of
:data:`astra_kernels.backends.PREFERENCE`: the C++ extension, else the
reference, on CPU; Triton, the CUDA extension, else the reference, on CUDA),
and the op's default kernel, for any other device, is the pure-torch reference.
A named backend overrides the choice; one that cannot run on the inputs'
device raises :class:`~astra_kernels.BackendUnavailable` with the reason. The
string is a graph constant, so ``torch.compile`` / ``torch.export`` see one
opaque node, shaped by its fake kernel. Gradients are vector-Jacobian
products of the pure-torch reference, whichever backend ran forward.

Inputs arrive validated and flattened by :mod:`astra_kernels.ops`. A direct
``torch.ops.astra.*`` call skips its dtype and device checks, not the ones
each backend runs itself (shapes, codes in range where they index memory, a
positive finite scale: :mod:`astra_kernels._checks`), which also run inside a
compiled graph.

    torch.ops.astra.vq_encode(x, codebooks)                    # fastest backend for x.device
    torch.ops.astra.vq_encode(x, codebooks, backend="triton")  # that backend, or BackendUnavailable
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import backends, reference


def _only_reference(op: str, device: torch.device, backend: str | None) -> None:
    """The default kernels serve devices that only the reference runs on: a named backend that cannot run
    ``op`` on ``device`` raises BackendUnavailable with the reason."""
    backends.resolve(backend, device, op)


def _register_backend_kernels(op, name: str, finish: Callable = lambda result: result) -> None:
    """Registers ``op``'s CPU and CUDA kernels: they run ``name`` of the backend the call names (checked
    against the device of the first argument) or of the fastest backend for that device, then ``finish``."""
    count = len(getattr(torch.ops.astra, name).default._schema.arguments) - 1  # the arguments before ``backend``

    def kernel(*args):
        # the dispatcher leaves out a trailing argument that has its default value
        inputs, backend = args[:count], (args[count] if len(args) > count else None)
        implementation = getattr(backends.get(backends.resolve(backend, inputs[0].device, name)), name)
        return finish(implementation(*inputs))

    for device_type in backends.PREFERENCE:
        op.register_kernel(device_type)(kernel)


def _decoded_rows(codes: Tensor, num_codes: int) -> Tensor:
    """Row of each (token, group) code in the flattened (G*K, Dg) codebook table."""
    g = codes.shape[1]
    return (codes.long() + torch.arange(g, device=codes.device) * num_codes).reshape(-1)


def _reference_vjp(fn, ctx, grad_out, grad_lse, options=()) -> list:
    """Gradients of the saved tensors (None where none was given) through the pure-torch ``fn`` (out, lse),
    whatever backend ran forward (memory of one reference forward)."""
    tensors = [t if t is None else t.detach().requires_grad_(ctx.needs_input_grad[i])
               for i, t in enumerate(ctx.saved_tensors)]
    wanted = [t for t in tensors if t is not None and t.requires_grad]
    grads = iter(())
    if wanted:
        with torch.enable_grad():
            pairs = [(o, g) for o, g in zip(fn(*tensors, *options), (grad_out, grad_lse)) if o.requires_grad]
            outs, grad_outs = zip(*pairs)  # lse needs no gradient when only the outputs' inputs require one
            grads = iter(torch.autograd.grad(outs, wanted, grad_outs, allow_unused=True))
    return [next(grads) if t is not None and t.requires_grad else None for t in tensors]


# --- vq_encode -------------------------------------------------------------

@torch.library.custom_op("astra::vq_encode", mutates_args=())
def vq_encode(x: Tensor, codebooks: Tensor, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """x (N, D), codebooks (G, K, Dg) -> codes (N, G) int32, sqdist (N, G) float32."""
    _only_reference("vq_encode", x.device, backend)
    return reference.vq_encode(x, codebooks)


_register_backend_kernels(vq_encode, "vq_encode")


@vq_encode.register_fake
def _vq_encode_fake(x, codebooks, backend=None):
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
def vq_encode_int8(x: Tensor, codebooks: Tensor, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """As vq_encode, codes chosen by int8-estimated scores (reference.vq_encode_int8)."""
    _only_reference("vq_encode_int8", x.device, backend)
    return reference.vq_encode_int8(x, codebooks)


_register_backend_kernels(vq_encode_int8, "vq_encode_int8")
vq_encode_int8.register_fake(_vq_encode_fake)
# sqdist is the exact distance to the chosen codeword, whichever rule chose it
vq_encode_int8.register_autograd(_vq_encode_backward, setup_context=_vq_encode_setup)


# --- vq_decode -------------------------------------------------------------

@torch.library.custom_op("astra::vq_decode", mutates_args=())
def vq_decode(codes: Tensor, codebooks: Tensor, backend: str | None = None) -> Tensor:
    """codes (N, G) int32 in [0, K), codebooks (G, K, Dg) -> (N, G*Dg) in the codebooks' dtype."""
    _only_reference("vq_decode", codes.device, backend)
    return reference.vq_decode(codes, codebooks)


_register_backend_kernels(vq_decode, "vq_decode")


@vq_decode.register_fake
def _(codes, codebooks, backend=None):
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
def pack_codes(codes: Tensor, bits: int, backend: str | None = None) -> Tensor:
    """codes (M,) int32 in [0, 2**bits) -> (ceil(M*bits/8),) uint8."""
    _only_reference("pack_codes", codes.device, backend)
    return reference.pack_codes(codes, bits)


_register_backend_kernels(pack_codes, "pack_codes")


@pack_codes.register_fake
def _(codes, bits, backend=None):
    return codes.new_empty(((codes.shape[0] * bits + 7) // 8,), dtype=torch.uint8)


@torch.library.custom_op("astra::unpack_codes", mutates_args=())
def unpack_codes(packed: Tensor, bits: int, count: int, backend: str | None = None) -> Tensor:
    """(ceil(count*bits/8),) uint8 -> (count,) int32."""
    _only_reference("unpack_codes", packed.device, backend)
    return reference.unpack_codes(packed, bits, count)


_register_backend_kernels(unpack_codes, "unpack_codes")


@unpack_codes.register_fake
def _(packed, bits, count, backend=None):
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
    remote_rotation: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """See astra_kernels.reference.mixed_precision_attention; returns (out, lse)."""
    _only_reference("mixed_precision_attention", q.device, backend)
    return reference.mixed_precision_attention(
        q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, causal, scale, formulation,
        remote_rotation,
    )


_register_backend_kernels(mixed_precision_attention, "mixed_precision_attention")


@mixed_precision_attention.register_fake
def _(q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias, causal, scale, formulation,
      remote_rotation=None, backend=None):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


_ATTN_TENSORS = 8  # q, k_local, v_local, remote_codes, k_table, v_table, k_bias, v_bias


def _mpa_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_ATTN_TENSORS])
    ctx.options = inputs[_ATTN_TENSORS : _ATTN_TENSORS + 4]  # causal, scale, formulation, remote_rotation


def _mpa_backward(ctx, grad_out, grad_lse):
    # no gradient for the rotation: it is a function of the positions
    grads = _reference_vjp(reference.mixed_precision_attention, ctx, grad_out, grad_lse, ctx.options)
    return (*grads, None, None, None, None, None)


mixed_precision_attention.register_autograd(_mpa_backward, setup_context=_mpa_setup)


# --- merge of attention partials -------------------------------------------

def _token_major(result: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(out (B, H, T, d), lse) with out stored as (B, T, H, d): one layout for every backend (the fakes'). The
    C++ kernels write it; other backends' outputs are copied there."""
    out, lse = result
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse


@torch.library.custom_op("astra::merge_attention", mutates_args=())
def merge_attention(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor,
                    backend: str | None = None) -> tuple[Tensor, Tensor]:
    """See astra_kernels.reference.merge_attention; returns (out, lse), out stored token-major."""
    _only_reference("merge_attention", out_a.device, backend)
    return _token_major(reference.merge_attention(out_a, lse_a, out_b, lse_b))


_register_backend_kernels(merge_attention, "merge_attention", _token_major)


@merge_attention.register_fake
def _(out_a, lse_a, out_b, lse_b, backend=None):
    b, h, t, d = out_a.shape
    return out_a.new_empty((b, t, h, d)).transpose(1, 2), lse_a.new_empty(lse_a.shape)


def _merge_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])


def _merge_backward(ctx, grad_out, grad_lse):
    return (*_reference_vjp(reference.merge_attention, ctx, grad_out, grad_lse), None)


merge_attention.register_autograd(_merge_backward, setup_context=_merge_setup)


# --- attention continuing from a partial -----------------------------------

@torch.library.custom_op("astra::attention_after", mutates_args=())
def attention_after(q: Tensor, k: Tensor, v: Tensor, prior_out: Tensor, prior_lse: Tensor, causal: bool, scale: float,
                    backend: str | None = None) -> tuple[Tensor, Tensor]:
    """See astra_kernels.reference.attention_after; returns (out, lse), out stored token-major."""
    _only_reference("attention_after", q.device, backend)
    return _token_major(reference.attention_after(q, k, v, prior_out, prior_lse, causal, scale))


_register_backend_kernels(attention_after, "attention_after", _token_major)


@attention_after.register_fake
def _(q, k, v, prior_out, prior_lse, causal, scale, backend=None):
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d)).transpose(1, 2), q.new_empty((b, h, t), dtype=torch.float32)


def _after_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.options = inputs[5:7]  # causal, scale


def _after_backward(ctx, grad_out, grad_lse):
    return (*_reference_vjp(reference.attention_after, ctx, grad_out, grad_lse, ctx.options), None, None, None)


attention_after.register_autograd(_after_backward, setup_context=_after_setup)
