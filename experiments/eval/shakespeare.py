"""The default Shakespeare model on the held-out-Shakespeare and synthetic tasks at 0/1/5 shots:
`gptjax eval --workdir=runs/shakespeare --config=experiments/eval/shakespeare.py[:limit=200]`."""

from gptjax import configs
from gptjax.evals.config import eval_config
from gptjax.evals.tasks import synthetic


def get_config(arg=None):
    opts = configs.parse_arg(arg, limit=200)
    tasks = ("shakespeare_last_word", "shakespeare_next_line", *synthetic.ARITHMETIC, *synthetic.SCRAMBLES)
    return eval_config(tasks, shots=(0, 1, 5), limit=opts.limit)
