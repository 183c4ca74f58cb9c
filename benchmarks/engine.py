"""Engine overhead per event, and what the algorithm wrapper adds over the functional core.

Part 1 times 1000 events, so "median ms" reads as microseconds per event. The floor is a Python loop
making the same 10 bare calls the engine makes (one `match` per algorithm); the target is < 20 us per
event for 10 algorithms that do not match. Part 2 times one training-batch mix through the engine
against the same functional call, to show the wrapper's cost on a real batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Table, optional_import, parse_args, time_call

from taxaug import functional as F
from taxaug.algorithms import Algorithm, Engine, Event, State, create

EVENTS_PER_CALL = 1000


class Idle(Algorithm):
    """Matches nothing (the common case: most algorithms ignore most events)."""

    events = frozenset({Event.FIT_END})


class NoOp(Algorithm):
    """Matches BATCH_END and does nothing: the cost of one apply plus its trace entry."""

    events = frozenset({Event.BATCH_END})

    def apply(self, event, state):
        pass


def _never(event, state):
    return False


def _overhead_rows(table: Table, repeats: int) -> None:
    case = f"10 algorithms, {EVENTS_PER_CALL} events per call (ms == us/event)"
    state = State()
    event = Event.BATCH_END
    n = EVENTS_PER_CALL

    def empty_loop():
        for _ in range(n):
            pass

    def bare_calls():
        for _ in range(n):
            for _ in range(10):
                _never(event, state)

    def bound_matches():
        algs = [Idle() for _ in range(10)]
        def run():
            for _ in range(n):
                for a in algs:
                    a.match(event, state)
        return run

    def engine_run(engine, ev=event):
        def run():
            for _ in range(n):
                engine.run(ev, state)
        return run

    table.add(case, "empty Python loop", time_call(empty_loop, repeats=repeats))
    table.add(case, "floor: 10 bare function calls", time_call(bare_calls, repeats=repeats),
              floor="floor: 10 bare function calls")
    table.add(case, "10 Algorithm.match calls, no engine", time_call(bound_matches(), repeats=repeats),
              floor="floor: 10 bare function calls")
    table.add(case, "Engine.run, none match", time_call(engine_run(Engine([Idle() for _ in range(10)])),
                                                        repeats=repeats), floor="floor: 10 bare function calls",
              note="target < 0.020 (20 us)")
    table.add(case, "Engine.run, none match, reversed event",
              time_call(engine_run(Engine([Idle() for _ in range(10)]), Event.AFTER_LOSS), repeats=repeats),
              floor="floor: 10 bare function calls")
    table.add(case, "Engine.run, 1 no-op applies (traced)",
              time_call(engine_run(Engine([NoOp()] + [Idle() for _ in range(9)])), repeats=repeats),
              floor="floor: 10 bare function calls")
    table.add(case, "Engine.run, 1 no-op applies (trace off)",
              time_call(engine_run(Engine([NoOp()] + [Idle() for _ in range(9)], trace_size=0)), repeats=repeats),
              floor="floor: 10 bare function calls")
    table.add(f"0 algorithms, {EVENTS_PER_CALL} events per call (ms == us/event)", "Engine.run, empty engine",
              time_call(engine_run(Engine([])), repeats=repeats))
    builtins = [create(name) for name in ("selective_mixup", "selective_cutmix", "selective_mix", "mixup", "cutmix",
                                          "rand_augment", "trivial_augment", "random_erasing", "label_smoothing",
                                          "taxonomy_label_smoothing")]
    table.add(case, "Engine.run, 10 built-ins, an event none handles",
              time_call(engine_run(Engine(builtins), Event.BEFORE_BACKWARD), repeats=repeats),
              floor="floor: 10 bare function calls")
    composer = optional_import("composer")
    table.add(case, "composer Engine", None, note="composer not importable" if composer is None else
              "importable but not timed: its Engine needs a full composer State")


def _batch_rows(table: Table, device: str, size: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    species = torch.randint(1, 9, (size,), generator=g)
    batch = F.MixBatch(images=torch.rand(size, 3, 64, 64, generator=g).to(device),
                       targets={"taxa_L10": species.to(device), "taxa_L20": ((species + 1) // 2).to(device)})
    num_classes = {"taxa_L10": 9, "taxa_L20": 5}
    case = f"{device} B={size} 3x64x64 float32"
    gen = torch.Generator().manual_seed(1)

    def functional():
        ids = F.exclude_null_samples(batch.targets["taxa_L10"], batch.targets)
        perm = F.ingroup_permutation(ids, generator=gen)
        lam = float(F.sample_beta(0.8, shape=(1,), generator=gen)[0])
        return F.selective_mixup(batch, ids, lam, perm=perm, num_classes=num_classes, generator=gen)

    engine = Engine([create("selective_mixup", num_classes=num_classes)])
    state = State(batch=batch)

    def through_engine():
        state.batch = batch
        engine.run(Event.AFTER_DATALOADER, state)

    table.add(case, "floor: images.clone()", time_call(batch.images.clone, repeats=repeats, device=device))
    table.add(case, "F.selective_mixup (+ ids, perm, lam)", time_call(functional, repeats=repeats, device=device),
              floor="floor: images.clone()")
    table.add(case, "Engine.run(AFTER_DATALOADER) selective_mixup",
              time_call(through_engine, repeats=repeats, device=device), floor="F.selective_mixup (+ ids, perm, lam)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    table = Table("engine: per-event overhead, and one selective Mixup as an algorithm vs a functional call")
    _overhead_rows(table, args.repeats)
    for device in args.device:
        _batch_rows(table, device, 64 if args.quick else 128, args.repeats)
    table.emit(args.out, "engine")


if __name__ == "__main__":
    main()
