"""Zero- and few-shot genre classification, to set beside the fine-tuned classifier (experiments/finetune/genre.py):
the task shakespeare_genre at 0/1/5 shots. Its examples are the classifier's validation passages (6 held-out plays,
one per genre), each cut to its first whole lines within 80 characters; answers are scored by log-likelihood (acc
and acc_norm); chance is 1/6. See gptjax/evals/tasks/shakespeare.py for the prompt and the demonstration pool.

  gptjax eval --workdir=runs/shakespeare --config=experiments/eval/genre.py[:limit=300]

`limit=0` (the default) scores all 2,094 validation passages: 6 requests each at every K.
"""

from gptjax import configs
from gptjax.evals.config import eval_config


def get_config(arg=None):
    opts = configs.parse_arg(arg, limit=0)
    return eval_config(("shakespeare_genre",), shots=(0, 1, 5), limit=opts.limit)
