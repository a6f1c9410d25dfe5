"""GPT-1's task-specific input transformations (Radford et al. 2018, section 3.3 and figure 1).

Three tokens are added after the pretrained vocabulary: start, delimiter and extract (ids V, V + 1, V + 2 for a
tokenizer of V ids; the embedding table grows by three rows). Each example becomes one or more token sequences,
and the head reads the final hidden state at the extract token (the last token of each sequence):

  classification    [start] text [extract]
  entailment        [start] premise [delim] hypothesis [extract]
  similarity        [start] a [delim] b [extract] and [start] b [delim] a [extract] (final states added)
  multiple_choice   [start] context [delim] answer_i [extract] for each answer i (softmax over the answers)

Truncation rule, when a sequence is longer than the context: tokens are dropped from the end of the longest text
field (the earliest field on ties), one at a time, until it fits; the special tokens are always kept. With
`truncate=False` such an example is refused instead (the caller names its file and line).
"""

import dataclasses

from gptjax.configs.finetune import TASK_TYPES  # noqa: F401  (the input transformations)

NUM_SPECIAL = 3


@dataclasses.dataclass(frozen=True)
class Specials:
    start: int
    delim: int
    extract: int

    @classmethod
    def after(cls, vocab_size: int) -> "Specials":
        """The three tokens appended to a vocabulary of `vocab_size` ids."""
        return cls(vocab_size, vocab_size + 1, vocab_size + 2)


class TooLong(ValueError):
    """An example that does not fit the context and may not be truncated."""


def fit(fields: list[list[int]], budget: int, truncate: bool) -> list[list[int]]:
    """`fields` cut to at most `budget` tokens in total by the truncation rule above."""
    fields = [list(f) for f in fields]
    excess = sum(map(len, fields)) - budget
    if excess > 0 and not truncate:
        raise TooLong(f"{excess + budget} text tokens exceed the {budget} that the context leaves beside the "
                      f"special tokens by {excess}")
    if budget < len(fields):
        raise TooLong(f"the context leaves {budget} tokens for {len(fields)} text fields")
    while excess > 0:
        longest = max(range(len(fields)), key=lambda i: (len(fields[i]), -i))
        fields[longest].pop()
        excess -= 1
    return fields


def _join(s: Specials, a: list[int], b: list[int] | None, seq_len: int, truncate: bool) -> list[int]:
    if b is None:
        (a,) = fit([a], seq_len - 2, truncate)
        return [s.start, *a, s.extract]
    a, b = fit([a, b], seq_len - 3, truncate)
    return [s.start, *a, s.delim, *b, s.extract]


def transform(task_type: str, fields: list[list[int]], specials: Specials, seq_len: int,
              truncate: bool = True) -> list[list[int]]:
    """The token sequences of one example (one per choice; one for classification and entailment).

    `fields` are the tokenized text fields: [text]; [premise, hypothesis]; [a, b]; [context, answer_1, ...]."""
    if task_type == "classification":
        return [_join(specials, fields[0], None, seq_len, truncate)]
    if task_type == "entailment":
        return [_join(specials, fields[0], fields[1], seq_len, truncate)]
    if task_type == "similarity":
        a, b = fields
        return [_join(specials, a, b, seq_len, truncate), _join(specials, b, a, seq_len, truncate)]
    if task_type == "multiple_choice":
        context, answers = fields[0], fields[1:]
        return [_join(specials, context, ans, seq_len, truncate) for ans in answers]
    raise ValueError(f"unknown task type {task_type!r}")


def num_sequences(task_type: str, num_fields: int) -> int:
    """How many sequences (choices) one example becomes."""
    return {"classification": 1, "entailment": 1, "similarity": 2}.get(task_type, num_fields - 1)


def num_fields(task_type: str) -> int | None:
    """How many text fields the task type takes (None: two or more, for multiple choice)."""
    return {"classification": 1, "entailment": 2, "similarity": 2}.get(task_type)
