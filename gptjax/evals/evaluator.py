"""Runs a task at K shots with a Scorer: builds the prompts, sends every request of the task in one call (so
they are sorted and bucketed together), and computes the task's metrics."""

import collections
import math
import re
import string

import numpy as np

from gptjax.errors import DataError
from gptjax.evals.scoring import Scorer
from gptjax.evals.tasks.base import Task

# The metric each task kind is plotted and tabled by.
MAIN_METRIC = {"multiple_choice": "acc", "cloze": "acc", "generate": "exact_match", "perplexity": "bits_per_byte"}


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if not pred or not gold:
        return float(pred == gold)
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def multiple_choice_metrics(lls, choices, target: int, lls_uncond=None) -> dict[str, float]:
    """acc, acc_norm (log-likelihood divided by the choice's length in characters, as lm-eval) and, given the
    unconditional log-likelihoods, acc_uncond (GPT-3: log P(choice | prompt) - log P(choice | answer context))."""
    lls = np.asarray(lls, np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    out = {"acc": float(np.argmax(lls) == target), "acc_norm": float(np.argmax(lls / lengths) == target)}
    if lls_uncond is not None:
        out["acc_uncond"] = float(np.argmax(lls - np.asarray(lls_uncond, np.float64)) == target)
    return out


def _check_vocab(scorer: Scorer, task: Task, text: str) -> None:
    try:
        scorer.tokenizer.encode(text)
    except ValueError as e:  # a character tokenizer meets a character it does not have
        raise DataError(f"task {task.name}: the model's tokenizer cannot encode it: {e}") from e


def evaluate(scorer: Scorer, task: Task, k: int, seed: int = 0, limit: int = 0) -> dict[str, float]:
    """Metrics of `task` at `k` shots (the first `limit` examples when limit > 0), plus `n`, the examples scored."""
    indices = range(min(limit, len(task.examples)) if limit else len(task.examples))
    if task.kind == "perplexity":
        if k:
            raise DataError(f"task {task.name}: a perplexity task takes no demonstrations (shots must be 0)")
        docs = [task.examples[i].query for i in indices]
        for d in docs[:1]:
            _check_vocab(scorer, task, d)
        lls = scorer.loglikelihood_rolling(docs)
        ll = sum(lls)
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        words = sum(len(re.split(r"\s+", d.strip())) for d in docs)
        return {"word_perplexity": math.exp(-ll / words), "byte_perplexity": math.exp(-ll / nbytes),
                "bits_per_byte": -ll / nbytes / math.log(2), "n": len(docs)}

    prefixes = [task.prefix(i, k, seed) for i in indices]
    examples = [task.examples[i] for i in indices]
    _check_vocab(scorer, task, prefixes[0] + task.render(examples[0]))

    if task.kind == "generate":
        outs = scorer.generate_until([(p + ex.query, task.stop, task.max_new_tokens)
                                      for p, ex in zip(prefixes, examples)])
        em = [max(float(normalize_answer(o) == normalize_answer(a)) for a in ex.answers)
              for o, ex in zip(outs, examples)]
        f1 = [max(token_f1(o, a) for a in ex.answers) for o, ex in zip(outs, examples)]
        return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1)), "n": len(examples)}

    requests, spans = [], []
    for p, ex in zip(prefixes, examples):
        start = len(requests)
        if task.kind == "cloze":
            requests.append((p + ex.query, task.delimiter + ex.target))
        elif ex.contexts:
            requests += [(p + c, task.delimiter + ex.continuation) for c in ex.contexts]
        else:
            requests += [(p + ex.query, task.delimiter + c) for c in ex.choices]
            if task.uncond_context is not None:
                requests += [(task.uncond_context, task.delimiter + c) for c in ex.choices]
        spans.append((start, len(requests)))
    results = scorer.loglikelihood(requests)

    if task.kind == "cloze":
        lls = np.array([results[s][0] for s, _ in spans])
        acc = [results[s][1] for s, _ in spans]
        return {"acc": float(np.mean(acc)), "perplexity": float(np.exp(-lls.mean())), "n": len(examples)}
    rows = []
    for (s, e), ex in zip(spans, examples):
        lls = [r[0] for r in results[s:e]]
        options = ex.contexts or ex.choices
        uncond = None
        if task.uncond_context is not None and not ex.contexts:
            lls, uncond = lls[:len(options)], lls[len(options):]
        choices = [ex.continuation] * len(options) if ex.contexts else ex.choices
        rows.append(multiple_choice_metrics(lls, choices, int(ex.target), uncond))
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    out["n"] = len(examples)
    return out
