"""Mixed-precision attention with rotary remote keys (``remote_rotation``) on every backend, against a
float64 materialized oracle: gather the remote keys, rotate them as Hugging Face's apply_rotary_pos_emb
does (rotate_half, cos/sin duplicated over the halves), then plain softmax attention."""
import math

import pytest
import torch
from conftest import BACKEND_DEVICES, is_interpreted

import astra_kernels as ak


def rotation(positions: torch.Tensor, d: int, theta: float = 500000.0) -> torch.Tensor:
    """(2, T, d/2) float32 (cos, sin) of the angles position * theta^(-2i/d), computed in float64."""
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()]).float()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def oracle(q, k_local, v_local, codes, k_table, v_table, rot, causal, k_bias=None, v_bias=None):
    """(out, lse) in float64 with every remote key and value materialized."""
    b, h, tq, d = q.shape
    hkv, tl = k_local.shape[1], k_local.shape[2]
    g, kk, width = k_table.shape
    rows = codes.long() + torch.arange(g) * kk  # (B, Tr, G)
    kr = k_table.double().reshape(g * kk, width)[rows].sum(2)
    vr = v_table.double().reshape(g * kk, width)[rows].sum(2)
    if k_bias is not None:
        kr, vr = kr + k_bias.double(), vr + v_bias.double()
    tr = codes.shape[1]
    kr = kr.reshape(b, tr, hkv, d).transpose(1, 2)
    vr = vr.reshape(b, tr, hkv, d).transpose(1, 2)
    cos = torch.cat([rot[0], rot[0]], dim=-1).double()  # (Tr, d), HF's duplicated layout
    sin = torch.cat([rot[1], rot[1]], dim=-1).double()
    kr = kr * cos + rotate_half(kr) * sin
    keys = torch.cat([kr, k_local.double()], 2).repeat_interleave(h // hkv, 1)
    values = torch.cat([vr, v_local.double()], 2).repeat_interleave(h // hkv, 1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), keys) / math.sqrt(d)
    if causal:
        i = torch.arange(tq)[:, None]
        j = torch.arange(tl)[None, :]
        hidden = torch.cat([torch.zeros(tq, tr, dtype=torch.bool), j > i + tl - tq], 1)
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse[..., None].clamp_min(-1e300)).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, values), lse


def make(b=1, h=4, hkv=2, tq=7, tl=9, tr=11, d=16, g=2, k=23, first_position=0, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).float()

    args = dict(q=rnd(b, h, tq, d), k_local=rnd(b, hkv, tl, d), v_local=rnd(b, hkv, tl, d),
                remote_codes=torch.randint(0, k, (b, tr, g), generator=gen, dtype=torch.int32),
                k_table=rnd(g, k, hkv * d) / g**0.5, v_table=rnd(g, k, hkv * d) / g**0.5)
    if bias:
        args["k_bias"], args["v_bias"] = rnd(hkv * d), rnd(hkv * d)
    # remote tokens at global positions first_position.., e.g. a later rank's part of a long prompt
    args["remote_rotation"] = rotation(first_position + torch.arange(tr), d)
    return args


CASES = {
    "plain": dict(),
    "gqa_one_kv_head": dict(h=4, hkv=1),
    "mha": dict(h=3, hkv=3),
    "g32": dict(g=32, k=8, d=32, hkv=1, h=2),
    "no_remote": dict(tr=0),
    "no_local": dict(tl=0),
    "odd_half_dim": dict(d=6, tq=5, tl=4, tr=7),
    "half_dim_five": dict(d=10, h=2, hkv=1),
    "past_32k": dict(first_position=40000, tr=13),
    "bias": dict(bias=True),
    "batch2_ragged": dict(b=2, tq=13, tl=3, tr=29, k=5),
}
LARGE = {"llama_head": dict(h=8, hkv=2, d=64, tq=40, tl=40, tr=70, g=4, k=64, first_position=1000),
         "many_remote": dict(h=2, hkv=1, d=64, tq=17, tl=17, tr=600, g=1, k=50)}


