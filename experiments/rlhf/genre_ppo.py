"""InstructGPT step 3 on the offline genre experiment: PPO against the genre reward model, with a per-token KL
penalty to the starting model (fixed beta by default; `kl_target=X` makes it adaptive) and a value head on the policy.

  gptjax train --config=experiments/rlhf/genre_ppo.py --workdir=runs/rlhf/genre_ppo

Each iteration samples 64 continuations of 16-token play openings, scores them with the reward model and the judge
(true_reward, logged only), and takes 2 epochs of 32-row minibatches. `ptx=0.5` adds InstructGPT's pretraining loss.
"""

from gptjax.configs import rlhf


def get_config(arg=None):
    c, a = rlhf.genre("ppo", arg, steps=60, kl=0.05, kl_target=0.0, ptx=0.0, lr=2e-5)
    c.train.steps = a.steps
    c.optim.update(lr=a.lr)
    c.eval.update(every_steps=10)
    c.rl.update(rollout_batch=64, epochs=2, minibatch=32, kl_coef=a.kl, kl_target=a.kl_target, ptx_coef=a.ptx,
                vf_coef=0.1, gamma=1.0, lam=0.95)
    return c
