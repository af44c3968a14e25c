"""The wire's checks in one process: bad frames over loopback, codes outside the codebook, the handshake, a
failed transport refusing reuse, the grouped (NCCL) exchange's op list, digests and the calibration cache, and
the launcher's deadlines."""
import copy
import importlib
import os
import subprocess
import sys
import time

import pytest
import torch
from runtime_helpers import run_per_rank, tiny_classifier, tiny_lm

import astra
from astra import digest
from astra.generate import generate
from astra.launch import LaunchTimeout, end_rank, wait_ranks
from astra.transport import FramedTransport, LoopbackHub, PeerError, TransportFailed, framing

calibration = importlib.import_module("astra.calibrate")  # the module: `astra.calibrate` is also the function


def _ids(model, tokens=40, batch=2, seed=1):
    from astra.models import example_inputs

    return example_inputs(model, tokens, batch, seed=seed)


def _run_ranks(fns, timeout_s=20.0):
    """Run ``fns[r](transport_r)`` in one thread per rank over loopback; returns each rank's result or exception."""
    transports = LoopbackHub(len(fns)).transports(timeout_s)
    return run_per_rank(transports, fns), transports


# --- bad frames over loopback -------------------------------------------------------------------------------

def _valid_frame(n, sequence=0, source=1, tag="block1"):
    payload = torch.arange(n, dtype=torch.uint8)
    return framing.encode(payload, framing.payload_checksum(payload), sequence=sequence,
                          exchange=framing.exchange_id(tag), source=source)


def _flip(frame, at):
    frame = frame.clone()
    frame[at] ^= 0x10
    return frame


BAD_MESSAGES = {
    "short": (lambda: _valid_frame(100)[:90], r"sent a short message: 90 bytes where a 132-byte frame"),
    "long": (lambda: torch.cat([_valid_frame(100), torch.zeros(3, dtype=torch.uint8)]),
             r"sent a long message: 135 bytes where a 132-byte frame"),
    "corrupt payload": (lambda: _flip(_valid_frame(100), 77),
                        r"sent a corrupted or truncated frame \(checksum mismatch\)"),
    "corrupt header": (lambda: _flip(_valid_frame(100), 9), r"sent a corrupted or truncated frame"),
    "not a frame": (lambda: torch.randint(0, 256, (132,), dtype=torch.uint8),
                    r"sent bytes that are not an ASTRA frame"),
    "wrong length": (lambda: torch.cat([_valid_frame(90), torch.zeros(10, dtype=torch.uint8)]),
                     r"sent a frame of 90 payload bytes where 100 were expected"),
    "wrong source": (lambda: _valid_frame(100, source=2), r"sent a frame that names rank 2 as its source"),
    "other exchange": (lambda: _valid_frame(100, tag="block0"), r"sent a frame of another exchange"),
    "replayed": (lambda: _valid_frame(100, sequence=7), r"sent a frame with sequence number 7 where 0 was expected"),
}


@pytest.mark.parametrize("kind", BAD_MESSAGES)
def test_a_bad_message_is_a_peer_error_naming_peer_block_and_fault_and_the_transport_refuses_reuse(kind):
    make, reason = BAD_MESSAGES[kind]
    hub = LoopbackHub(2)
    t0, _ = hub.transports(timeout_s=1.0)
    hub.box("block1", 1, 0).put(make())
    handle = t0.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 100}, "block1")
    with pytest.raises(PeerError, match=rf"^rank 0: peer rank 1 failed in exchange 'block1': {reason}") as info:
        handle.wait()
    assert (info.value.rank, info.value.peer, info.value.tag) == (0, 1, "block1")
    assert t0.failure is not None and "block1" in t0.failure
    with pytest.raises(TransportFailed, match=r"rank 0: this loopback transport failed earlier \(PeerError: .*block1"):
        t0.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 100}, "block2")
    with pytest.raises(TransportFailed):
        t0.prepost({1: 100}, "block2")


def test_messages_of_one_forward_never_match_another_even_with_the_same_tag():
    hub = LoopbackHub(2)
    t0, t1 = hub.transports(timeout_s=1.0)
    sent = []
    send = t1._send_frames
    t1._send_frames = lambda frames, receives, tag: (sent.append(dict(frames)), send(frames, receives, tag))[1]
    for forward in range(2):  # two forwards of a clean exchange
        t1.exchange(torch.full((5,), forward, dtype=torch.uint8), [0], {}, "block1").wait()
        got = t0.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 5}, "block1").wait()[1]
        assert got.tolist() == [forward] * 5
    hub.box("block1", 1, 0).put(sent[0][0])  # forward 0's frame again, in forward 2
    with pytest.raises(PeerError, match="sequence number 0 where 2 was expected"):
        t0.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 5}, "block1").wait()


