"""The evaluation config: the fields `gptjax eval` reads (`gptjax/evals/cli.py`), and its default.

`eval_config` builds a config; experiments/eval/*.py call it. `get_config(arg)` is `gptjax eval`'s default when no
--config is given: GPT-3's synthetic probes (arithmetic and word scrambling), offline, at 0/1/5 shots
(`--config=.../gptjax/evals/config.py:limit=100` sets the examples per task). It lives in the package, not in
experiments/, so that an installed gptjax has it.
"""

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


def get_config(arg=None) -> ml_collections.ConfigDict:
    """GPT-3's synthetic probes at 0/1/5 shots, the first `limit` (default 200) examples of each."""
    from gptjax import configs
    from gptjax.evals.tasks import synthetic

    opts = configs.parse_arg(arg, limit=200)
    return eval_config(tuple(synthetic.ARITHMETIC) + tuple(synthetic.SCRAMBLES), shots=(0, 1, 5), limit=opts.limit)
