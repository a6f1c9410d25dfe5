"""The standard benchmarks, with lm-eval's prompts, read from local files in each benchmark's own release format
or from a prepared TFDS dataset (array_record, read without TensorFlow).

Give the evaluation file as `path=` and optionally a demonstration file as `demos=` (without one, demonstrations
come from the evaluation file, never the example itself):
`hellaswag:path=hellaswag_val.jsonl,demos=hellaswag_train.jsonl`.
Without `path`, the task reads TFDS dataset `tfds=` (default below) split `split=` (and `demo_split=`) from
`data_dir=` or TFDS's default directory, where it must already be prepared. Nothing here downloads: a missing file
or an unprepared dataset is a DataError that names it and where the benchmark's release file comes from (`RELEASES`).
Formats:

  lambada        LAMBADA (OpenAI's jsonl): {"text"}; the last word is the cloze target.
  hellaswag      HellaSwag jsonl: {"ctx_a", "ctx_b", "activity_label", "endings", "label"}.
  piqa           PIQA jsonl {"goal", "sol1", "sol2"} with "label" in the row or in the release's labels file
                 (`labels=valid-labels.lst`, one 0/1 per line).
  arc_easy, arc_challenge   ARC jsonl: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}.
  winogrande     Winogrande jsonl: {"sentence" (with one "_"), "option1", "option2", "answer": "1" | "2"};
                 partial scoring (the options are contexts, the rest of the sentence the shared continuation).
  storycloze     Story Cloze csv: InputSentence1-4, RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2,
                 AnswerRightEnding.
  boolq          BoolQ jsonl: {"question", "passage", "answer": true | false}.
  copa           COPA (SuperGLUE jsonl): {"premise", "choice1", "choice2", "question": "cause" | "effect", "label"}.
  triviaqa       TriviaQA json {"Data": [{"Question", "Answer": {"Aliases", "Value"}}]} or jsonl
                 {"question", "answer": {"aliases", "value"}}; greedy generation, exact match and F1.
"""

import csv
import io
import os
import re

from gptjax import files
from gptjax.errors import DataError
from gptjax.evals.tasks.base import Example, Task

# name: (kind, default TFDS name, default split, default demonstration split)
BENCHMARKS = {
    "lambada": ("cloze", "lambada", "test", "test"),
    "hellaswag": ("multiple_choice", "hellaswag", "validation", "train"),
    "piqa": ("multiple_choice", "piqa", "validation", "train"),
    "arc_easy": ("multiple_choice", "ai2_arc/ARC-Easy", "test", "train"),
    "arc_challenge": ("multiple_choice", "ai2_arc/ARC-Challenge", "test", "train"),
    "winogrande": ("multiple_choice", "winogrande", "validation", "train"),
    "storycloze": ("multiple_choice", "story_cloze/2016", "validation", "validation"),
    "boolq": ("multiple_choice", "super_glue/boolq", "validation", "train"),
    "copa": ("multiple_choice", "super_glue/copa", "validation", "train"),
    "triviaqa": ("generate", "trivia_qa/rc.nocontext", "validation", "train"),
}


# Where each benchmark's release files come from, for the error that a file or a prepared dataset is missing.
RELEASES = {
    "lambada": "OpenAI's lambada_test.jsonl, https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
    "hellaswag": "hellaswag_val.jsonl and hellaswag_train.jsonl, https://github.com/rowanz/hellaswag/tree/master/data",
    "piqa": "valid.jsonl and valid-labels.lst, https://yonatanbisk.com/piqa/data/",
    "arc_easy": "ARC-Easy/ARC-Easy-Test.jsonl and -Train.jsonl in "
                "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip",
    "arc_challenge": "ARC-Challenge/ARC-Challenge-Test.jsonl and -Train.jsonl in "
                     "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip",
    "winogrande": "dev.jsonl in https://storage.googleapis.com/ai2-mosaic/public/winogrande/winogrande_1.1.zip",
    "storycloze": "the 2016 validation csv of the Story Cloze Test, on request at "
                  "https://cs.rochester.edu/nlp/rocstories/",
    "boolq": "dev.jsonl, https://github.com/google-research-datasets/boolean-questions",
    "copa": "val.jsonl in https://dl.fbaipublicfiles.com/glue/superglue/data/v2/COPA.zip",
    "triviaqa": "qa/wikipedia-dev.json in https://nlp.cs.washington.edu/triviaqa/data/triviaqa-rc.tar.gz",
}


def _release(name: str) -> str:
    return f"{name}'s release file: {RELEASES[name]}; docs/evals.md lists every benchmark's files"


class _Row(dict):
    """A record; a missing field is a DataError naming the file, the record and the field."""

    def __init__(self, data, where):
        super().__init__(data)
        self.where = where

    def __missing__(self, key):
        raise DataError(f"{self.where}: missing field {key!r}")


