"""Rate schedules: a link's rate as a step function of time, written ``0:50,2:5,4:50`` (seconds:Mbps).

A schedule starts at offset 0 (in the bench: the start of a point's measured
runs) with its first rate, changes rate at each later offset, and keeps its
last rate after its last change. ``sim`` links integrate a message's bits over
it (:meth:`RateSchedule.transmit_end`); ``netns`` links follow it with a
:class:`ScheduleThread`, which reshapes the token buckets at each offset and
restores the first rate when stopped.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateSchedule:
    """``steps``: (offset in seconds, rate in Mbps), offsets increasing from 0."""

    steps: tuple[tuple[float, float], ...]

    def __post_init__(self):
        if not self.steps:
            raise ValueError("a rate schedule needs at least one offset:Mbps step")
        offsets = [t for t, _ in self.steps]
        if offsets[0] != 0:
            raise ValueError(f"a rate schedule starts at offset 0 (its first rate), got {offsets[0]:g} s first")
        for t, mbps in self.steps:
            if not math.isfinite(t) or not math.isfinite(mbps):
                raise ValueError(f"rate schedule step {t:g}:{mbps:g} is not finite")
            if mbps <= 0:
                raise ValueError(f"rate schedule step {t:g}:{mbps:g}: rates must be positive Mbps")
        for a, b in itertools.pairwise(offsets):
            if b <= a:
                raise ValueError(f"rate schedule offsets must increase: {b:g} s follows {a:g} s")

    @classmethod
    def parse(cls, spec: str) -> RateSchedule:
        """``"0:50,2:5,4:50"``: 50 Mbps from 0 s, 5 Mbps from 2 s, 50 Mbps from 4 s on."""
        steps = []
        for part in spec.split(","):
            fields = part.strip().split(":")
            if len(fields) != 2:
                raise ValueError(f"rate schedule {spec!r}: step {part.strip()!r} is not seconds:Mbps")
            try:
                steps.append((float(fields[0]), float(fields[1])))
            except ValueError:
                raise ValueError(f"rate schedule {spec!r}: step {part.strip()!r} is not two numbers "
                                 f"seconds:Mbps") from None
        try:
            return cls(tuple(steps))
        except ValueError as exc:
            raise ValueError(f"rate schedule {spec!r}: {exc}") from None

    @property
    def spec(self) -> str:
        return ",".join(f"{t:g}:{mbps:g}" for t, mbps in self.steps)

    @property
    def first_mbps(self) -> float:
        return self.steps[0][1]

    def rate_at(self, offset: float) -> float:
        """The rate (Mbps) at ``offset`` seconds; before 0, the first rate."""
        rate = self.first_mbps
        for t, mbps in self.steps:
            if t <= offset:
                rate = mbps
        return rate

    def transmit_end(self, start: float, bits: float) -> float:
        """The offset at which ``bits`` put on the link at offset ``start`` have left it, each step's bits at its
        rate (a transmission that spans a change runs at both rates)."""
        t, left = start, bits
        bounds = [b for b, _ in self.steps[1:]] + [math.inf]
        for (_, mbps), end in zip(self.steps, bounds):
            if end <= t:
                continue
            rate = mbps * 1e6
            if t + left / rate <= end:
                return t + left / rate
            left -= (end - t) * rate
            t = end
        raise AssertionError("the last step of a schedule never ends")


class ScheduleThread:
    """Applies ``schedule`` in the background: ``set_rate(Mbps)`` at each offset after ``epoch``
    (time.monotonic seconds); :meth:`stop` ends it (early, or after :meth:`join`) and restores the first
    rate."""

    def __init__(self, schedule: RateSchedule, set_rate: Callable[[float], None], epoch: float):
        self.schedule, self._set_rate, self.epoch = schedule, set_rate, epoch
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._changed = False  # whether a later step was applied (the first rate is set before the start)
        self._thread = threading.Thread(target=self._apply, name="rate-schedule", daemon=True)
        self._thread.start()

    def _apply(self) -> None:
        try:
            for t, mbps in self.schedule.steps[1:]:
                if self._stop.wait(max(0.0, self.epoch + t - time.monotonic())):
                    return
                self._set_rate(mbps)
                self._changed = True
        except BaseException as exc:  # raised again by stop(), in the thread that owns the link
            self._error = exc

    def join(self) -> None:
        """Wait until the schedule's last step has been applied (or it was stopped)."""
        self._thread.join()

    def stop(self) -> None:
        """End the schedule and set the first rate again; raises what made a rate change fail."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._changed:
            self._set_rate(self.schedule.first_mbps)
