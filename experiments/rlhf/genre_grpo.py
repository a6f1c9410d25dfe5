"""GRPO (DeepSeekMath) on the offline genre experiment: 16 play openings per iteration, 4 continuations each,
advantages normalised within each group of 4, the clipped objective with a k3 KL term to the starting model, no
value function.

  gptjax train --config=experiments/rlhf/genre_grpo.py --workdir=runs/rlhf/genre_grpo
"""

from gptjax import configs

_genre = configs.sibling(__file__, "_genre")


def get_config(arg=None):
    c, a = _genre.genre("grpo", arg, steps=80, kl=0.1, group=4, lr=1e-4)
    c.train.steps = a.steps
    c.optim.update(lr=a.lr)
    c.eval.update(every_steps=10)
    c.rl.update(rollout_batch=16, group_size=a.group, epochs=2, minibatch=32, kl_coef=a.kl)
    return c
