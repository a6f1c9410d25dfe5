"""The standard benchmarks from local files in their release formats, all under one directory:
`gptjax eval --workdir=DIR --config=experiments/eval/benchmarks.py:data=/path/to/benchmarks`.

Expected files (rename or edit below): lambada_test.jsonl, hellaswag_val.jsonl + hellaswag_train.jsonl,
piqa_valid.jsonl + piqa_valid-labels.lst, ARC-Easy-Test.jsonl, ARC-Challenge-Test.jsonl (+ -Train),
winogrande_dev.jsonl, storycloze_val.csv, boolq_val.jsonl, copa_val.jsonl, triviaqa_dev.json; where each comes from
is in docs/evals.md and in the error for a missing one. Without `data` the tasks read TFDS datasets that are
already prepared (TFDS's default directory). Nothing is downloaded: a missing file or dataset stops the command with
one line that names it.
"""

from gptjax import configs
from gptjax.evals.config import eval_config

FILES = {
    "lambada": "path={d}/lambada_test.jsonl",
    "hellaswag": "path={d}/hellaswag_val.jsonl,demos={d}/hellaswag_train.jsonl",
    "piqa": "path={d}/piqa_valid.jsonl,labels={d}/piqa_valid-labels.lst",
    "arc_easy": "path={d}/ARC-Easy-Test.jsonl,demos={d}/ARC-Easy-Train.jsonl",
    "arc_challenge": "path={d}/ARC-Challenge-Test.jsonl,demos={d}/ARC-Challenge-Train.jsonl",
    "winogrande": "path={d}/winogrande_dev.jsonl",
    "storycloze": "path={d}/storycloze_val.csv",
    "boolq": "path={d}/boolq_val.jsonl",
    "copa": "path={d}/copa_val.jsonl",
    "triviaqa": "path={d}/triviaqa_dev.json",
}


def get_config(arg=None):
    opts = configs.parse_arg(arg, data="", limit=0)
    tasks = tuple(f"{n}:{f.format(d=opts.data)}" if opts.data else n for n, f in FILES.items())
    return eval_config(tasks, shots=(0, 1, 5), limit=opts.limit)
