"""RLOO (`rl.stage=rloo`; Ahmadian et al. 2024, "Back to basics: revisiting REINFORCE style optimization"):
rl.group_size responses per prompt, each rewarded by the reward model less rl.kl_coef times its sequence KL to the
reference, with the mean reward of the prompt's other responses as its baseline (leave-one-out), the same advantage
for every token; no critic. The update is PPO's clipped surrogate (rl.epochs passes of rl.minibatch rows): with one
pass over the batch in one minibatch the ratio is 1 and it is REINFORCE with that baseline.

The whole method is the `Method` below; the loop, rollouts, scoring, probe and checkpoints are ppo.py's.
"""

from gptjax.rl import rollouts
from gptjax.runs import ppo


def method(config) -> ppo.Method:
    r = config.rl
    return ppo.Method(r.group_size, False, 0.0,
                      lambda roll, values, kl_coef: rollouts.rloo_advantages(roll, r.group_size, kl_coef))


configure = ppo.configure


def planned(config):
    return ppo.planned(config, method(config))


def train(config, workdir: str) -> dict:
    return ppo.train_policy(config, workdir, method(config))
