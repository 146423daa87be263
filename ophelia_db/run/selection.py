"""How a fleet run splits its selection: shards over machines, waves in time, an error budget.

Both use one deterministic order, a CRC32 of each instance's name: adding an
instance to the fleet never moves the others between shards, and ``10%``
picks a spread of the fleet rather than its first names in the alphabet.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import Fleet, Target


def _order(target: Target) -> tuple[int, str]:
    return zlib.crc32(target.name.encode()), target.name


# Shards.

_SHARD = re.compile(r"\s*(\d+|auto)\s*(?:/\s*(\d+)\s*)?")


def parse_shard(spec: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``K/N`` (1-based), or ``auto/N`` / ``auto`` from a Kubernetes Indexed Job.

    ``auto`` takes K from ``JOB_COMPLETION_INDEX`` (0-based) and N from the spec
    or from ``OPHELIA_SHARD_COUNT`` (the Job's ``completions``, which Kubernetes
    does not pass to the pod by itself).
    """
    env = os.environ if environ is None else environ
    match = _SHARD.fullmatch(spec)
    example = "e.g. --shard 2/4, or --shard auto/4 in a Kubernetes Indexed Job"
    if not match or (match.group(1) != "auto" and match.group(2) is None):
        raise ConfigError(f"--shard {spec!r}: expected K/N with 1 <= K <= N, {example}")
    if match.group(1) == "auto":
        index_text = env.get("JOB_COMPLETION_INDEX", "")
        count_text = match.group(2) or env.get("OPHELIA_SHARD_COUNT", "")
        if not index_text.isdigit() or not count_text.isdigit():
            raise ConfigError(
                f"--shard {spec!r}: needs JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job) and the "
                "completion count (--shard auto/N or OPHELIA_SHARD_COUNT)"
            )
        index, count = int(index_text) + 1, int(count_text)
    else:
        index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {spec!r}: shard {index} of {count} does not exist; {example}")
    return index, count


def shard_number(target: Target, count: int) -> int:
    """The 1-based shard ``target`` belongs to among ``count``; the hub belongs to none (0)."""
    if target.role == "hub":
        return 0
    return zlib.crc32(target.name.encode()) % count + 1


def select_shard(targets: list[Target], spec: str) -> list[Target]:
    """Keep the instances of shard ``K/N``, leaving the hub out.

    N machines of a CI matrix together cover the selection exactly once.
    """
    index, count = parse_shard(spec)
    return [t for t in targets if shard_number(t, count) == index]


# Waves and their error budget.


@dataclass(frozen=True)
class WavePlan:
    """One wave: what it was asked as (a tag, a percentage, ``rest``) and its instances."""

    label: str
    targets: tuple[Target, ...]


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def plan_waves(fleet: Fleet, targets: Sequence[Target], specs: Sequence[str]) -> list[WavePlan]:
    """Cut ``targets`` (the hub excluded) into waves, in the order given.

    Each spec is a tag (the selected instances carrying it), a percentage of
    the selection (``10%``, rounded up, in the fleet's deterministic order) or
    ``rest``; whatever no spec took comes last, as ``rest``.
    """
    if not specs:
        # One wave, in the selection's own order.
        return [WavePlan("rest", tuple(t for t in targets if t.role != "hub"))]
    ordered = sorted((t for t in targets if t.role != "hub"), key=_order)
    remaining = list(ordered)
    waves = []
    for spec in specs:
        spec = spec.strip()
        percent = _PERCENT.fullmatch(spec)
        if spec == "rest":
            chosen = remaining
        elif percent:
            share = float(percent.group(1))
            if not 0 < share <= 100:
                raise ConfigError(f"--wave {spec}: a percentage is between 0 and 100 (e.g. --wave 10%)")
            chosen = remaining[: math.ceil(len(ordered) * share / 100)]
        elif re.fullmatch(r"[A-Za-z0-9_.-]+", spec):
            fleet.tagged(spec)  # a misspelt tag is refused with the closest one
            chosen = [t for t in remaining if spec in t.tags]
        else:
            raise ConfigError(f"--wave {spec!r}: expected a tag, a percentage such as 10%, or rest")
        waves.append(WavePlan(spec, tuple(chosen)))
        remaining = [t for t in remaining if t not in chosen]
    if remaining:
        waves.append(WavePlan("rest", tuple(remaining)))
    return waves


def parse_rate(text: str) -> float:
    """A failure rate as ``5%`` or ``0.05``."""
    try:
        rate = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise ConfigError(f"--max-failure-rate {text!r}: expected a share such as 5% or 0.05")
    return rate


@dataclass(frozen=True)
class Budget:
    """How many failures a run may have before it starts no further wave.

    With neither limit, none: a wave starts only if every instance before it
    succeeded (the canary rule).
    """

    max_failures: int | None = None
    max_failure_rate: float | None = None

    def exceeded(self, failures: int, finished: int) -> str | None:
        """Why the next wave must not start, or ``None``."""
        if self.max_failures is None and self.max_failure_rate is None:
            return f"{failures} failed instance(s) in earlier waves" if failures else None
        if self.max_failures is not None and failures >= self.max_failures:
            return f"{failures} failed instance(s) reached --max-failures {self.max_failures}"
        if self.max_failure_rate is not None and finished and failures / finished > self.max_failure_rate:
            return (
                f"{failures} of {finished} instance(s) failed ({failures / finished:.0%}), "
                f"over --max-failure-rate {self.max_failure_rate:.0%}"
            )
        return None


@dataclass(frozen=True)
class RunPlan:
    """A run's selection cut into shards and waves: what this process runs, and how it is journalled."""

    hub: list[Target]
    waves: list[WavePlan]
    shard_of: dict[str, int]
    wave_of: dict[str, int]

    @property
    def targets(self) -> list[Target]:
        return [*self.hub, *(t for wave in self.waves for t in wave.targets)]


def plan_run(
    fleet: Fleet,
    targets: list[Target],
    wave_specs: list[str],
    shard: tuple[int, int] | None,
    *,
    shared: bool = True,
) -> RunPlan:
    # Waves are cut from the whole selection, so that every shard numbers them alike.
    waves = plan_waves(fleet, targets, wave_specs)
    wave_of = {t.name: index for index, wave in enumerate(waves, start=2) for t in wave.targets}
    hub = [t for t in targets if t.role == "hub"]
    wave_of.update({t.name: 1 for t in hub})
    if shard is None:
        return RunPlan(hub, waves, {t.name: 1 for t in targets}, wave_of)
    index, count = shard
    # No shard runs the hub: it is upgraded once, before the matrix.
    shard_of = {t.name: shard_number(t, count) for t in targets if t.role != "hub"}
    mine = [WavePlan(w.label, tuple(t for t in w.targets if shard_of[t.name] == index)) for w in waves]
    if not shared:
        # No run id shared with the other shards: this shard is journalled as a run of its own.
        shard_of = {t.name: 1 for wave in mine for t in wave.targets}
    return RunPlan([], mine, shard_of, wave_of)