def _check_file(name: str, path: str) -> str:
    """`path` with ~ expanded; a DataError naming it and where the benchmark's file comes from if it is missing."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path} ({_release(name)})")
    return path


def _read_rows(path: str) -> list[_Row]:
    """The records of a release file (.csv, .json or .jsonl); a file that is empty, truncated, binary or of another
    kind is one DataError naming it."""
    path = os.path.expanduser(path)
    if path.endswith(".csv"):
        text = files.read_text(path, expected="a CSV file")
        try:
            rows = [_Row(r, f"{path} row {i + 2}") for i, r in enumerate(csv.DictReader(io.StringIO(text)))]
        except csv.Error as e:
            raise DataError(f"{path}: not a CSV file ({e})") from None
        short = next((r for r in rows if None in r or None in r.values()), None)  # csv fills a short row with None
        if short is not None:
            raise DataError(f"{short.where}: {len([v for v in short.values() if v is not None])} fields where the "
                            f"header has {len([k for k in short if k is not None])}"
                            + (" (the file ends in this row: it is truncated)" if short is rows[-1] else ""))
    elif path.endswith(".json"):
        data = files.parse_json(files.read_text(path, expected="a JSON file"), path)
        rows = data["Data"] if isinstance(data, dict) and "Data" in data else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a list of records or {{'Data': [...]}}")
        rows = [_Row(r, f"{path} record {i}") for i, r in enumerate(rows)]
    else:
        return [_Row(row, where) for where, row in files.read_jsonl(path)]
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def _decode(x):
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, dict):
        return {k: _decode(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return _decode(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_decode(v) for v in x]
    return x


# TFDS feature names -> the release format's fields, where they differ.
def _from_tfds(name: str, r: dict) -> dict:
    if name == "hellaswag":  # TFDS keeps only the joined context: lm-eval's capitalised ctx_b is not recoverable
        return {"ctx_a": r["context"], "ctx_b": "", "activity_label": r["activity_label"], "endings": r["endings"],
                "label": r["label"]}
    if name.startswith("arc_"):
        return {"question": {"stem": r["question"], "choices": [{"text": t, "label": lab} for t, lab in
                                                                 zip(r["choices"]["text"], r["choices"]["label"])]},
                "answerKey": r["answerKey"]}
    if name == "winogrande":
        return {**r, "answer": str(r["label"] + 1) if isinstance(r.get("label"), int) else r["answer"]}
    if name == "boolq":
        return {"question": r["question"], "passage": r["passage"], "answer": bool(r["label"])}
    if name == "lambada":
        return {"text": r.get("passage", r.get("text"))}
    if name == "triviaqa":
        return {"question": r["question"], "answer": r["answer"]}
    return r


def _read_tfds(name: str, tfds_name: str, split: str, data_dir: str) -> list[_Row]:
    """The split of a TFDS dataset that is already prepared (array_record) under `data_dir` or TFDS's default
    directory. Nothing is downloaded or built: TFDS would try the network for minutes and leave temporary
    directories behind, so a dataset that is not there is a DataError before TFDS is asked for it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"task {name}: give the benchmark's file as path= (tensorflow-datasets is not installed; "
                        f"{_release(name)})") from e
    root = data_dir or tfds.core.constants.DATA_DIR
    # NAME[/CONFIG][:VERSION]: a prepared version folder holds dataset_info.json (no `**`: epath refuses it on GCS).
    dataset_dir = files.path(root) / tfds_name.replace(":", "/")
    prepared = dataset_dir.is_dir() and any(any(dataset_dir.glob(pattern)) for pattern in (
        "dataset_info.json", "*/dataset_info.json", "*/*/dataset_info.json"))
    if not prepared:
        raise DataError(f"task {name}: TFDS dataset {tfds_name!r} is not prepared in {root} (gptjax downloads "
                        f"nothing); give the benchmark's file as path= ({_release(name)}), or prepare the dataset "
                        f"once where TensorFlow is installed: `tfds build {tfds_name} --data_dir={root} "
                        f"--file_format=array_record`")
    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=root, download=False)
    except Exception as e:  # not registered, no such split, another file format: TFDS raises several types
        raise DataError(f"task {name}: cannot read TFDS {tfds_name!r} split {split!r} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); prepare it, or give the benchmark's file as path=") from e
    from gptjax import data

    records = data.read_records(source, range(len(source)), f"task {name}: tfds dataset {tfds_name!r} split {split!r}")
    return [_Row(_from_tfds(name, _decode(r)), f"tfds {tfds_name}[{split}] record {i}") for i, r in enumerate(records)]


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _int(row, key):
    try:
        return int(row[key])
    except (TypeError, ValueError) as e:
        raise DataError(f"{row.where}: field {key!r} is {row[key]!r}, not an integer") from e


