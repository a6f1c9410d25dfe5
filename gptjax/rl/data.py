"""Prompts and comparisons for learning from preferences.

Prompts (`rl.prompts`): `plays` (the opening tokens of passages of the embedded plays: the training plays for
rollouts, the held-out plays of the genre task for evaluation), a JSONL file of {"prompt": ...}, or `tfds:NAME`
(the opening tokens of each record's `rl.prompt_field`, as the IMDB sentiment example starts from review openings).

Comparisons (`rl.comparisons`), one JSON object per line, either a pair or a ranking of K responses:
  {"prompt": "...", "chosen": "...", "rejected": "..."}
  {"prompt": "...", "responses": ["...", "...", "..."], "ranks": [0, 2, 1]}     (rank 0 is the best)
A missing field, a chosen response identical to the rejected one, and a tie are errors naming the line.
"""

import itertools

import numpy as np

from gptjax import files
from gptjax.errors import DataError
from gptjax.finetune import data as ft_data


def check_prompts(source: str, data_dir: str = "") -> None:
    """Raises the DataError that reading `rl.prompts` would, before any model is loaded: a JSONL file that is not
    there, empty, truncated or binary, or a TFDS dataset that is unknown, not prepared in `data_dir` or without a
    train split (nothing is downloaded)."""
    if source == "plays":
        return
    if source.startswith("tfds:"):
        ft_data.tfds_source(source[5:], "train", data_dir, "rl.prompts")
    elif not files.path(source).is_file():
        raise DataError(f"rl.prompts: {source}: no such file (plays, a JSONL file of prompts, or tfds:NAME)")
    else:
        files.read_jsonl(source)  # empty, truncated or binary: one line before any model is loaded


def read_prompts(source: str, split: str, field: str = "prompt", data_dir: str = "") -> list[str]:
    if source == "plays":
        return [r["text"] for _, r in ft_data.genre_records(split)]
    if source.startswith("tfds:"):
        recs = ft_data.read_tfds(source[5:], split, data_dir, "rl.prompts")
    else:
        recs = files.read_jsonl(source)
    out = []
    for where, rec in recs:
        text = ft_data.field(where, rec, field, "rl.prompt_field")
        if not str(text).strip():
            raise DataError(f"{where}: empty {field!r}")
        out.append(str(text))
    if not out:
        raise DataError(f"rl.prompts: {source} holds no prompts")
    return out


