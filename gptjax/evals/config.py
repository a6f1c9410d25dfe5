"""The evaluation config: the fields `gptjax eval` reads (`gptjax/evals/cli.py`); experiments/eval/*.py build on it."""

import ml_collections


def eval_config(tasks, shots=(0, 1, 5), seeds=(0,), limit=0, workdirs=()) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tasks = tuple(tasks)  # task specs: "name" or "name:key=value,..." (gptjax/evals/tasks)
    c.shots = tuple(shots)  # K, demonstrations in each prompt
    c.seeds = tuple(seeds)  # seeds of the demonstration draw; metrics are averaged over them
    c.limit = limit  # examples per task (the first `limit`), 0 for all
    c.tokens_per_batch = 4096  # rows per scoring batch = this / bucket length
    c.workdirs = tuple(workdirs)  # evaluated when --workdir is not given (a sweep from one file)
    return c
