"""The in-context learning experiment's evaluation (experiments/icl/mapping.py): 0-16 shots on fresh mappings,
both arms: `gptjax eval --config=experiments/eval/icl.py` (or --workdir=A,B)."""

from gptjax import configs
from gptjax.evals.config import eval_config


def get_config(arg=None):
    opts = configs.parse_arg(arg, limit=400, runs="runs/icl")
    return eval_config(("icl_mapping",), shots=(0, 1, 2, 4, 8, 16), seeds=(0, 1, 2), limit=opts.limit,
                       workdirs=(f"{opts.runs}/icl", f"{opts.runs}/control"))
