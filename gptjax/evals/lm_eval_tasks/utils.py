"""gptjax's offline tasks as lm-eval datasets, for the YAML tasks beside this file (`custom_dataset: !function`).

`lm_eval --model gptjax --model_args workdir=DIR --include_path gptjax/evals/lm_eval_tasks --tasks
gptjax_shakespeare_next_line` then scores the same examples, prompts and continuations as `gptjax eval` does at
0 shots (lm-eval draws its own few-shot demonstrations from the `train` split, so K > 0 differs in the draws).
"""

import datasets

from gptjax.evals import tasks


def load(task: str, **unused) -> datasets.DatasetDict:
    """The task's examples as the `test` split and its demonstrations as `train`: multiple choice as query, choices
    and label; cloze as query and target."""
    t = tasks.get(task)

    def rows(examples):
        if t.kind == "multiple_choice":
            return [{"query": e.query, "choices": list(e.choices), "label": int(e.target)} for e in examples]
        if t.kind == "cloze":
            return [{"query": e.query, "target": e.target} for e in examples]
        raise ValueError(f"{task}: kind {t.kind} has no lm-eval YAML here")

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows(t.examples)),
                                 "train": datasets.Dataset.from_list(rows(t.demos))})