def _check(args, backend, device, causal, atol):
    dev = {n: t.to(device) for n, t in args.items()}
    out, lse = ak.mixed_precision_attention(**dev, causal=causal, backend=backend)
    t_out, t_lse = oracle(args["q"], args["k_local"], args["v_local"], args["remote_codes"], args["k_table"],
                          args["v_table"], args["remote_rotation"], causal, args.get("k_bias"), args.get("v_bias"))
    finite = torch.isfinite(t_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite)
    assert (out.cpu().double() - t_out).abs().max().item() <= atol
    if finite.any():
        assert (lse.cpu().double() - t_lse)[finite].abs().max().item() <= atol


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rotary_remote_keys_match_the_float64_oracle(backend_device, case, causal):
    backend, device = backend_device
    _check(make(**CASES[case]), backend, device, causal, atol=2e-5)


@pytest.mark.parametrize("case", LARGE, ids=list(LARGE))
def test_rotary_remote_keys_at_llm_head_sizes(backend_device, case):
    backend, device = backend_device
    if is_interpreted(backend, device):
        pytest.skip("the Triton interpreter runs the small cases")
    _check(make(**LARGE[case]), backend, device, causal=True, atol=5e-5)


TRITON_DEVICES = [d for b, d in BACKEND_DEVICES if b == "triton"]
HALF_PRECISION_CASES = {"single_rows": dict(g=1), "summed_with_bias": dict(bias=True, d=10, h=2, hkv=1)}


