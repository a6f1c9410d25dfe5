"""The `rl` section of a config (experiments/rlhf/*.py): what makes `gptjax train` run one stage of learning from
preferences (gptjax/runs/reward.py, ppo.py, rloo.py, dpo.py). Plain ml_collections: loading a config imports no
jax."""

import ml_collections

from gptjax.errors import ConfigError

STAGES = ("reward", "ppo", "grpo", "rloo", "dpo")
POLICY_STAGES = ("ppo", "grpo", "rloo")  # the stages that sample rollouts from the policy and update it on them


def section() -> ml_collections.ConfigDict:
    r = ml_collections.ConfigDict()
    r.stage = "ppo"  # reward | ppo | grpo | rloo | dpo
    r.reward_from = ""  # a reward-stage workdir (ppo and grpo need one; dpo logs its score when given)
    r.judge_from = ""  # a classifier workdir: the true preference (labels comparisons, logs true_reward)
    r.judge_label = ""  # the judge's label whose probability is the true score
    r.prompts = "plays"  # plays | a JSONL of {"prompt"} | tfds:NAME
    r.prompt_field = "prompt"
    r.data_dir = ""  # TFDS data dir
    r.comparisons = ""  # reward, dpo: a comparisons JSONL ("": a reward stage samples and labels its own)
    r.comparisons_from = ""  # dpo: a reward-stage workdir, whose comparisons.jsonl it uses
    r.num_prompts = 512  # reward stage without comparisons: prompts sampled and labelled
    r.num_responses = 4  # ... with this many responses each (all K-choose-2 pairs are compared)
    r.val_fraction = 0.1  # comparisons held out for pairwise accuracy
    r.prompt_tokens = 16  # prompts keep this many tokens
    r.response_tokens = 48  # responses (rollouts) are at most this long
    r.temperature = 1.0  # rollout sampling temperature (the policy's log-probs are of this distribution)
    r.rollout_batch = 64  # prompts per PPO/GRPO iteration (train.steps counts iterations)
    r.epochs = 4  # passes over each rollout batch
    r.minibatch = 16  # rows per update
    r.clip_eps = 0.2
    r.value_clip = 0.2  # PPO value-loss clipping (0: none)
    r.vf_coef = 0.1
    r.gamma = 1.0
    r.lam = 0.95
    r.kl_coef = 0.05  # PPO: the per-token KL penalty's beta (initial value when adaptive); GRPO: the KL term's
    #                   beta; RLOO: the sequence KL penalty's beta in the reward
    r.kl_target = 0.0  # PPO: > 0 makes the controller adaptive, towards this sequence KL (Ziegler et al.)
    r.kl_horizon = 10000
    r.whiten = True  # PPO: whiten advantages over each rollout batch
    r.ptx_coef = 0.0  # PPO-ptx: weight of the pretraining loss on data.* batches (InstructGPT)
    r.group_size = 4  # GRPO and RLOO: responses per prompt
    r.beta = 0.1  # DPO
    r.label_smoothing = 0.0  # DPO: conservative DPO's label noise
    r.probe_prompts = 64  # held-out prompts sampled at each evaluation
    return r


def validate(c: ml_collections.ConfigDict) -> None:
    r, config = c.rl, c
    if r.stage not in STAGES:
        raise ConfigError(f"rl.stage: {r.stage!r} is not one of {', '.join(STAGES)}")
    if not config.train.init_from:
        raise ConfigError("train.init_from: an rl stage starts from a trained model (a pretrained or SFT workdir)")
    for key in ("beta", "kl_coef", "label_smoothing", "ptx_coef", "vf_coef", "clip_eps"):
        if r[key] < 0:
            raise ConfigError(f"rl.{key}: must be >= 0, got {r[key]}")
    if r.label_smoothing >= 0.5:
        raise ConfigError(f"rl.label_smoothing: must be below 0.5, got {r.label_smoothing}")
    if r.stage == "grpo" and r.group_size < 2:
        raise ConfigError(f"rl.group_size: GRPO normalises rewards within a group, which needs 2 or more responses "
                          f"per prompt, got {r.group_size}")
    if r.stage == "rloo" and r.group_size < 2:
        raise ConfigError(f"rl.group_size: RLOO's baseline is the mean reward of a prompt's other responses, which "
                          f"needs 2 or more responses per prompt, got {r.group_size}")
    if r.stage in POLICY_STAGES and not r.reward_from:
        raise ConfigError(f"rl.reward_from: {r.stage} needs a reward-model workdir (rl.stage=reward)")
    if r.stage in POLICY_STAGES and "train.batch_size" in set(c.get("overridden", None) or ()):
        raise ConfigError(f"train.batch_size: {r.stage} sets it to rl.minibatch, the rows of one update; set "
                          f"rl.minibatch={r.minibatch} (and rl.rollout_batch={r.rollout_batch}, the prompts of one "
                          "iteration) instead")
    if r.stage in POLICY_STAGES and config.model.dropout:
        raise ConfigError(f"model.dropout: {r.stage} compares the policy with the one that sampled, so dropout must "
                          f"be 0, got {config.model.dropout}")
    if r.temperature <= 0:
        raise ConfigError(f"rl.temperature: rollouts sample, so it must be > 0, got {r.temperature}")
    if r.prompt_tokens < 1 or r.response_tokens < 1:
        raise ConfigError("rl.prompt_tokens and rl.response_tokens: must be at least 1")
    if bool(r.judge_from) != bool(r.judge_label):
        raise ConfigError("rl.judge_from and rl.judge_label: give both or neither")
    if r.stage == "reward" and not r.comparisons and not r.judge_from:
        raise ConfigError("rl.comparisons: the reward stage needs comparisons, or rl.judge_from to label sampled ones")
    if r.stage == "dpo" and not (r.comparisons or r.comparisons_from):
        raise ConfigError("rl.comparisons: dpo needs comparisons (or rl.comparisons_from, a reward-stage workdir)")