def test_a_timeout_fails_the_transport_too():
    t0, _ = LoopbackHub(2).transports(timeout_s=0.2)
    with pytest.raises(PeerError, match="timed out after 0.2 s"):
        t0.exchange(torch.zeros(1, dtype=torch.uint8), [1], {1: 1}, "block0").wait()
    with pytest.raises(TransportFailed, match="timed out"):
        t0.barrier()


# --- codes outside [0, K) --------------------------------------------------------------------------------------

def _bad_codes_engine(engine, block, bad_code):
    """A copy of ``engine`` whose encoder of ``block`` puts ``bad_code`` into one token's codes."""
    faulty = copy.copy(engine)
    faulty._encoders = list(engine._encoders)
    encode = engine._encoders[block]

    def bad(z):
        codes, dist = encode(z)
        codes = codes.clone()
        codes[0, -1, -1] = bad_code
        return codes, dist

    faulty._encoders[block] = bad
    return faulty


@pytest.mark.parametrize("model_fn,formulation,bad_code", [
    (tiny_classifier, "gather", 25), (tiny_classifier, "dequantize", 31), (tiny_classifier, "tokens", 27),
    (tiny_lm, "gather_int8", 30),
])
def test_codes_past_k_are_a_peer_error_for_their_source_on_every_formulation(model_fn, formulation, bad_code):
    """K = 25 takes 5-bit codes, so 25..31 are representable on the wire: the receiver must refuse them."""
    model = model_fn()
    x = _ids(model)
    books = astra.calibrate(model, [x], 25, 4, progress=False)
    assert books.bits == 5
    engine = astra.AstraEngine(model, books, formulation=formulation, encode="exact")
    faulty = _bad_codes_engine(engine, 1, bad_code)
    causal = engine.causal
    world = 3
    fns = [lambda t, e=(faulty if r == 1 else engine): generate(e, x, t, 2) if causal else e.run_rank(x, t)
           for r in range(world)]
    outcomes, transports = _run_ranks(fns, timeout_s=2.0)
    victims = [2] if causal else [0, 2]  # in the causal LM only rank 2 receives rank 1's codes
    sent = x.shape[0] * engine.layout(x, world).size(1) * books.groups
    for r in victims:
        assert isinstance(outcomes[r], PeerError), outcomes[r]
        assert str(outcomes[r]) == (f"rank {r}: peer rank 1 failed in exchange 'block1': sent code {bad_code} "
                                    f"outside [0, 25) (1 of {sent} codes)")
        with pytest.raises(TransportFailed):
            engine.run_rank(x, transports[r])
    if causal:  # ranks that never use the bad codes finish (generate returns on the last rank only)
        assert outcomes[0] is None and outcomes[1] is None
    else:  # the faulty rank waits for the class states of peers that stopped
        assert isinstance(outcomes[1], PeerError) and "timed out" in str(outcomes[1])


# --- the handshake ---------------------------------------------------------------------------------------------

def _parallel_ranks(setups, x, timeout_s=5.0):
    """Each rank r parallelizes ``setups[r] = (model, books)`` over loopback, then runs one forward."""
    fns = [lambda t, m=m, b=b: astra.parallelize(m, b, transport=t, setup_timeout_s=timeout_s)(x) for m, b in setups]
    return _run_ranks(fns, timeout_s)


def test_ranks_that_agree_shake_hands_and_run():
    model = tiny_classifier()
    x = _ids(model)
    books = astra.calibrate(model, [x], 16, 4, progress=False)
    outcomes, _ = _parallel_ranks([(model, books)] * 3, x)
    want = astra.AstraEngine(model, books).simulate(x, 3)
    for got, w in zip(outcomes, want):
        assert torch.equal(got, w)


def _perturbed_books(books):
    return astra.Codebooks([t + (1e-4 if i == 1 else 0.0) for i, t in enumerate(books.tensors)])


