"""DPO on the offline genre experiment: the reward stage's ranked comparisons (all 6 pairs of each prompt's four
continuations), no reward model in the loss; the reference's log-probabilities are computed once. `smoothing=0.1`
is conservative DPO. The reward model still scores the policy's samples (`reward`), beside the judge.

  gptjax train --config=experiments/rlhf/genre_dpo.py --workdir=runs/rlhf/genre_dpo
"""

from gptjax import configs

_genre = configs.sibling(__file__, "_genre")


def get_config(arg=None):
    c, a = _genre.genre("dpo", arg, steps=150, beta=0.1, smoothing=0.0, lr=1e-4)
    c.train.update(steps=a.steps, batch_size=32)
    c.optim.update(lr=a.lr)
    c.eval.update(every_steps=25, batch_size=64)
    c.checkpoint.every_steps = 50
    c.rl.update(beta=a.beta, label_smoothing=a.smoothing)
    return c
