"""The ranks' handshake: before the first forward every rank all-gathers a digest of its setup and refuses to
start when any field differs from another rank's.

Ranks that disagree on weights, codebooks, G, K or the model would exchange valid frames of codes that mean
something else on the other side: wrong outputs without an error. The handshake turns that into a
:class:`HandshakeError` on every rank, naming the fields and which ranks hold which value.

Fields (:func:`setup_digest`): package version, world size, model configuration, weights, codebooks, G, K,
bits per code, quantize mode, remote formulation, and whatever the caller adds (``astra run`` adds its
inputs). Digests are SHA-256 (:mod:`astra.digest`), shortened to 16 hex digits in the exchange.
"""
from __future__ import annotations

from importlib import metadata

from . import digest
from .transport import Transport

PACKAGE = "astra-inference"


class HandshakeError(RuntimeError):
    """The ranks of a job do not share the same setup."""


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "not installed"


def setup_digest(engine, world_size: int, **extra) -> dict:
    """This rank's setup for the handshake; ``engine`` is an :class:`astra.AstraEngine`, ``extra`` adds fields
    (JSON values)."""
    model = engine.adapter.model
    books = engine.codebooks
    return {
        "version": package_version(),
        "world_size": world_size,
        "model": digest.config_digest(model)[:16],
        "weights": digest.weights_digest(model)[:16],
        "codebooks": digest.codebooks_digest(books)[:16],
        "groups": books.groups,
        "codebook_size": books.codebook_size,
        "bits": books.bits,
        "quantize": engine.quantize,
        "formulation": sorted({p.formulation for p in engine.plans}),
        "exchange_parts": engine.exchange_parts,
        "partition": engine.partition,
        **extra,
    }


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def mismatches(digests: list[dict]) -> list[str]:
    """One description per field on which the ranks' digests differ ("codebooks: rank 0 has ..., rank 1 ...")."""
    fields = list(dict.fromkeys(k for d in digests for k in d))
    out = []
    for name in fields:
        holders: dict[str, list[int]] = {}
        for r, d in enumerate(digests):
            holders.setdefault(repr(d.get(name, "<missing>")), []).append(r)
        if len(holders) > 1:
            out.append(f"{name}: " + ", ".join(f"{_ranks(ranks)} {'has' if len(ranks) == 1 else 'have'} {value}"
                                              for value, ranks in holders.items()))
    return out


def handshake(transport: Transport, mine: dict, *, timeout_s: float) -> None:
    """All-gather ``mine`` (from :func:`setup_digest`) and raise :class:`HandshakeError` on every rank unless
    every rank's is the same. ``timeout_s`` is the setup timeout: how long a rank waits for the slowest one to
    finish building its model and codebooks."""
    everyone = transport.gather_json(mine, "handshake", timeout_s=timeout_s)
    differ = mismatches(everyone)
    if differ:
        raise HandshakeError(f"rank {transport.rank}: the ranks' setups differ, refusing to start: "
                             + "; ".join(differ))
