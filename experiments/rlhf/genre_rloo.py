"""RLOO (Ahmadian et al. 2024) on the offline genre experiment, with GRPO's budget: 16 play openings per iteration,
4 continuations each, each rewarded by the reward model less beta times its sequence KL to the starting model, with
the mean of the other three as its baseline (leave-one-out); no value function, no KL term in the loss. Two
passes of 32-row minibatches, as GRPO.

  gptjax train --config=experiments/rlhf/genre_rloo.py --workdir=runs/rlhf/genre_rloo
"""

from gptjax import configs

_genre = configs.sibling(__file__, "_genre")


def get_config(arg=None):
    c, a = _genre.genre("rloo", arg, steps=80, kl=0.05, group=4, lr=1e-4)
    c.train.steps = a.steps
    c.optim.update(lr=a.lr)
    c.eval.update(every_steps=10)
    c.rl.update(rollout_batch=16, group_size=a.group, epochs=2, minibatch=32, kl_coef=a.kl)
    return c
