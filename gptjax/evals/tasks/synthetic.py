"""Tasks generated here, offline: GPT-3's synthetic probes (section 3.9.1 and 3.9.2 of Brown et al. 2020) and the
in-context learning probe of `experiments/icl/`.

Arithmetic: "Question: What is 48 plus 76?\nAnswer:" -> " 124", operands drawn uniformly with n digits (2-5 for
addition and subtraction, 2 for multiplication), scored as lm-eval scores its arithmetic tasks (a cloze: correct
when every answer token is the greedy one).
Word scrambling over the 10,000 most frequent 4-15 letter words of the embedded Shakespeare: cycled letters, anagrams
keeping the first and last letter (A1) or the first and last two (A2), a random punctuation or space between the
letters (random insertion), reversed words; "Please unscramble the letters into a word, and write that word:\n
ttrehpecisaom =" -> " ..." (cloze). Evaluation words and demonstration words are disjoint (odd and even ranks).
"""

import collections
import functools
import re
import string

import numpy as np

from gptjax.evals.tasks.base import Example, Task

N_EVAL, N_DEMOS = 500, 200

ARITHMETIC = {  # name: (digits, operator word, function)
    "arithmetic_2da": (2, "plus", lambda a, b: a + b),
    "arithmetic_3da": (3, "plus", lambda a, b: a + b),
    "arithmetic_4da": (4, "plus", lambda a, b: a + b),
    "arithmetic_5da": (5, "plus", lambda a, b: a + b),
    "arithmetic_2ds": (2, "minus", lambda a, b: a - b),
    "arithmetic_3ds": (3, "minus", lambda a, b: a - b),
    "arithmetic_4ds": (4, "minus", lambda a, b: a - b),
    "arithmetic_5ds": (5, "minus", lambda a, b: a - b),
    "arithmetic_2dm": (2, "times", lambda a, b: a * b),
}


def arithmetic(name: str) -> Task:
    digits, word, fn = ARITHMETIC[name]

    def draw(seed, n, avoid=frozenset()):
        rng, out, seen = np.random.default_rng(seed), [], set(avoid)
        while len(out) < n:
            a, b = (int(x) for x in rng.integers(10 ** (digits - 1), 10 ** digits, size=2))
            if (a, b) in seen:
                continue
            seen.add((a, b))
            out.append(Example(f"Question: What is {a} {word} {b}?\nAnswer:", target=str(fn(a, b))))
        return out, seen

    examples, seen = draw([digits, len(word), 1], N_EVAL)
    demos, _ = draw([digits, len(word), 2], N_DEMOS, avoid=seen)
    return Task(name, "cloze", examples, demos, separator="\n\n", delimiter=" ")


@functools.cache
def word_list(n: int = 10_000) -> tuple[str, ...]:
    """The n most frequent lower-case words of 4-15 letters in the embedded plays, most frequent first."""
    from gptjax import data

    counts = collections.Counter()
    for text in data.shakespeare_plays().values():
        counts.update(w for w in re.findall(r"(?<![A-Za-z'])[a-z]+(?![A-Za-z'])", text) if 4 <= len(w) <= 15)
    return tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _cycle(word, rng):
    k = int(rng.integers(1, len(word)))
    return word[k:] + word[:k]


def _shuffle_inside(word, rng, keep):
    middle = list(word[keep:len(word) - keep])
    for _ in range(10):  # a scramble that differs from the word when the middle allows one
        rng.shuffle(middle)
        if "".join(middle) != word[keep:len(word) - keep] or len(set(middle)) < 2:
            break
    return word[:keep] + "".join(middle) + word[len(word) - keep:]


def _insert(word, rng):
    marks = string.punctuation + " "
    return "".join(c + (marks[int(rng.integers(len(marks)))] if i < len(word) - 1 else "")
                   for i, c in enumerate(word))


SCRAMBLES = {
    "cycle_letters": _cycle,
    "anagrams1": lambda w, rng: _shuffle_inside(w, rng, 1),
    "anagrams2": lambda w, rng: _shuffle_inside(w, rng, 2),
    "random_insertion": _insert,
    "reversed_words": lambda w, rng: w[::-1],
}
UNSCRAMBLE = "Please unscramble the letters into a word, and write that word:\n"


def scramble(name: str) -> Task:
    fn = SCRAMBLES[name]
    words = word_list()
    if name.startswith("anagrams"):  # a middle of at least two letters to shuffle
        words = tuple(w for w in words if len(w) >= (4 if name == "anagrams1" else 6))

    def make(pool, seed, n):
        rng = np.random.default_rng([seed, len(name)])
        picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        return [Example(f"{UNSCRAMBLE}{fn(pool[i], rng)} =", target=pool[i]) for i in picks]

    return Task(name, "cloze", make(words[1::2], 1, N_EVAL), make(words[0::2], 2, N_DEMOS), separator="\n\n",
                delimiter=" ")


def icl_mapping(name: str = "icl_mapping", items_per_episode: int = 2, pool: int = 32, n: int = 400) -> Task:
    """The in-context learning probe: each example is a fresh item -> label mapping (`gptjax.datasets.icl`, seeds
    never used in training) with its own pool of `pool` demonstrations drawn from the mapping; the query is one of
    its items and the choices are the ten labels (chance 10%). Prompt for K=2: "K3 B7 K" -> "3"."""
    from gptjax.datasets import icl

    rng = np.random.default_rng(1000 + items_per_episode)
    examples = []
    for _ in range(n):
        mapping = icl.episode_mapping(rng, items_per_episode)
        items = list(mapping)
        demos = tuple(Example(it, choices=tuple(icl.LABELS), target=icl.LABELS.index(mapping[it]))
                      for it in (items[int(j)] for j in rng.integers(len(items), size=pool)))
        query = items[int(rng.integers(len(items)))]
        examples.append(Example(query, choices=tuple(icl.LABELS), target=icl.LABELS.index(mapping[query]),
                                demos=demos))
    return Task(name, "multiple_choice", examples, separator=" ", delimiter="", chance=1 / len(icl.LABELS))
