"""Rank emulation: the latency of an N-rank inference, from each rank's work timed alone and a replayed schedule.

A machine with fewer cores than ranks cannot time N ranks side by side. Every
method here (ASTRA at any G, the baselines) exchanges bytes only through
:class:`astra.transport.Transport`, so an N-rank run is emulated in three passes:

1. **capture** (:mod:`.capture`): all N ranks run once in one process, as
   threads over the loopback transport, keeping every payload they send;
2. **timing** (:mod:`.program`): each rank runs alone on one core with the real
   model, shapes, inputs, codebooks and kernels; a :class:`ReplayTransport`
   answers its receives at once with the captured payloads (so it computes
   exactly what it would in a real run) and records its *program*: the compute
   time between transport calls, its receives, posts and waits;
3. **replay** (:mod:`.replay`): a deterministic discrete-event simulation runs
   the N programs together over modelled links (:mod:`.network`): compute
   segments take their recorded time, messages queue on the links at the given
   rate and topology and share them max-min fairly, waits block until their
   messages have arrived. The latency is when the last rank finishes.

What it captures: each rank's compute at its real shapes (including the work
that does not shrink with N, e.g. projecting remote tokens), the schedule of
every method (which exchange waits for which, what overlaps what), queueing of
concurrent messages on each rank's uplink and downlink (star) or on one shared
medium, the bytes TCP/IP/Ethernet and gloo put on the wire around each payload
(frames, ACKs, gloo's preambles and rendezvous notices, calibrated to the netns
links' token-bucket counters), gloo's rendezvous (a message moves once its
receive is posted) and a fixed per-message latency.

What it does not capture:

- contention between ranks sharing a host: memory bandwidth, shared caches,
  SMT siblings and clock boosts (each rank is timed alone, on an otherwise idle
  core; side-by-side ranks on one machine run slower by however much they contend);
- OS scheduling noise and the transport's own CPU time (gloo's I/O threads,
  copies into socket buffers, serving the peers' notices while computing);
- TCP's dynamics: slow start and its restart after idle, losses and
  retransmissions when converging flows overflow a token bucket's queue
  (many flows into one small queue are slower than a fair share), and
  the token bucket's burst (after an idle gap a netns link passes up to one
  burst, 1600 B at 10 Mbps, at once; the emulation sends it at the rate);
- finite socket buffers (a send is handed over whole) and a link's other
  traffic; the rate is the configured one, also where the netns emulation
  itself cannot reach it (1000 Mbps on a small VM);
- compute-speed differences between devices: all ranks are timed on this
  machine's cores.

:func:`replay` answers one run; :mod:`astra_lab.bench.emulated` runs the
passes for ``astra bench --link emulated``.
"""
from .capture import CaptureTransport, capture
from .network import TOPOLOGIES, FluidLinks, WireModel, max_min_rates
from .program import Compute, Payloads, Post, Program, Receive, ReplayTransport, Wait
from .replay import RankTiming, Replay, replay

__all__ = [
    "TOPOLOGIES", "CaptureTransport", "Compute", "FluidLinks", "Payloads", "Post", "Program", "RankTiming", "Receive",
    "Replay", "ReplayTransport", "Wait", "WireModel", "capture", "max_min_rates", "replay",
]
