"""GPT-3's synthetic probes (arithmetic and word scrambling), offline: `gptjax eval --workdir=DIR
--config=experiments/eval/synthetic.py[:limit=100]`."""

from gptjax import configs
from gptjax.evals.config import eval_config
from gptjax.evals.tasks import synthetic


def get_config(arg=None):
    opts = configs.parse_arg(arg, limit=200)
    return eval_config(tuple(synthetic.ARITHMETIC) + tuple(synthetic.SCRAMBLES), shots=(0, 1, 5), limit=opts.limit)
