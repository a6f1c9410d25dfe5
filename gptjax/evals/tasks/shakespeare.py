"""Two tasks from the held-out Shakespeare plays (the validation split of the embedded source: every 10th play in
title order, `gptjax.datasets.shakespeare.plays.is_validation`); demonstrations come from the training plays.

shakespeare_last_word (cloze, LAMBADA style): a speech of at least 12 words, "NAME:\\n..." up to its last word;
  the target is that word (its trailing punctuation dropped).
shakespeare_next_line (multiple choice): a speech's first lines (at least one); which of four lines comes next,
  the three wrong ones drawn from other speeches of the same play.
"""

import functools
import re

import numpy as np

from gptjax.evals.tasks.base import Example, Task

N_EVAL, N_DEMOS = 500, 200


@functools.cache
def speeches(validation: bool) -> tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...]:
    """(play title, ((speaker, verse lines), ...)) of the held-out (or training) plays; stage directions dropped."""
    from gptjax import data
    from gptjax.datasets.shakespeare import plays

    out = []
    for i, (title, script) in enumerate(data.shakespeare_plays().items()):
        if plays.is_validation(i) != validation:
            continue
        found = []
        for block in script.split("\n\n"):
            lines = block.split("\n")
            if len(lines) < 2 or not re.fullmatch(r"[A-Z][A-Z .'&-]*:", lines[0]):
                continue
            verse = tuple(ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("["))
            if verse:
                found.append((lines[0][:-1], verse))
        out.append((title, tuple(found)))
    return tuple(out)


def _last_word_examples(validation: bool, n: int, seed: int) -> list[Example]:
    cands = []
    for _, play in speeches(validation):
        for speaker, verse in play:
            text = f"{speaker}:\n" + "\n".join(verse)
            if len(text.split()) < 13:
                continue
            m = re.search(r"([A-Za-z']+)[^A-Za-z']*$", text)
            if m and m.start(1) > len(speaker) + 2 and len(m[1]) > 1:
                cands.append(Example(text[:m.start(1)], target=m[1]))
    rng = np.random.default_rng(seed)
    return [cands[i] for i in sorted(rng.choice(len(cands), size=min(n, len(cands)), replace=False))]


def _next_line_examples(validation: bool, n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    cands = []
    for _, play in speeches(validation):
        lines = [ln for _, verse in play for ln in verse]
        for s, (speaker, verse) in enumerate(play):
            if len(verse) < 2:
                continue
            j = int(rng.integers(1, len(verse)))
            right = verse[j]
            wrong = set()
            while len(wrong) < 3:  # lines of other speeches of the same play
                line = lines[int(rng.integers(len(lines)))]
                if line not in verse and line != right:
                    wrong.add(line)
            choices = [right] + sorted(wrong)
            order = rng.permutation(4)
            query = f"{speaker}:\n" + "\n".join(verse[:j])
            cands.append(Example(query, choices=tuple(choices[o] for o in order),
                                 target=int(np.argmax(order == 0))))
    return [cands[i] for i in sorted(rng.choice(len(cands), size=min(n, len(cands)), replace=False))]


def last_word(name: str = "shakespeare_last_word") -> Task:
    return Task(name, "cloze", _last_word_examples(True, N_EVAL, 1), _last_word_examples(False, N_DEMOS, 2),
                separator="\n\n", delimiter="")


def next_line(name: str = "shakespeare_next_line") -> Task:
    return Task(name, "multiple_choice", _next_line_examples(True, N_EVAL, 1), _next_line_examples(False, N_DEMOS, 2),
                separator="\n\n", delimiter="\n", chance=0.25)
