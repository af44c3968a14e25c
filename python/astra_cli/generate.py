"""``astra generate``: a distributed prefill over N ranks, then decoding on the last rank, printed as it comes.

Every rank builds the same model, inputs and codebooks as ``astra run`` does (:func:`astra_cli.run.prepare`)
and takes part in the prefill; the last rank then decodes ``--steps`` tokens from its preallocated cache and
prints each as it is chosen (batch row 0): text when the checkpoint has a tokenizer, token ids otherwise. It
reports the time to first token and the decode rate, and with ``--json`` writes every row's tokens and the
timings.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import torch

from astra.generate import generate
from astra.launch import end_rank

from .run import RunConfig, agree, load_tokenizer, prepare, start_rank


class TokenPrinter:
    """Prints batch row 0's tokens as they are chosen: the text they add (with a tokenizer), or their ids."""

    def __init__(self, tokenizer, prompt: torch.Tensor):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""
        if tokenizer is not None:
            print(tokenizer.decode(prompt[0].tolist()), end="", flush=True)

    def __call__(self, token: torch.Tensor) -> None:
        self.ids.append(int(token[0, 0]))
        if self.tokenizer is None:
            print(self.ids[-1], end=" ", flush=True)
            return
        text = self.tokenizer.decode(self.ids)  # decoded whole: a character may span tokens
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text

    def text(self) -> str | None:
        return None if self.tokenizer is None else self.shown


def rank_main(cfg: RunConfig) -> None:
    """Entry point of one rank (spawned, torchrun or mpirun); any error ends it through :func:`end_rank`."""
    transport = None
    try:
        transport = start_rank(cfg)
        last = transport.rank == transport.world_size - 1
        engine, inputs = prepare(cfg, transport.rank == 0)
        agree(transport, engine, inputs, cfg)
        printer = TokenPrinter(load_tokenizer(cfg.checkpoint), inputs) if last else None
        transport.barrier()
        gen = generate(engine, inputs, transport, cfg.generate, cfg.sampling, printer)
        if gen is not None:
            print(f"\nprefill over {transport.world_size} ranks: {gen.prefill_s:.4f} s on rank {transport.rank}, time "
                  f"to first token {gen.first_token_s:.4f} s, decode {gen.decode_tokens_per_s:.1f} tokens/s "
                  f"({cfg.generate} tokens, {'sampled' if cfg.temperature else 'greedy'})", flush=True)
            if cfg.json:
                report = {**{k: v for k, v in asdict(cfg).items() if k != "json"}, "generated": gen.tokens.tolist(),
                          "text": printer.text(), "prefill_s": gen.prefill_s,
                          "time_to_first_token_s": gen.first_token_s, "decode_tokens_per_s": gen.decode_tokens_per_s}
                with open(cfg.json, "w") as f:
                    json.dump(report, f, indent=2)
        transport.close()
    except (Exception, KeyboardInterrupt) as exc:  # every failure ends the rank the same way
        end_rank(exc, transport, "astra generate")
