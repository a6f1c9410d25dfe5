"""Steer GPT-2 towards positive movie reviews (the IMDB example of Ziegler et al. 2019 and trl's gpt2-sentiment):
prompts are the openings (first 8 tokens) of TFDS `imdb_reviews` train reviews (field `text`), the policy writes 16
more tokens, and an IMDB sentiment classifier (experiments/finetune/imdb.py) is the true preference: its P(label "1",
positive | response) labels the reward stage's comparisons and is logged as true_reward.

One file, four stages, chosen by the argument `stage=reward|ppo|dpo|grpo`. With the data prepared and a transformers
GPT-2 directory (*.safetensors), a user types:

  pip install tensorflow && tfds build imdb_reviews --file_format=array_record   # once; gptjax reads it without TF
  gptjax import-hf --hf_dir=path/to/gpt2 --workdir=runs/gpt2
  gptjax train --config=experiments/finetune/imdb.py --workdir=runs/imdb --config.train.init_from=runs/gpt2
  gptjax train --config=experiments/rlhf/imdb_sentiment.py:stage=reward --workdir=runs/rlhf/imdb_rm
  gptjax train --config=experiments/rlhf/imdb_sentiment.py:stage=ppo --workdir=runs/rlhf/imdb_ppo
  gptjax train --config=experiments/rlhf/imdb_sentiment.py:stage=dpo --workdir=runs/rlhf/imdb_dpo
  gptjax train --config=experiments/rlhf/imdb_sentiment.py:stage=grpo --workdir=runs/rlhf/imdb_grpo
  gptjax sample --workdir=runs/rlhf/imdb_ppo --prompt="This movie" --max_new_tokens=16

The reward stage samples 4 responses to each of 2048 prompts from the starting model, ranks them by the judge and
trains the reward model (writing comparisons.jsonl and reward_norm.json); ppo and grpo optimise against it, dpo trains
on its comparisons. Workdirs default to the ones above; the argument overrides them: `policy=DIR` (the starting model
and frozen reference), `judge=DIR`, `label=L` (the judge's label to maximise), `rm=DIR` (the reward-stage workdir),
`data_dir=DIR` (a TFDS copy outside ~/tensorflow_datasets; pass it to imdb.py too), `steps=N`, `lr=X`, and per stage
`prompts=N` (reward), `kl=B`, `kl_target=T` (ppo), `beta=B` (dpo), `group=G` (grpo).

PPO follows trl's gpt2-sentiment settings where they map (lr 1.41e-5, 4 epochs per batch, KL beta 0.2 adapting
towards a sequence KL of 6, gamma 1, lambda 0.95, clip 0.2, vf_coef 0.1); trl starts from a GPT-2 fine-tuned on IMDB
text (lvwerra/gpt2-imdb), which `policy=` accepts. The other stages' settings are starting points, not tuned results.
"""

from gptjax import configs
from gptjax.configs import rl as rl_config
from gptjax.errors import ConfigError

WORKDIRS = dict(policy="runs/gpt2", judge="runs/imdb", label="1", rm="runs/rlhf/imdb_rm", data_dir="")
STAGES = {  # each stage's own arguments and their defaults
    "reward": dict(steps=200, lr=1e-5, prompts=2048),
    "ppo": dict(steps=200, lr=1.41e-5, kl=0.2, kl_target=6.0),
    "dpo": dict(steps=300, lr=5e-6, beta=0.1),
    "grpo": dict(steps=200, lr=1e-5, kl=0.04, group=4),
}


def _stage(arg) -> str:
    given = dict(item.partition("=")[::2] for item in filter(None, (arg or "").split(",")))
    stage = given.get("stage", "ppo")
    if stage not in STAGES:
        raise ConfigError(f"imdb_sentiment.py: stage {stage!r} is not one of {', '.join(STAGES)}")
    return stage


def get_config(arg=None):
    stage = _stage(arg)
    a = configs.parse_arg(arg, stage=stage, **WORKDIRS, **STAGES[stage])
    c = configs.get_config()
    c.model.dropout = 0.0  # ppo and grpo compare the policy with the one that sampled
    c.train.update(init_from=a.policy, steps=a.steps, log_every_steps=5)
    c.optim.update(lr=a.lr, warmup_steps=10, weight_decay=0.0, min_lr=0.0)
    c.eval.every_steps = 20
    c.checkpoint.update(every_steps=50, keep=2)
    del c.sample  # read by pretraining only; sample with `gptjax sample --workdir=...`
    c.rl = r = rl_config.section()
    r.update(stage=stage, judge_from=a.judge, judge_label=a.label, prompts="tfds:imdb_reviews", prompt_field="text",
             data_dir=a.data_dir, prompt_tokens=8, response_tokens=16, probe_prompts=64)
    if stage == "reward":
        c.train.batch_size = 16  # prompts, with their 4 responses each
        c.eval.update(every_steps=50, batch_size=32)
        c.rl.update(num_prompts=a.prompts, num_responses=4)
    else:
        r.reward_from = a.rm  # ppo and grpo optimise its score; dpo logs it
    if stage == "ppo":
        r.update(rollout_batch=128, epochs=4, minibatch=32, kl_coef=a.kl, kl_target=a.kl_target, vf_coef=0.1,
                 gamma=1.0, lam=0.95, clip_eps=0.2, value_clip=0.2)
    if stage == "dpo":
        c.train.batch_size = 32  # pairs
        c.eval.batch_size = 64
        r.update(comparisons_from=a.rm, beta=a.beta)
    if stage == "grpo":
        r.update(rollout_batch=32, group_size=a.group, epochs=2, minibatch=32, kl_coef=a.kl)
    return c