def _perturbed_model(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[0].fc1.weight[3, 5] += 1e-4
    return other


@pytest.mark.parametrize("differ,fields", [
    ("codebooks", ["codebooks"]),
    ("weights", ["weights"]),
    ("codebook size", ["codebooks", "codebook_size", "bits"]),
    ("model", ["model", "weights", "codebooks"]),
])
def test_ranks_that_differ_refuse_to_start_naming_the_fields_and_ranks(differ, fields):
    model = tiny_classifier()
    x = _ids(model)
    books = astra.calibrate(model, [x], 16, 4, progress=False)
    other_model, other_books = model, books
    if differ == "codebooks":
        other_books = _perturbed_books(books)
    elif differ == "weights":
        other_model = _perturbed_model(model)
    elif differ == "codebook size":
        other_books = astra.calibrate(model, [x], 25, 4, progress=False)
    else:
        other_model = tiny_lm(kv_heads=4, seed=0)
        other_books = astra.calibrate(other_model, [x], 16, 4, progress=False)
    outcomes, _ = _parallel_ranks([(model, books), (other_model, other_books), (model, books)], x)
    for r, out in enumerate(outcomes):
        assert isinstance(out, astra.HandshakeError), out
        text = str(out)
        assert text.startswith(f"rank {r}: the ranks' setups differ, refusing to start: ")
        named = [part.split(":")[0] for part in text.split("refusing to start: ")[1].split("; ")]
        assert named == fields
        assert "ranks 0, 2 have" in text and "rank 1 has" in text


def test_the_quantize_mode_is_part_of_the_handshake():
    model = tiny_classifier()
    x = _ids(model)
    books = astra.calibrate(model, [x], 16, 4, progress=False)
    engines = [astra.AstraEngine(model, books) for _ in range(2)]
    engines[1].quantize = "kv"
    digests = [astra.handshake.setup_digest(e, 2) for e in engines]
    assert astra.handshake.mismatches(digests) == ["quantize: rank 0 has 'input', rank 1 has 'kv'"]


def test_a_rank_that_never_arrives_is_a_peer_error_after_the_setup_timeout():
    model = tiny_classifier()
    x = _ids(model)
    books = astra.calibrate(model, [x], 16, 4, progress=False)
    start = time.monotonic()
    outcomes, _ = _run_ranks([lambda t: astra.parallelize(model, books, transport=t, setup_timeout_s=0.5),
                              lambda t: None])
    assert isinstance(outcomes[0], PeerError) and "exchange 'handshake/size': timed out after 0.5 s" in str(outcomes[0])
    assert time.monotonic() - start < 10


# --- the grouped (NCCL) exchange --------------------------------------------------------------------------------

class _Op:
    """torch.distributed.P2POp without a process group."""

    def __init__(self, op, tensor, peer, tag=0):
        self.op, self.tensor, self.peer, self.tag = op, tensor, peer, tag


class _Work:
    def __init__(self, completes=True):
        self.completes = completes

    def wait(self, timeout=None):
        return self.completes


def _grouped_transport(rank, world):
    from astra.transport.torch_dist import TorchDistTransport

    t = object.__new__(TorchDistTransport)  # no process group: the library calls are replaced below
    FramedTransport.__init__(t, rank, world, 2.0)
    t.name, t.device, t.grouped, t._room = "nccl", torch.device("cpu"), True, False
    return t


def test_a_grouped_exchange_posts_all_receives_and_sends_as_one_batch(monkeypatch):
    import torch.distributed as dist

    from astra.transport.torch_dist import _tag_number

    calls = []
    payloads = {1: torch.arange(10, dtype=torch.uint8), 2: torch.arange(20, 30, dtype=torch.uint8)}

    def batch(ops):
        calls.append(ops)
        for op in ops:  # deliver what peers 1 and 2 would have sent
            if op.op is dist.irecv:
                p = payloads[op.peer]
                frame = framing.encode(p, framing.payload_checksum(p), sequence=0,
                                       exchange=framing.exchange_id("block4"), source=op.peer)
                op.tensor[: frame.numel()] = frame
        return [_Work()]  # NCCL coalesces the group into one work

    monkeypatch.setattr(dist, "batch_isend_irecv", batch)
    monkeypatch.setattr(dist, "P2POp", _Op)
    t = _grouped_transport(0, 3)
    t.prepost({1: 10, 2: 10}, "block4")
    assert calls == []  # grouped: the receives wait for the exchange's sends
    out = t.exchange(torch.full((7,), 9, dtype=torch.uint8), [1, 2], {1: 10, 2: 10}, "block4").wait()
    assert {src: p.tolist() for src, p in out.items()} == {src: p.tolist() for src, p in payloads.items()}
    (ops,) = calls
    assert [(op.op, op.peer, op.tensor.numel(), op.tag) for op in ops] == [
        (dist.irecv, 1, 42, _tag_number("block4")), (dist.irecv, 2, 42, _tag_number("block4")),
        (dist.isend, 1, 39, _tag_number("block4")), (dist.isend, 2, 39, _tag_number("block4")),
    ]
    for op in ops[2:]:
        assert torch.equal(framing.open_frame(op.tensor, framing.Expected(0, 0, framing.exchange_id("block4"), 7), 39),
                           torch.full((7,), 9, dtype=torch.uint8))


def test_a_grouped_exchange_that_times_out_names_the_ranks_of_the_group(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "batch_isend_irecv", lambda ops: [_Work(completes=False)])
    monkeypatch.setattr(dist, "P2POp", _Op)
    t = _grouped_transport(1, 3)
    handle = t.exchange(torch.zeros(3, dtype=torch.uint8), [0, 2], {0: 3, 2: 3}, "block0")
    with pytest.raises(PeerError, match=r"rank 1: a peer failed in exchange 'block0': timed out after 2 s "
                                        r"\(ranks 0, 2, one group\)"):
        handle.wait()


# --- digests and the calibration cache --------------------------------------------------------------------------

def test_the_weights_digest_follows_the_tensors_in_memory():
    model = tiny_lm()
    first = digest.weights_digest(model)
    assert digest.weights_digest(tiny_lm()) == first  # same weights, another object
    with torch.no_grad():
        model.blocks[1].qkv.bias[0] += 1.0
    assert digest.weights_digest(model) != first  # in place: the version counter moved
    model.blocks[1].qkv.bias = torch.nn.Parameter(tiny_lm().blocks[1].qkv.bias.detach().clone())
    assert digest.weights_digest(model) == first  # replaced by the original values


def test_the_config_digest_ignores_where_a_model_was_loaded_from():
    from runtime_helpers import hf_gpt2

    a, b = hf_gpt2(), hf_gpt2()
    b.config._name_or_path = "/somewhere/else"
    assert digest.config_digest(a) == digest.config_digest(b)
    assert digest.config_digest(a) != digest.config_digest(hf_gpt2(layers=3))


def test_the_calibration_cache_is_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRA_CACHE", str(tmp_path))
    runs = []
    calibrate = calibration.calibrate
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: (runs.append(1), calibrate(*a, **k))[1])
    kw = dict(tokens=24, batch=2, codebook_size=8, groups=2, iters=2, seed=0, progress=False)
    first = calibration.cached_calibration(tiny_lm(), **kw)
    again = calibration.cached_calibration(tiny_lm(), **kw)  # another object with the same content: a hit
    assert len(runs) == 1 and all(torch.equal(a, b) for a, b in zip(first.tensors, again.tensors))
    changed = tiny_lm()
    with torch.no_grad():
        changed.ln_f.weight[0] += 0.5
    calibration.cached_calibration(changed, **kw)
    calibration.cached_calibration(tiny_lm(), **dict(kw, seed=1))
    assert len(runs) == 3
    assert len(os.listdir(tmp_path / "codebooks")) == 3


