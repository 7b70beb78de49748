"""Conditions for evaluating a conditional generator: drawn as the training set's labels are distributed.

A conditional generator (:mod:`models.conditions`) makes no image without a condition, so an evaluation
has to choose one per image. Distribution metrics compare the generated set with real images whose
labels follow the training set's frequencies (hands and legs far outnumber hips and shoulders in
FracAtlas), so the conditions are drawn from the same joint distribution of the condition fields: the
training dataset's manifest (rows with a value for every field, as conditional training counts them),
or, without it, the model card's ``conditions.images_per_combination``. Ravuri and Vinyals 2019 (§3,
Classification Accuracy Score) sample class labels the same way.

Every image's condition is a function of its seed alone, from a random stream independent of the
latent's (``models.sampling`` draws ``z`` from ``RandomState(seed)``; conditions come from
``default_rng([STREAM, seed])``): the same seed gets the same condition in any batch, at any ``n``, at
every training snapshot. For TSTR a classifier task asks for given labels of one field (body part); the
other fields are then drawn from the training set's distribution given that label, again per seed.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from models.conditions import ConditionError, ConditionSpace, space_of

# Mixed into each seed's random stream so condition draws are independent of the latent z (seeded by seed alone).
STREAM = 0x5C0D


class ConditionSampler:
    """Per-seed conditions with the frequencies of ``counts`` ({(value per field, ...): images})."""

    def __init__(self, space: ConditionSpace, counts: Mapping[tuple[str, ...], int], source: str):
        self.space = space
        known = [(combo, int(n)) for combo, n in sorted(counts.items()) if n > 0]
        if not known:
            raise ConditionError(f"no training image has a condition this model knows ({space.describe()}); cannot draw conditions")
        self.combos = [combo for combo, _ in known]
        self.weights = np.array([n for _, n in known], np.float64)
        self.source = source

    @classmethod
    def from_rows(cls, space: ConditionSpace, rows: Iterable[Mapping[str, Any]], source: str = "the training dataset's manifest") -> "ConditionSampler":
        """Counts from manifest rows; rows lacking a field, or with a value the model does not know, are left out."""
        counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        for row in rows:
            try:
                cond = space.normalize({name: str(row.get(name) or "") for name in space.names})
            except ConditionError:
                continue
            counts[tuple(cond[name] for name in space.names)] += 1
        return cls(space, counts, source)

    @classmethod
    def from_card(cls, space: ConditionSpace, card: Mapping[str, Any]) -> "ConditionSampler":
        """Counts from a model card's ``conditions.images_per_combination`` ({"HAND AP": 40, ...})."""
        per = ((card.get("conditions") or {}).get("images_per_combination") or {}) if isinstance(card.get("conditions"), Mapping) else {}
        counts: dict[tuple[str, ...], int] = {}
        for key, n in per.items():
            try:
                cond = space.normalize(dict(zip(space.names, str(key).split(" "))))
            except ConditionError:
                continue
            counts[tuple(cond[name] for name in space.names)] = int(n)
        return cls(space, counts, "the model card's images per condition")

    @property
    def frequencies(self) -> dict[str, float]:
        p = self.weights / self.weights.sum()
        return {" ".join(c): float(v) for c, v in zip(self.combos, p)}

    def _pick(self, seed: int, allowed: np.ndarray) -> dict[str, str]:
        w = np.where(allowed, self.weights, 0.0)
        u = np.random.default_rng([STREAM, int(seed)]).random()
        i = int(np.searchsorted(np.cumsum(w) / w.sum(), u, side="right"))
        return dict(zip(self.space.names, self.combos[min(i, len(self.combos) - 1)]))

    def conditions(self, seeds: Sequence[int]) -> list[dict[str, str]]:
        """One condition per seed, with the training frequencies (deterministic per seed)."""
        everything = np.ones(len(self.combos), bool)
        return [self._pick(s, everything) for s in seeds]

    def conditions_given(self, field: str, values: Sequence[str], seeds: Sequence[int]) -> list[dict[str, str]]:
        """Conditions whose ``field`` is ``values[i]``; the other fields drawn given it (training frequencies)."""
        if len(values) != len(seeds):
            raise ValueError(f"{len(values)} labels for {len(seeds)} seeds")
        k = self.space.names.index(field) if field in self.space.names else -1
        if k < 0:
            raise ConditionError(f"this model has no condition {field!r}; its conditions: {self.space.describe()}")
        out = []
        for value, seed in zip(values, seeds):
            wanted = self.space.normalize({**dict(zip(self.space.names, self.combos[0])), field: value})[field]
            allowed = np.array([c[k] == wanted for c in self.combos])
            if not allowed.any():
                raise ConditionError(f"no training image has {field} {wanted}: cannot draw the other conditions for it")
            out.append(self._pick(seed, allowed))
        return out

    def describe(self) -> dict[str, Any]:
        return {"fields": list(self.space.names), "source": self.source, "frequencies": self.frequencies,
                "draw": "per seed, numpy default_rng([0x5C0D, seed]) (independent of the latent's RandomState(seed))"}


def sampler_for(G: torch.nn.Module, rows: Iterable[Mapping[str, Any]] | None = None, card: Mapping[str, Any] | None = None) -> ConditionSampler | None:
    """The sampler for a generator: None when it is unconditional; from the training manifest ``rows``
    when they hold labels the model knows, else from the ``card``'s counts. Raises ConditionError when
    neither gives any."""
    space = space_of(G)
    if space is None:
        return None
    if rows is not None:
        try:
            return ConditionSampler.from_rows(space, rows)
        except ConditionError:
            if card is None:
                raise
    if card is not None:
        return ConditionSampler.from_card(space, card)
    raise ConditionError(f"a conditional model ({space.describe()}) needs the training set's labels or its model card's counts to draw conditions")
