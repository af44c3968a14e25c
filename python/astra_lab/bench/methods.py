"""The methods a bench compares: the single device, ASTRA at each G, and the baselines (``pp`` once per chunk count).

Decoder LLMs (Llama, Mistral, Qwen2, Qwen3) are timed to their first token: every method's run ends when the rank
that holds the prompt's last position has chosen the first generated token (the argmax of that position's logits,
the only ones computed), and ASTRA and the single device also report their decoding rate after the prefill.
"""
from __future__ import annotations

import inspect
import time

import torch

from astra import models
from astra.codebooks import Codebooks
from astra.engine import AstraEngine, KVCache, PhaseTimer
from astra.generate import decode, generate
from astra.models.decoder import DecoderAdapter
from astra.transport import Transport

from .. import baselines
from ..baselines.pipeline_parallel import chunk_counts
from .report import method_label

DECODE_STEPS = 16  # tokens generated after the prefill to time decoding (the first one is chosen from the prefill)


def first_token(model) -> bool:
    """Whether the bench times ``model`` to its first generated token (the decoder LLMs)."""
    return isinstance(models.adapt(model), DecoderAdapter)


class SingleDevice:
    """The baseline, measured inside the sweep so that it shares the machine's state with the
    other methods: rank 0 runs the unmodified model on its one pinned core, the others wait idle.
    For a decoder LLM its forward computes the last position's logits only and returns the first token (B, 1)."""

    def __init__(self, model):
        self.adapter = models.adapt(model)
        self.first_token = first_token(model)

    @torch.no_grad()
    def forward(self, inputs):
        if not self.first_token:
            return self.adapter.reference_forward(inputs)
        return self.adapter.model(input_ids=inputs, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)

    def run_rank(self, inputs, transport: Transport, *, timer=None):
        return self.forward(inputs) if transport.rank == 0 else None

    @torch.no_grad()
    def decode_tokens_per_s(self, inputs: torch.Tensor, steps: int = DECODE_STEPS) -> float:
        """Tokens per second of the unmodified model's greedy decoding from its own KV cache after the prompt:
        ``steps - 1`` tokens after the first, as :func:`astra.generate.generate` counts them."""
        model = self.adapter.model
        # the cache's argument and output field: ``cache`` in recent transformers, ``past_key_values`` before
        key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        out = model(input_ids=inputs, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(steps - 1):
            out = model(input_ids=token, use_cache=True, **{key: getattr(out, key)})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return (steps - 1) / (time.perf_counter() - start)


class FirstToken:
    """A distributed method run to the first generated token: the last rank (which holds the prompt's last
    position under every method) asks for that position's logits only and returns the chosen token (B, 1); the
    other ranks compute no logits and return None. Other attributes are the method's."""

    def __init__(self, method):
        self.method = method

    def __getattr__(self, name):
        if name == "method":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.method, name)

    def run_rank(self, inputs, transport: Transport, *, timer: PhaseTimer | None = None):
        timer = timer or PhaseTimer()
        last = transport.rank == transport.world_size - 1
        logits = self.method.run_rank(inputs, transport, timer=timer, logits_to_keep=1 if last else 0)
        if not last:
            return None
        with timer("head"):
            return logits[:, -1].argmax(-1, keepdim=True)


def build(model, names: list[str], groups: list[int], codebooks: dict[str, str | Codebooks], *,
          table_budget_bytes: int, encode: str, tokens: int,
          exchange_parts: int = 1, partition: str = "balanced") -> list[tuple[str, int | None, object]]:
    """(name, groups, method) of the single device and of every method in ``names`` ("astra" once per G,
    ``codebooks[str(G)]`` a codebook file or :class:`Codebooks`; "pp" once per chunk count of ``tokens``,
    :func:`~astra_lab.baselines.pipeline_parallel.chunk_counts`)."""
    wrap = FirstToken if first_token(model) else (lambda m: m)
    out = [("single", None, SingleDevice(model))]
    for name in names:
        if name == "astra":
            for g in groups:
                books = codebooks[str(g)]
                books = books if isinstance(books, Codebooks) else Codebooks.load(books)
                out.append(("astra", g, wrap(AstraEngine(model, books, table_budget_bytes=table_budget_bytes,
                                                         encode=encode, exchange_parts=exchange_parts,
                                                         partition=partition))))
        elif name == "pp":
            for c in chunk_counts(tokens, models.adapt(model).causal):
                out.append(("pp", None, wrap(baselines.build("pp", model, pp_chunks=c))))
        elif name != "single":
            out.append((name, None, wrap(baselines.build(name, model))))
    return out


def label(name: str, groups: int | None, method) -> str:
    """The method's label in progress bars and reports: ``astra G=32``, ``pp c=4``, ``tp``."""
    return method_label(name, groups, getattr(method, "pp_chunks", None))


def method_fields(name: str, method, inputs: torch.Tensor, world: int) -> dict:
    """The fields of a row that describe its method: ASTRA's formulations, encoding and quantization, ``pp``'s
    chunk count, and ``latency_of`` ("first_token") where the latency is the time to the first token."""
    fields = {}
    if name == "astra":
        fields.update(remote_formulation=method.remote_formulations(inputs, world), encoding=method.encode,
                      quantize=method.quantize,
                      exchange_parts=method.exchange_parts, partition=method.partition)
    if name == "pp":
        fields["pp_chunks"] = method.pp_chunks
    if isinstance(method, FirstToken) or getattr(method, "first_token", False):
        fields["latency_of"] = "first_token"
    return fields


def astra_decode_tokens_per_s(method: FirstToken, inputs: torch.Tensor, transport: Transport,
                              steps: int = DECODE_STEPS) -> float | None:
    """ASTRA's decoding rate on the last rank after a distributed prefill over ``transport`` (every rank calls
    it; None on the others): :func:`astra.generate.generate`."""
    gen = generate(method.method, inputs, transport, steps)
    return None if gen is None else gen.decode_tokens_per_s


def astra_decode_tokens_per_s_simulated(method: FirstToken, inputs: torch.Tensor, world: int,
                                        steps: int = DECODE_STEPS) -> float:
    """ASTRA's decoding rate on the last rank after the single-process simulation of the prefill over ``world``
    ranks: the same cache, so the same decoding as after a distributed prefill."""
    engine = method.method
    prompt = engine.adapter.num_tokens(inputs)
    cache = KVCache(prompt + steps - 1)
    logits = engine.simulate(inputs, world, cache=cache, logits_to_keep=1)[-1]
    first: list[float] = []
    decode(engine, cache, logits[:, -1], prompt, steps, on_token=lambda t: first or first.append(time.perf_counter()))
    return (steps - 1) / (time.perf_counter() - first[0])