@pytest.mark.parametrize("case", HALF_PRECISION_CASES, ids=list(HALF_PRECISION_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_rotates_16_bit_inputs_as_precisely_as_the_reference(device, dtype, case):
    """Rotated keys are fp32 (even of one table row) and enter 16-bit dots as hi + lo parts: the Triton error
    against the float64 oracle of the rounded inputs stays within twice the fp32-computing reference's."""
    args = make(**HALF_PRECISION_CASES[case], seed=5)
    rounded = {n: (t.to(dtype) if t.is_floating_point() and n != "remote_rotation" else t) for n, t in args.items()}
    t_out, t_lse = oracle(rounded["q"], rounded["k_local"], rounded["v_local"], rounded["remote_codes"],
                          rounded["k_table"], rounded["v_table"], rounded["remote_rotation"], True,
                          rounded.get("k_bias"), rounded.get("v_bias"))
    errors = {}
    for backend, dev in (("triton", device), ("reference", "cpu")):
        out, lse = ak.mixed_precision_attention(**{n: t.to(dev) for n, t in rounded.items()}, causal=True,
                                                backend=backend)
        assert out.dtype == dtype
        errors[backend] = ((out.cpu().double() - t_out).abs().max().item(),
                           (lse.cpu().double() - t_lse).abs().max().item())
    assert errors["triton"][0] <= 2 * errors["reference"][0] + 1e-5
    assert errors["triton"][1] <= 2 * errors["reference"][1] + 1e-5


def test_reference_in_float64_equals_the_oracle():
    args = make(d=10, g=3, tr=17, first_position=33000, bias=True)
    wide = {n: (t.double() if t.is_floating_point() else t) for n, t in args.items()}
    out, lse = ak.mixed_precision_attention(**wide, causal=True, backend="reference")
    t_out, t_lse = oracle(wide["q"], wide["k_local"], wide["v_local"], wide["remote_codes"], wide["k_table"],
                          wide["v_table"], wide["remote_rotation"], True, wide["k_bias"], wide["v_bias"])
    assert (out - t_out).abs().max().item() < 1e-12
    assert (lse.double() - t_lse).abs().max().item() < 1e-6  # lse is float32 on every backend


def test_zero_angles_change_nothing(backend_device):
    backend, device = backend_device
    args = {n: t.to(device) for n, t in make(tr=9).items()}
    rot = args.pop("remote_rotation")
    identity = torch.stack([torch.ones_like(rot[0]), torch.zeros_like(rot[1])])
    rotated = ak.mixed_precision_attention(**args, remote_rotation=identity, causal=True, backend=backend)
    plain = ak.mixed_precision_attention(**args, formulation="tokens", causal=True, backend=backend)
    torch.testing.assert_close(rotated, plain, rtol=0, atol=1e-6)


def test_relative_positions_only(backend_device):
    """RoPE scores depend on position differences: shifting the remote tokens' and the queries' positions
    together (queries and local keys re-rotated) leaves the attention unchanged."""
    backend, device = backend_device
    args = make(tr=10, tq=6, tl=6, d=16, first_position=0, seed=3)
    outs = []
    for shift in (0, 5000):
        rot_local = rotation(shift + 10 + torch.arange(6), 16)
        cos = torch.cat([rot_local[0], rot_local[0]], -1)
        sin = torch.cat([rot_local[1], rot_local[1]], -1)
        moved = dict(args, remote_rotation=rotation(shift + torch.arange(10), 16),
                     q=args["q"] * cos + rotate_half(args["q"]) * sin,
                     k_local=args["k_local"] * cos + rotate_half(args["k_local"]) * sin)
        outs.append(ak.mixed_precision_attention(**{n: t.to(device) for n, t in moved.items()}, causal=True,
                                                 backend=backend)[0].cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=2e-4)


def test_a_rotation_picks_the_tokens_formulation():
    """At G = 1 with many remote tokens the cost model picks codewords; a rotation needs tokens."""
    args = make(g=1, k=5, tr=300, tq=4, tl=4)
    rot = args.pop("remote_rotation")
    plain = dict(args, remote_codes=args["remote_codes"])
    out, _ = ak.mixed_precision_attention(**plain, remote_rotation=rot)
    expected = oracle(args["q"], args["k_local"], args["v_local"], args["remote_codes"], args["k_table"],
                      args["v_table"], rot, False)[0]
    assert (out.double() - expected).abs().max().item() < 2e-5


@pytest.mark.parametrize("change,exc,match", [
    (dict(d=7), ValueError, "even head dim"),
    (dict(rot_shape=(2, 3, 8)), ValueError, r"remote_rotation must have shape \(2, Tr=11, d/2=8\)"),
    (dict(rot_shape=(11, 8)), ValueError, "remote_rotation must have shape"),
    (dict(rot_dtype=torch.int32), TypeError, "remote_rotation must be a float tensor"),
    (dict(formulation="codewords", g=1), ValueError, "codewords formulation attends each codeword once"),
])
def test_bad_rotation_is_refused_by_every_backend(backend_device, change, exc, match):
    backend, device = backend_device
    change = dict(change)
    rot_shape, rot_dtype = change.pop("rot_shape", None), change.pop("rot_dtype", None)
    formulation = change.pop("formulation", None)
    d = change.pop("d", 16)
    args = make(d=d - d % 2, **change)
    args["q"], args["k_local"], args["v_local"] = (torch.randn(*t.shape[:-1], d) for t in
                                                   (args["q"], args["k_local"], args["v_local"]))
    if d % 2:
        args["k_table"] = args["v_table"] = torch.randn(args["k_table"].shape[0], args["k_table"].shape[1], 2 * d)
        args["remote_rotation"] = torch.zeros(2, 11, d // 2)
    if rot_shape is not None:
        args["remote_rotation"] = torch.zeros(rot_shape)
    if rot_dtype is not None:
        args["remote_rotation"] = args["remote_rotation"].to(rot_dtype)
    dev = {n: t.to(device) for n, t in args.items()}
    with pytest.raises(exc, match=match):
        ak.mixed_precision_attention(**dev, formulation=formulation, backend=backend)
    # the registered op checks it too, whatever the caller skipped
    with pytest.raises(exc, match=match):
        torch.ops.astra.mixed_precision_attention(
            dev["q"], dev["k_local"], dev["v_local"], dev["remote_codes"], dev["k_table"], dev["v_table"], None,
            None, False, 0.25, formulation or "tokens", dev["remote_rotation"], backend=backend)


def test_gradients_through_a_rotation_match_the_oracle():
    args = make(tr=6, tq=3, tl=4, d=8, g=2, k=7)
    q = args["q"].double().requires_grad_()
    out, _ = ak.mixed_precision_attention(**dict({n: (t.double() if t.is_floating_point() else t)
                                                  for n, t in args.items()}, q=q), causal=True)
    (grad,) = torch.autograd.grad(out.sum(), q)
    q2 = args["q"].double().requires_grad_()
    expected = oracle(q2, args["k_local"], args["v_local"], args["remote_codes"], args["k_table"], args["v_table"],
                      args["remote_rotation"], True)[0]
    (grad2,) = torch.autograd.grad(expected.sum(), q2)
    torch.testing.assert_close(grad, grad2, rtol=1e-9, atol=1e-10)