# --- ending ranks: deadlines and one-line errors ----------------------------------------------------------------

def _sleeper(seconds, code=0):
    return subprocess.Popen([sys.executable, "-c", f"import sys, time; time.sleep({seconds}); sys.exit({code})"])


def test_wait_ranks_returns_exit_codes():
    assert wait_ranks([_sleeper(0), _sleeper(0.2, 3)], timeout_s=30, linger_s=30) == [0, 3]


def test_wait_ranks_terminates_ranks_that_outlive_the_deadline_and_names_them():
    procs = [_sleeper(0), _sleeper(60), _sleeper(60)]
    start = time.monotonic()
    with pytest.raises(LaunchTimeout, match=r"^rank 1, rank 2 did not finish within 1 s; terminated$"):
        wait_ranks(procs, timeout_s=1, linger_s=30)
    assert time.monotonic() - start < 15 and all(p.poll() is not None for p in procs)


def test_wait_ranks_gives_up_on_hung_peers_of_a_failed_rank():
    procs = [_sleeper(60), _sleeper(0, 3)]
    with pytest.raises(LaunchTimeout, match=r"^rank 0 did not finish within 0.5 s after rank 1 failed "
                                            r"\(exit code 3\); terminated$"):
        wait_ranks(procs, timeout_s=60, linger_s=0.5)
    assert procs[0].poll() is not None


class _Exit(Exception):
    pass


@pytest.mark.parametrize("exc,code", [
    (PeerError(2, 1, "block1", "timed out after 3 s"), 3),
    (TransportFailed("rank 2: this gloo transport failed earlier"), 3),
    (astra.HandshakeError("rank 2: the ranks' setups differ"), 4),
    (ValueError("bad\nsecond line"), 1),
])
@pytest.mark.parametrize("debug", ["0", "1"])
def test_end_rank_prints_one_line_aborts_and_exits_by_kind(monkeypatch, capsys, exc, code, debug):
    aborted = []
    t = LoopbackHub(3).transports()[2]
    t.abort = aborted.append
    monkeypatch.setenv("ASTRA_DEBUG", debug)
    monkeypatch.setattr(os, "_exit", lambda c: (_ for _ in ()).throw(_Exit(c)))
    with pytest.raises(_Exit) as info:
        end_rank(exc, t, "astra run")
    assert info.value.args == (code,) and aborted == [code]
    err = capsys.readouterr().err.splitlines()
    message = str(exc).splitlines()[0].removeprefix("rank 2: ")
    assert err[-1] == f"astra run: rank 2: {type(exc).__name__}: {message}"
    assert (len(err) > 1) == (debug == "1")  # the traceback only with ASTRA_DEBUG=1
