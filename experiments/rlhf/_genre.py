"""The offline preference experiment's shared settings (experiments/rlhf/genre_*.py, which load this file with
`configs.sibling`): steer the default Shakespeare model towards comedy, with the genre classifier
(experiments/finetune/genre.py) as the true preference.

Workdirs, by default: runs/shakespeare (the starting policy and reference), runs/genre (the judge),
runs/rlhf/genre_rm (the reward model). Each stage's argument overrides them: `genre_ppo.py:policy=DIR,rm=DIR`."""

from gptjax.configs import default, parse_arg
from gptjax.configs import rl as rl_config

DEFAULTS = dict(policy="runs/shakespeare", judge="runs/genre", label="comedies", rm="runs/rlhf/genre_rm", steps=0)


def genre(stage: str, arg=None, **stage_defaults):
    a = parse_arg(arg, **{**DEFAULTS, **stage_defaults})
    c = default.get_config()
    c.train.update(init_from=a.policy, log_every_steps=5)
    c.optim.update(warmup_steps=5, weight_decay=0.0, min_lr=0.0)
    c.checkpoint.update(every_steps=20, keep=2)
    del c.sample  # read by pretraining only; `gptjax sample --workdir=...` samples from any workdir
    c.rl = r = rl_config.section()
    r.update(stage=stage, judge_from=a.judge, judge_label=a.label, prompts="plays", prompt_tokens=16,
             response_tokens=48, probe_prompts=64)
    if stage != "reward":
        r.reward_from = a.rm
    if stage == "dpo":
        r.comparisons_from = a.rm
    return c, a
