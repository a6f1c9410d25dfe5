"""Ablation sweep on the default Shakespeare run: post-LN (GPT-1) vs pre-LN (GPT-2/3), learned vs
sinusoidal positions, tied vs untied head. Each sweep entry is a dict of overrides.

python launch/sweep.py --config=experiments/sweeps/gpt1_vs_gpt2_ablation.py --workdir=runs/ablation
"""

from gptjax.configs import default, parse_arg


def get_config(arg=None):
    opts = parse_arg(arg, steps=1000)
    c = default.get_config()
    c.train.steps = opts.steps
    return c


def get_sweep():
    return [
        {"model.norm": norm, "model.pos_embedding": pos, "model.tie_embeddings": tie}
        for norm in ("pre", "post")
        for pos in ("learned", "sinusoidal")
        for tie in (True, False)
        if (pos, tie) == ("learned", True) or norm == "pre"
    ]