def encode_prompts(texts: list[str], tokenizer, prompt_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_NxP, mask_NxP): each prompt's first `prompt_tokens` tokens, left-padded (sampling's layout)."""
    ids = [t[:prompt_tokens] for t in tokenizer.encode_batch(texts)]
    keep = [i for i in ids if i]
    if len(keep) < len(ids):
        raise DataError(f"rl.prompts: {len(ids) - len(keep)} prompts are empty after tokenization")
    tokens = np.zeros((len(ids), prompt_tokens), np.int32)
    mask = np.zeros((len(ids), prompt_tokens), bool)
    for r, i in enumerate(ids):
        tokens[r, prompt_tokens - len(i):], mask[r, prompt_tokens - len(i):] = i, True
    return tokens, mask


def check_comparison(where: str, rec: dict) -> tuple[str, list[str], list[int]]:
    """(prompt, responses, ranks) of one record, or a DataError naming what is wrong with it."""
    if "prompt" not in rec:
        raise DataError(f"{where}: missing field 'prompt'")
    if "responses" in rec or "ranks" in rec:
        for key, other in (("responses", "ranks"), ("ranks", "responses")):
            if not isinstance(rec.get(key), list):
                raise DataError(f"{where}: missing field {key!r} (a list), needed with {other!r}")
        responses, ranks = [str(r) for r in rec["responses"]], rec["ranks"]
        if len(responses) != len(ranks) or len(responses) < 2:
            raise DataError(f"{where}: 'responses' and 'ranks' need the same length, two or more")
        if not all(isinstance(r, int) for r in ranks):
            raise DataError(f"{where}: 'ranks' must be integers (0 is the best)")
    else:
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise DataError(f"{where}: missing field {key!r}")
        responses, ranks = [str(rec["chosen"]), str(rec["rejected"])], [0, 1]
    for i, j in itertools.combinations(range(len(responses)), 2):
        if ranks[i] == ranks[j]:
            raise DataError(f"{where}: a tie: responses {i} and {j} share rank {ranks[i]}; a comparison needs a "
                            "strict preference (drop ties)")
        if responses[i] == responses[j]:
            what = "chosen and rejected" if "chosen" in rec else f"responses {i} and {j}"
            raise DataError(f"{where}: {what} are identical")
    return str(rec["prompt"]), responses, list(ranks)


def read_comparisons(path: str) -> list[tuple[str, str, list[str], list[int]]]:
    recs = [(where, *check_comparison(where, rec)) for where, rec in files.read_jsonl(path)]
    if not recs:
        raise DataError(f"rl.comparisons: {path} holds no comparisons")
    return recs


def encode_comparisons(recs, tokenizer, prompt_tokens: int, response_tokens: int) -> dict:
    """Arrays of M prompts with up to K responses each: prompt_MxP, prompt_mask_MxP, response_MxKxN, lengths_MxK,
    ranks_MxK, valid_MxK. Prompts keep their last `prompt_tokens` tokens (the end is what the response continues),
    responses their first `response_tokens`."""
    K = max(len(r[2]) for r in recs)
    M = len(recs)
    prompt_ids = [ids[-prompt_tokens:] for ids in tokenizer.encode_batch([r[1] for r in recs])]
    out = {"prompt": np.zeros((M, prompt_tokens), np.int32), "prompt_mask": np.zeros((M, prompt_tokens), bool),
           "response": np.zeros((M, K, response_tokens), np.int32), "lengths": np.ones((M, K), np.int32),
           "ranks": np.zeros((M, K), np.int32), "valid": np.zeros((M, K), np.float32)}
    for m, ((where, _, responses, ranks), p) in enumerate(zip(recs, prompt_ids)):
        if not p:
            raise DataError(f"{where}: the prompt is empty after tokenization")
        out["prompt"][m, prompt_tokens - len(p):], out["prompt_mask"][m, prompt_tokens - len(p):] = p, True
        for k, ids in enumerate(tokenizer.encode_batch(responses)):
            ids = ids[:response_tokens]
            if not ids:
                raise DataError(f"{where}: response {k} is empty after tokenization")
            out["response"][m, k, :len(ids)], out["lengths"][m, k] = ids, len(ids)
            out["ranks"][m, k], out["valid"][m, k] = ranks[k], 1.0
    return out


def pairs(enc: dict) -> dict:
    """Every strictly ordered pair of each prompt's responses, as rows (prompt, chosen, rejected): DPO's data."""
    rows = []
    for m in range(len(enc["prompt"])):
        k_valid = [k for k in range(enc["ranks"].shape[1]) if enc["valid"][m, k]]
        for i, j in itertools.combinations(k_valid, 2):
            better, worse = (i, j) if enc["ranks"][m, i] < enc["ranks"][m, j] else (j, i)
            rows.append((m, better, worse))
    m, c, r = (np.asarray(x) for x in zip(*rows))
    return {"prompt": enc["prompt"][m], "prompt_mask": enc["prompt_mask"][m],
            "chosen": enc["response"][m, c], "chosen_lengths": enc["lengths"][m, c],
            "rejected": enc["response"][m, r], "rejected_lengths": enc["lengths"][m, r]}


def write_comparisons(path, prompts: list[str], responses: list[list[str]], scores: np.ndarray) -> int:
    """Comparisons labelled by a scorer (simulated labellers): each prompt's responses ranked by score, best first.
    Prompts whose responses tie in score or repeat a text are left out (a labeller could not rank them). Returns
    how many were written."""
    import json

    lines = []
    for prompt, texts, s in zip(prompts, responses, scores):
        if len(set(texts)) < len(texts) or len(set(np.round(s, 6))) < len(s):
            continue
        order = np.argsort(-np.asarray(s), kind="stable")
        ranks = np.empty(len(s), int)
        ranks[order] = np.arange(len(s))
        lines.append(json.dumps({"prompt": prompt, "responses": texts, "ranks": ranks.tolist(),
                                 "scores": [round(float(x), 6) for x in s]}))
    with files.writing(path, "the labelled comparisons"):
        files.write_text(path, "\n".join(lines) + "\n")
    return len(lines)