def to_example(name: str, r: _Row, labels: list[str] | None = None, index: int = 0) -> Example:
    """One record of benchmark `name`, in its release format, as an Example with lm-eval's prompt."""
    if name == "lambada":
        text = r["text"]
        head, _, last = text.rpartition(" ")
        return Example(head, target=last)
    if name == "hellaswag":
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        return Example(_hellaswag_text(r["activity_label"] + ": " + ctx),
                       choices=tuple(_hellaswag_text(e) for e in r["endings"]), target=_int(r, "label"))
    if name == "piqa":
        if "label" in r:
            label = _int(r, "label")
        elif labels is not None and index < len(labels):
            label = int(labels[index])
        else:
            raise DataError(f"{r.where}: missing field 'label' (or give the labels file as labels=)")
        return Example(f"Question: {r['goal']}\nAnswer:", choices=(r["sol1"], r["sol2"]), target=label)
    if name in ("arc_easy", "arc_challenge"):
        q = r["question"]
        if not isinstance(q, dict) or "stem" not in q or "choices" not in q:
            raise DataError(f"{r.where}: field 'question' needs 'stem' and 'choices'")
        keys = [c["label"] for c in q["choices"]]
        if r["answerKey"] not in keys:
            raise DataError(f"{r.where}: answerKey {r['answerKey']!r} is not one of the choice labels {keys}")
        return Example(f"Question: {q['stem']}\nAnswer:", choices=tuple(c["text"] for c in q["choices"]),
                       target=keys.index(r["answerKey"]))
    if name == "winogrande":
        s = r["sentence"]
        if "_" not in s:
            raise DataError(f"{r.where}: the sentence has no '_' blank")
        i = s.index("_")
        if str(r["answer"]) not in ("1", "2"):
            raise DataError(f"{r.where}: answer {r['answer']!r} is not '1' or '2'")
        return Example("", contexts=(s[:i] + r["option1"], s[:i] + r["option2"]), continuation=s[i + 1:].strip(),
                       target=int(r["answer"]) - 1)
    if name == "storycloze":
        query = " ".join(r[f"InputSentence{j}"] for j in range(1, 5))
        return Example(query, choices=(r["RandomFifthSentenceQuiz1"], r["RandomFifthSentenceQuiz2"]),
                       target=_int(r, "AnswerRightEnding") - 1)
    if name == "boolq":
        answer = r["answer"]
        if not isinstance(answer, bool):
            raise DataError(f"{r.where}: answer {answer!r} is not true or false")
        return Example(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", choices=("no", "yes"),
                       target=int(answer))
    if name == "copa":
        connector = {"cause": "because", "effect": "therefore"}.get(r["question"])
        if connector is None:
            raise DataError(f"{r.where}: question {r['question']!r} is not 'cause' or 'effect'")
        lower = lambda c: c[0].lower() + c[1:]  # noqa: E731
        return Example(r["premise"].strip()[:-1] + f" {connector}", choices=(lower(r["choice1"]), lower(r["choice2"])),
                       target=_int(r, "label"))
    if name == "triviaqa":
        question = r["Question"] if "Question" in r else r["question"]
        answer = r["Answer"] if "Answer" in r else r["answer"]
        aliases = answer.get("Aliases") or answer.get("aliases") or []
        value = answer.get("Value") or answer.get("value")
        answers = tuple(dict.fromkeys([a for a in [value, *aliases] if a]))
        return Example(f"Question: {question}?\nAnswer:", answers=answers)
    raise DataError(f"unknown benchmark {name!r}")


def benchmark(name: str, path: str = "", demos: str = "", labels: str = "", demo_labels: str = "", tfds: str = "",
              split: str = "", demo_split: str = "", data_dir: str = "") -> Task:
    kind, tfds_name, default_split, default_demo_split = BENCHMARKS[name]

    def load(file, labels_file, tfds_split):
        if file:
            rows = _read_rows(_check_file(name, file))
        else:
            rows = _read_tfds(name, tfds or tfds_name, tfds_split, data_dir)
        lab = None
        if labels_file:
            lab_file = _check_file(name, labels_file)
            lab = [ln.strip() for ln in files.read_text(lab_file, expected="a labels file (one label per line)")
                   .splitlines() if ln.strip()]
            if not lab:
                raise DataError(f"{lab_file}: empty; expected one label per line")
            bad = next((i for i, x in enumerate(lab) if not re.fullmatch(r"-?[0-9]+", x)), None)
            if bad is not None:
                raise DataError(f"{lab_file}: label {bad + 1} is {lab[bad][:40]!r}, not an integer: is it the "
                                "labels file?")
        if lab is not None and len(lab) != len(rows):
            raise DataError(f"{lab_file}: {len(lab)} labels for the {len(rows)} records of {file or tfds_split} (a file cut short, "
                            "or another file's labels?)")
        return [to_example(name, r, lab, i) for i, r in enumerate(rows)]

    examples = load(path, labels, split or default_split)
    if demos:
        demo_examples = load(demos, demo_labels, "")
    elif path:
        demo_examples = examples  # the example itself is never drawn (Task.prefix)
    else:
        demo_examples = load("", "", demo_split or default_demo_split)
    common = dict(separator="\n\n", delimiter=" ")
    if kind == "generate":
        return Task(name, kind, examples, demo_examples, stop=("\n", ".", ","), max_new_tokens=32, **common)
    task = Task(name, kind, examples, demo_examples, **common)  # checks every example
    if kind == "multiple_choice":
        task.chance = sum(1 / len(e.contexts or e.choices) for e in examples) / len(examples)
    return task
