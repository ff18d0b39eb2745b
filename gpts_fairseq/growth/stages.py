"""``--grow-stages``: parsed and checked against the target model before training starts."""

from __future__ import annotations

from dataclasses import dataclass

OPTION = "--grow-stages"
DIMENSIONS = ("layers", "ffn", "tokens")
SYNTAX = "'START:layers=L,ffn=F,tokens=T;START:...' (first START 0, starts increasing; an omitted size keeps " \
         "the previous stage's, or the target's in the first stage)"


@dataclass(frozen=True)
class Stage:
    """The active sub-network from update ``start`` on: the first ``layers`` encoder layers,
    the first ``ffn`` FFN units of each, training rows of ``tokens`` tokens."""

    start: int
    layers: int
    ffn: int
    tokens: int

    def size(self) -> dict:
        return {name: getattr(self, name) for name in DIMENSIONS}


def parse_stages(text: str, *, layers: int, ffn: int, tokens: int) -> list[Stage]:
    """The stages of ``text`` for a target of ``layers`` x ``ffn`` and ``tokens`` per row.

    An empty string is one stage: the target from update 0 (plain RoBERTa). Sizes may only
    grow, never beyond the target; every stage after the first must grow something. A bad
    string raises ValueError naming --grow-stages, the offending part and the valid range.
    """
    target = Stage(0, layers, ffn, tokens)
    text = (text or "").strip()
    if not text:
        return [target]
    stages: list[Stage] = []
    for part in text.split(";"):
        part = part.strip()
        start_text, colon, spec = part.partition(":")
        try:
            start = int(start_text)
        except ValueError:
            start = -1
        if not colon or start < 0:
            raise ValueError(f"{OPTION}: bad stage {part!r}: it must start with the update, an integer >= 0, and "
                             f"a colon; syntax {SYNTAX}")
        sizes = (stages[-1] if stages else target).size()
        for item in filter(None, (item.strip() for item in spec.split(","))):
            name, equals, value = item.partition("=")
            name = name.strip()
            if name not in DIMENSIONS or not equals:
                raise ValueError(f"{OPTION}: bad size {item!r} in stage {part!r}; sizes are "
                                 f"{', '.join(d + '=N' for d in DIMENSIONS)}")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise ValueError(f"{OPTION}: {name} must be an integer, got {value.strip()!r} in stage {part!r}") from None
            limit = getattr(target, name)
            if not 1 <= sizes[name] <= limit:
                raise ValueError(f"{OPTION}: {name} must be in [1, {limit}] (the target model's), got "
                                 f"{sizes[name]} in stage {part!r}")
        stage = Stage(start, **sizes)
        if not stages:
            if start != 0:
                raise ValueError(f"{OPTION}: the first stage must start at update 0, got {start}")
        else:
            previous = stages[-1]
            if start <= previous.start:
                raise ValueError(f"{OPTION}: stage starts must increase, got {start} after {previous.start}")
            shrunk = [d for d in DIMENSIONS if getattr(stage, d) < getattr(previous, d)]
            if shrunk:
                raise ValueError(f"{OPTION}: sizes may only grow; {', '.join(shrunk)} shrinks at update {start}")
            if stage.size() == previous.size():
                raise ValueError(f"{OPTION}: the stage at update {start} grows nothing")
        stages.append(stage)
    return stages


def stage_index_at(stages: list[Stage], update: int) -> int:
    """Index of the stage in force for the update that follows ``update`` finished updates."""
    return max(i for i, stage in enumerate(stages) if stage.start <= update)


def unreached_stages(stages: list[Stage], max_update: int) -> list[Stage]:
    """The stages a run of ``max_update`` updates (0 = no limit) never enters: those that start
    at or after it."""
    return [stage for stage in stages if 0 < max_update <= stage.start]
