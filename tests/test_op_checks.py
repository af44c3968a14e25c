"""The registered ops check their own arguments on every backend: a direct backend call, a
``torch.ops.astra.*`` call and a compiled graph all raise the ValueError that the public API
raises, with the same text, before a bad code indexes memory."""
import math
import re

import pytest
import torch
from conftest import is_interpreted

import astra_kernels as ak
from astra_kernels import backends

CPU_BACKENDS = ak.available_backends("cpu")
CB = torch.randn(4, 16, 8)


def _attention_args(b=1, h=2, hkv=1, tq=3, tl=3, tr=2, g=1, k=16, d=4, code=0, bias=None, scale=0.5,
                    formulation="tokens"):
    """The mixed_precision_attention op's arguments, every code equal to ``code``."""
    q = torch.randn(b, h, tq, d)
    kv = torch.randn(b, hkv, tl, d)
    codes = torch.full((b, tr, g), code, dtype=torch.int32)
    table = torch.randn(g, k, hkv * d)
    return (q, kv, kv.clone(), codes, table, table.clone(), bias, None, False, scale, formulation)


# (op, arguments, message): each a problem the op must name the same way on every backend
BAD_OP_INPUTS = [
    ("vq_decode", (torch.tensor([[0, 1, 2, 16]], dtype=torch.int32), CB),
     r"codes contains 16, outside \[0, 16\) \(codebook size K=16\)"),
    ("vq_decode", (torch.tensor([[0, -1, 2, 3]], dtype=torch.int32), CB), r"codes contains -1, outside \[0, 16\)"),
    ("vq_decode", (torch.zeros(1, 3, dtype=torch.int32), CB), r"codes must have shape \(\.\.\., G=4\), got \(1, 3\)"),
    ("vq_decode", (torch.zeros(1, 4, dtype=torch.int32), torch.randn(4, 1, 8)), "codebook size K=1 is outside"),
    ("vq_encode", (torch.randn(3, 30), CB), "D=30 features .*D is not divisible by G"),
    ("vq_encode", (torch.randn(3, 36), CB), r"D/G=9 differs from codebooks.shape\[2\]=8"),
    ("vq_encode", (torch.randn(3, 32), torch.randn(16, 32)), r"codebooks must have shape \(G, K, D/G\), got \(16, 32\)"),
    ("pack_codes", (torch.tensor([3, 1024], dtype=torch.int32), 10),
     r"codes contains 1024, outside \[0, 1024\) \(not representable in bits=10\)"),
    ("pack_codes", (torch.tensor([-5, 1], dtype=torch.int32), 10), "codes contains -5"),
    ("pack_codes", (torch.tensor([1], dtype=torch.int32), 17), "bits=17 is outside the supported range 1..16"),
    ("unpack_codes", (torch.zeros(5, dtype=torch.uint8), 4, 11), "has 5 bytes but 11 codes of 4 bits need exactly 6"),
    ("unpack_codes", (torch.zeros(0, dtype=torch.uint8), 4, -1), "count must be >= 0, got -1"),
    ("unpack_codes", (torch.zeros(1, dtype=torch.uint8), 0, 1), "bits=0 is outside"),
    ("mixed_precision_attention", _attention_args(code=16),
     r"remote_codes contains 16, outside \[0, 16\) \(table size K=16\)"),
    ("mixed_precision_attention", _attention_args(code=-3), "remote_codes contains -3"),
    ("mixed_precision_attention", _attention_args(code=16, formulation="codewords"), "remote_codes contains 16"),
    ("mixed_precision_attention", _attention_args(g=3, code=70000, k=65536), "remote_codes contains 70000"),
    ("mixed_precision_attention", _attention_args(bias=torch.randn(3)), r"k_bias must have shape \(4,\), got \(3,\)"),
    ("mixed_precision_attention", _attention_args(hkv=0), "query heads H=2 must be a multiple of key/value heads Hkv=0"),
    ("mixed_precision_attention", _attention_args(h=3, hkv=2), "H=3 must be a multiple of key/value heads Hkv=2"),
    ("mixed_precision_attention", _attention_args(d=0), "head dim d=0 must be at least 1"),
    ("mixed_precision_attention", _attention_args(scale=math.inf), "scale must be a positive finite number, got inf"),
    ("mixed_precision_attention", _attention_args(scale=math.nan), "scale must be a positive finite number, got nan"),
    ("mixed_precision_attention", _attention_args(scale=-1.0), "scale must be a positive finite number, got -1"),
    ("mixed_precision_attention", _attention_args(scale=0.0), "scale must be a positive finite number, got 0"),
    ("mixed_precision_attention", _attention_args(g=2, formulation="codewords"), "codewords formulation needs G = 1"),
    ("mixed_precision_attention", _attention_args(formulation="rows"), "formulation must be 'tokens' or 'codewords'"),
    ("attention_after", (torch.randn(1, 2, 3, 4), torch.randn(1, 0, 3, 4), torch.randn(1, 0, 3, 4),
                         torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3), False, 0.5), r"with H % Hkv == 0"),
    ("attention_after", (torch.randn(1, 2, 3, 0), torch.randn(1, 1, 3, 0), torch.randn(1, 1, 3, 0),
                         torch.randn(1, 2, 3, 0), torch.randn(1, 2, 3), False, 0.5), "head dim d=0 must be at least 1"),
    ("attention_after", (torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                         torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3), False, math.inf), "got inf"),
]


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("op,args,match", BAD_OP_INPUTS, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD_OP_INPUTS)])
def test_every_backend_names_a_bad_input_alike(op, args, match):
    """Direct backend calls and the registered op with each backend: one ValueError text."""
    messages = {}
    for name in CPU_BACKENDS:
        module = backends.get(name)
        if not hasattr(module, op) or (is_interpreted(name, "cpu") and op == "vq_encode"):
            continue
        messages[name] = _message(getattr(module, op), *args)
        assert _message(getattr(torch.ops.astra, op), *args, backend=name) == messages[name]
    assert "reference" in messages and len(set(messages.values())) == 1, messages
    assert re.search(match, messages["reference"]), messages["reference"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_public_api_rejects_scale_head_dim_and_kv_heads(backend):
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4)
    for scale in (math.inf, -math.inf, math.nan, 0.0, -2.0):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            ak.attention(q, k, k, scale=scale, backend=backend)
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            ak.attention(q, k, k, scale=scale, prior=(q.clone(), torch.zeros(1, 2, 3)), backend=backend)
    for scale in ("0.5", True):
        with pytest.raises(TypeError, match="scale must be a number"):
            ak.attention(q, k, k, scale=scale, backend=backend)
    empty_d = torch.randn(1, 2, 3, 0)
    with pytest.raises(ValueError, match="head dim d=0 must be at least 1"):
        ak.attention(empty_d, empty_d[:, :1], empty_d[:, :1], backend=backend)
    with pytest.raises(ValueError, match="head dim d=0 must be at least 1"):
        ak.attention(empty_d, empty_d[:, :1], empty_d[:, :1], prior=(empty_d, torch.zeros(1, 2, 3)), backend=backend)
    no_heads = torch.randn(1, 0, 3, 4)
    with pytest.raises(ValueError, match="key/value heads Hkv=0"):
        ak.attention(q, no_heads, no_heads, backend=backend)
    with pytest.raises(ValueError, match="H % Hkv == 0"):
        ak.attention(q, no_heads, no_heads, prior=(q.clone(), torch.zeros(1, 2, 3)), backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_public_api_keeps_wide_codes_out_of_range(backend):
    """int64 codes beyond int32 saturate on their way to the int32 ops instead of wrapping into range."""
    wraps_to_one = torch.tensor([[0, 1, 2, 2**32 + 1]])
    with pytest.raises(ValueError, match=r"contains 2147483647, outside \[0, 16\)"):
        ak.vq_decode(wraps_to_one, CB, backend=backend)
    with pytest.raises(ValueError, match=r"contains -2147483648, outside \[0, 1024\)"):
        ak.pack_codes(torch.tensor([-(2**32)]), 10, backend=backend)


def _bad_code_graphs():
    """Functions whose only op input that can be wrong is a code (the shapes stay valid)."""
    k_table = torch.randn(1, 16, 8)

    def decode(codes):
        return ak.vq_decode(codes, CB).sum()

    def attend(codes):
        q = torch.ones(1, 2, 3, 4)
        return ak.mixed_precision_attention(q, q[:, :2], q[:, :2], codes.reshape(1, -1, 1), k_table, k_table,
                                            formulation="tokens")[0].sum()

    def pack(codes):
        return torch.ops.astra.pack_codes(codes.reshape(-1).int(), 4).sum()

    return [decode, attend, pack]


@pytest.mark.parametrize("fn", _bad_code_graphs(), ids=lambda f: f.__name__)
def test_range_check_survives_inductor(fn):
    """torch.compile with Inductor (generated C++ around the opaque op) still raises for a bad code."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="inductor", fullgraph=True)
    good = torch.tensor([[1, 2, 3, 4]], dtype=torch.int32)
    torch.testing.assert_close(compiled(good), fn(good))
    with pytest.raises(ValueError, match=r"contains 16, outside \[0, 16\)"):
        compiled(torch.tensor([[1, 16, 3, 4]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"contains -1, outside \[0, 16\)"):
        compiled(torch.tensor([[-1, 2, 3, 4]], dtype=torch.int32))


def test_codebook_file_with_non_finite_values_names_file_and_block(tmp_path):
    from astra import Codebooks

    tensors = [torch.randn(2, 4, 3) for _ in range(3)]
    tensors[2][1, 3, 0] = float("nan")
    tensors[2][0, 0, 2] = float("inf")
    path = Codebooks(tensors).save(str(tmp_path))
    with pytest.raises(ValueError, match=r"astra_codebooks.safetensors.*block 2 \(layer 2\) has 2 non-finite"):
        Codebooks.load(path)
    tensors[2] = torch.randn(2, 4, 3)
    assert torch.equal(Codebooks.load(Codebooks(tensors).save(str(tmp_path))).tensors[2], tensors[2])
