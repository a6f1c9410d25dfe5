"""Synthetic sequences where in-context learning pays, and a control without that structure.

An episode is a mapping drawn fresh for that sequence: `m` items (capital letters) each get a random label (a
digit), and the episode writes `PAIRS` item-label pairs drawn from the mapping, "K3 B7 K3 Q0 B7 ...", ending in a
newline. No mapping recurs on purpose, so the weights cannot store one: the label of an item can only be read off
an earlier pair of the same episode (the induction-head / "data distributional properties" setting).

The control episode has the same items, label frequencies, lengths and format, but every pair's label is drawn
afresh, so nothing earlier in the sequence tells the next label.

`gptjax.evals.tasks.icl` builds its evaluation episodes from `episode_mapping` with other seeds (mappings never
seen in training).
"""

import functools

import numpy as np

ITEMS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LABELS = "0123456789"
PAIRS = 20  # pairs per training episode
ITEMS_PER_EPISODE = (2, 3, 4)  # m, uniform
EPISODES = {"train": 60_000, "validation": 2_000}
SPLIT_SEEDS = {"train": 1, "validation": 2}  # evaluation uses seeds >= 1000
SOURCES = ("synthetic:icl", "synthetic:icl_control")
VERSION = "1"  # of the generator: bump it when episodes change (keys the tokenized-data cache)


def episode_mapping(rng: np.random.Generator, m: int) -> dict[str, str]:
    """m distinct items, each with a uniformly random label (labels may repeat)."""
    items = rng.choice(len(ITEMS), size=m, replace=False)
    return {ITEMS[i]: LABELS[rng.integers(len(LABELS))] for i in items}


def episode(rng: np.random.Generator, control: bool) -> str:
    mapping = episode_mapping(rng, int(rng.choice(ITEMS_PER_EPISODE)))
    items = list(mapping)
    pairs = []
    for i in rng.integers(len(items), size=PAIRS):
        item = items[i]
        label = LABELS[rng.integers(len(LABELS))] if control else mapping[item]
        pairs.append(item + label)
    return " ".join(pairs) + "\n"


@functools.lru_cache(maxsize=2)
def documents(source: str) -> dict[str, list[str]]:
    """Split -> one document of concatenated episodes, for `data.source` = synthetic:icl | synthetic:icl_control
    (generated once per process: the same every time; callers must not change it)."""
    if source not in SOURCES:
        raise ValueError(f"{source!r} is not one of {', '.join(SOURCES)}")
    control = source.endswith("_control")
    docs = {}
    for split, n in EPISODES.items():
        rng = np.random.default_rng(SPLIT_SEEDS[split])
        docs[split] = ["".join(episode(rng, control) for _ in range(n))]
    return docs
