"""Loss against model size on the Shakespeare corpus (Kaplan et al. 2020, figure 1 right; Hoffmann et al. 2022): seven
GPT-2 blocks from 12.8K to 1.19M non-embedding parameters N (93x), each trained on the same tokens at the best of
three learning rates, and the fit L(N) = E + A / N^alpha written by the sweep's collection step.

  layers x width (heads of 16)   N (non-embedding)
  1 x 32                         12.8K
  2 x 32                         25.5K
  2 x 48                         56.6K
  2 x 64                         100.1K
  3 x 96                         335.7K
  4 x 128                        793.3K
  6 x 128                        1.19M

N counts every parameter but the token and position embeddings (gptjax/scaling.py reads it from each run's
config.json); the sizes are chosen so that N grows about 2x to 2.4x a step, widths and depths both growing as in
Kaplan et al.'s models (their loss depends weakly on the shape at fixed N). Every size sees the same 400 steps of
16 x 64 tokens (410K tokens, a quarter of the 1.7M-token training split, so no sequence is seen twice), cosine
from its learning rate to 1e-5 after 40 warmup steps.

Learning rate: tuned per size, not a rule. Small models want larger rates (Kaplan et al.'s fitted rule,
lr(N) ~ 0.003239 - 0.0001395 ln N, gives 2e-3 at N = 13K and 1.3e-3 at 1.2M for their batch), so each size runs
at each of get_grid()'s 1e-3, 3e-3 and 1e-2, and the sweep takes the point with the lowest validation loss. One
seed per point: the fit's residuals, not seed spread, are the uncertainty that matters here (the GPT-1 ablation
measured a seed sd of a few thousandths of a nat at this scale).

Held out: the largest size (6 x 128). The fit over the six others predicts its loss: an extrapolation, the use a
scaling law is for. At 410K tokens the largest models see under one token per parameter, far from Hoffmann et
al.'s 20, so expect them to fall short of the law (the curve bends toward a token-limited floor); that bend is
part of what this measures.

Budget (issue 22: at most 60 minutes on the 2-core machine): 7 sizes x 3 rates = 21 runs, measured 2026-12-07 at
9.4 minutes with --parallel=2 (docs/ablations.md has the results). `scaling.py:steps=N` trains every size longer.

python launch/sweep.py --config=experiments/sweeps/scaling.py --workdir=runs/scaling --parallel=2
"""

from gptjax.configs import default, parse_arg

SIZES = [(1, 32), (2, 32), (2, 48), (2, 64), (3, 96), (4, 128), (6, 128)]  # (layers, width); heads of 16
STEPS = 400


def get_config(arg=None):
    opts = parse_arg(arg, steps=STEPS)
    c = default.get_config()
    layers, width = SIZES[3]
    c.model.update(num_layers=layers, d_model=width, num_heads=width // 16, dropout=0.0)
    c.data.update(seq_len=64)
    c.train.update(steps=opts.steps, batch_size=16, log_every_steps=50)
    c.optim.update(lr=3e-3, min_lr=1e-5, warmup_steps=max(1, opts.steps // 10))
    c.eval.update(every_steps=max(1, opts.steps // 4), steps=20)
    c.checkpoint.update(every_steps=opts.steps)
    c.sample.update(num_samples=1, max_new_tokens=20)
    return c


def get_sweep():
    """One entry per model size, smallest first."""
    return [{"model.num_layers": layers, "model.d_model": width, "model.num_heads": width // 16}
            for layers, width in SIZES]


def get_grid():
    """Each size at three learning rates, 3.3x apart."""
    return {"optim.lr": [1e-3, 3e-3, 1e-2]}


def get_scaling():
    """Fit validation loss against N over the sizes; predict the largest from the others."""
    return {"hold_out": "num_layers=6,d_model=128,num_heads=8"}
