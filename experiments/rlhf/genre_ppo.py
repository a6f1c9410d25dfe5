"""InstructGPT step 3 on the offline genre experiment: PPO against the genre reward model, with a per-token KL
penalty to the starting model and a value head on the policy. The penalty's beta starts at 0.1 and adapts towards
10 nats of sequence KL (Ziegler et al.'s controller; horizon 500 samples, so it can move within the run's 5,120
rollouts); `kl_target=0` keeps beta fixed.

  gptjax train --config=experiments/rlhf/genre_ppo.py --workdir=runs/rlhf/genre_ppo

Each iteration samples 64 continuations of 16-token play openings, scores them with the reward model and the judge
(true_reward, logged only), and takes 2 epochs of 32-row minibatches. `ptx=0.5` adds InstructGPT's pretraining loss.
"""

from gptjax import configs

_genre = configs.sibling(__file__, "_genre")


def get_config(arg=None):
    c, a = _genre.genre("ppo", arg, steps=80, kl=0.1, kl_target=10.0, kl_horizon=500, ptx=0.0, lr=1e-4)
    c.train.steps = a.steps
    c.optim.update(lr=a.lr)
    c.eval.update(every_steps=10)
    c.rl.update(rollout_batch=64, epochs=2, minibatch=32, kl_coef=a.kl, kl_target=a.kl_target,
                kl_horizon=a.kl_horizon, ptx_coef=a.ptx, vf_coef=0.1, gamma=1.0, lam=0.95)
    return c
