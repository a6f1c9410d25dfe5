"""A task is data plus a template: examples to score, a demonstration pool for K-shot prompts, and how a
demonstration is written.

Kinds (lm-eval's output types):
  multiple_choice  log-likelihood of each choice after the prompt: acc, acc_norm (divided by the choice's length
                   in characters, as lm-eval computes it) and, with `uncond_context`, GPT-3's acc_uncond (divided
                   by the choice's probability after `uncond_context`, for example "Answer:"). With `contexts`
                   (Winogrande's partial scoring) the choices are contexts and the continuation is shared.
  cloze            log-likelihood of the target: acc (every target token greedy) and perplexity (exp of minus
                   the mean log-likelihood), LAMBADA style.
  generate         greedy generation until a stop string: exact match and token F1 after SQuAD's normalisation,
                   the best over the accepted answers.
  perplexity       the documents' rolling log-likelihood: word and byte perplexity, bits per byte.

A K-shot prompt is the task description (if any), then K demonstrations drawn from the pool with
np.random.default_rng([seed, example index]) (never one equal to the example itself), then the example's query,
joined by the task's separator. An example may carry its own pool (`demos`): the synthetic in-context learning
task draws each example's demonstrations from its own mapping.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from gptjax.errors import DataError

KINDS = ("multiple_choice", "cloze", "generate", "perplexity")


@dataclasses.dataclass(frozen=True)
class Example:
    query: str  # the text the answer follows (perplexity: the whole document)
    choices: tuple[str, ...] = ()  # multiple_choice: the answers; with `contexts`: empty
    target: int | str = 0  # multiple_choice: index of the right choice or context; cloze: the answer text
    answers: tuple[str, ...] = ()  # generate: the accepted answers (the first is written in demonstrations)
    contexts: tuple[str, ...] = ()  # partial scoring: one query per option, `continuation` shared
    continuation: str = ""
    demos: tuple["Example", ...] = ()  # this example's own demonstration pool


@dataclasses.dataclass
class Task:
    name: str
    kind: str
    examples: Sequence[Example]
    demos: Sequence[Example] = ()
    description: str = ""
    separator: str = "\n\n"  # between demonstrations
    delimiter: str = " "  # between a query and its answer
    stop: tuple[str, ...] = ("\n",)  # generate
    max_new_tokens: int = 32  # generate
    uncond_context: str | None = None  # multiple_choice: GPT-3's unconditional normalisation
    chance: float | None = None  # accuracy of a uniform guess, for plots and tables

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"task {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.examples:
            raise DataError(f"task {self.name}: no examples")
        for i, ex in enumerate(self.examples):
            check_example(self.name, self.kind, ex, f"example {i}")
        for i, ex in enumerate(self.demos):
            check_example(self.name, self.kind, ex, f"demonstration {i}")

    def answer(self, ex: Example) -> str:
        """What a demonstration writes after its query (the delimiter included)."""
        if self.kind == "multiple_choice":
            return self.delimiter + (ex.continuation if ex.contexts else ex.choices[ex.target])
        if self.kind == "cloze":
            return self.delimiter + ex.target
        if self.kind == "generate":
            return self.delimiter + ex.answers[0]
        return ""

    def render(self, ex: Example) -> str:
        query = ex.contexts[ex.target] if ex.contexts else ex.query
        return query + self.answer(ex)

    def pool_size(self, ex: Example) -> int:
        return len(ex.demos) if ex.demos else len(self.demos)

    def prefix(self, index: int, k: int, seed: int) -> str:
        """Description and K demonstrations for example `index`: everything before its query."""
        ex = self.examples[index]
        pool = list(ex.demos) if ex.demos else [d for d in self.demos if d != ex]
        if k > len(pool):
            raise DataError(f"task {self.name}: {k}-shot needs {k} demonstrations, but the demonstration split "
                            f"has {len(pool)}" + (" (besides the example)" if not ex.demos else ""))
        parts = [self.description] if self.description else []
        if k:
            picks = np.random.default_rng([seed, index]).choice(len(pool), size=k, replace=False)
            parts += [self.render(pool[i]) for i in picks]
        return "".join(p + self.separator for p in parts)

    def prompt(self, index: int, k: int, seed: int) -> str:
        return self.prefix(index, k, seed) + self.examples[index].query


def check_example(task: str, kind: str, ex: Example, where: str) -> None:
    def bad(problem):
        raise DataError(f"task {task}: {where}: {problem}")

    if kind == "multiple_choice":
        options = ex.contexts or ex.choices
        if not options:
            bad("empty choices")
        if not isinstance(ex.target, (int, np.integer)) or not 0 <= ex.target < len(options):
            bad(f"target {ex.target!r} is not an index into its {len(options)} choices")
        if ex.contexts and not ex.continuation:
            bad("partial scoring needs a continuation")
    elif kind == "cloze" and (not isinstance(ex.target, str) or not ex.target):
        bad("empty target")
    elif kind == "generate" and not ex.answers:
        bad("no accepted answers")
    elif kind == "perplexity" and not ex.query:
        bad("empty document")
