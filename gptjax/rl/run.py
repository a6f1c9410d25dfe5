"""`gptjax train` with an `rl` config section: one stage of learning from preferences, on the shared Trainer, hooks,
sharding and checkpoints (so each stage resumes exactly after a kill, like pretraining).

  rl.stage=reward  a reward model (InstructGPT step 2) on comparisons; `rl.comparisons` names them, or, with a
                   judge, they are sampled from the starting model and labelled by the judge (simulated labellers)
  rl.stage=ppo     PPO against the reward model with a per-token KL penalty to the reference (InstructGPT step 3)
  rl.stage=dpo     DPO on the comparisons, no reward model
  rl.stage=grpo    GRPO: groups of responses per prompt, group-normalised advantages, KL in the loss, no critic

`train.init_from` is the starting model (a pretrained or SFT workdir), never written to; it is also the frozen
reference. Policy stages log reward (the reward model's), true_reward (the judge's, where there is one) and kl (to
the reference) each iteration, and eval_* of the same on held-out prompts at each evaluation. Stages whose params
carry a head (reward, ppo) write the plain GPT to `<workdir>/model`, which `gptjax sample --workdir` uses.
"""

import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import checkpoint, files, metrics, optimizer, sharding, trainer, workdirs
from gptjax.errors import CheckpointError, ConfigError, DataError
from gptjax.finetune import data as ft_data
from gptjax.finetune.run import given
from gptjax.model import GPT, ModelConfig
from gptjax.rl import data as rl_data
from gptjax.rl import losses, policy
from gptjax.rl.models import ScalarHeadGPT
from gptjax.rl.tasks import DPO, PolicyUpdate, RewardModeling, sequence_logprobs
from gptjax.tokenizer import load_tokenizer
from gptjax.trainer import Trainer, log

STAGES = ("reward", "ppo", "dpo", "grpo")
REWARD_NORM_FILE = "reward_norm.json"


def config_section() -> ml_collections.ConfigDict:
    """The `rl` section that experiment files add (experiments/rlhf/*.py)."""
    r = ml_collections.ConfigDict()
    r.stage = "ppo"  # reward | ppo | dpo | grpo
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
    r.kl_coef = 0.05  # PPO: the per-token KL penalty's beta (initial value when adaptive); GRPO: the KL term's beta
    r.kl_target = 0.0  # PPO: > 0 makes the controller adaptive, towards this sequence KL (Ziegler et al.)
    r.kl_horizon = 10000
    r.whiten = True  # PPO: whiten advantages over each rollout batch
    r.ptx_coef = 0.0  # PPO-ptx: weight of the pretraining loss on data.* batches (InstructGPT)
    r.group_size = 4  # GRPO: responses per prompt
    r.beta = 0.1  # DPO
    r.label_smoothing = 0.0  # DPO: conservative DPO's label noise
    r.probe_prompts = 64  # held-out prompts sampled at each evaluation
    return r


def _check(config) -> None:
    r = config.rl
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
    if r.stage in ("ppo", "grpo") and not r.reward_from:
        raise ConfigError(f"rl.reward_from: {r.stage} needs a reward-model workdir (rl.stage=reward)")
    if r.stage in ("ppo", "grpo") and "train.batch_size" in given(config):
        raise ConfigError(f"train.batch_size: {r.stage} sets it to rl.minibatch, the rows of one update; set "
                          f"rl.minibatch={r.minibatch} (and rl.rollout_batch={r.rollout_batch}, the prompts of one "
                          "iteration) instead")
    if r.stage in ("ppo", "grpo") and config.model.dropout:
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


def _reads_prompts(config, workdir: str) -> bool:
    """Whether the stage reads rl.prompts: every stage but a reward stage that has its comparisons."""
    r = config.rl
    return r.stage != "reward" or not (r.comparisons or (files.path(workdir) / "comparisons.jsonl").exists())


def _check_context(config) -> None:
    r, max_len = config.rl, config.model.max_len
    if r.prompt_tokens + r.response_tokens > max_len:
        raise ConfigError(f"rl.response_tokens: a rollout of {r.prompt_tokens} prompt + {r.response_tokens} response "
                          f"tokens is longer than the model's context of {max_len}")


def _mesh_checks(config, mesh, rows: int, minibatch: int) -> None:
    dp, accum = sharding.data_parallel_size(mesh), config.train.grad_accum_steps
    if minibatch % (dp * accum) or rows % minibatch:
        times = f" times train.grad_accum_steps={accum}" if accum > 1 else ""
        raise ConfigError(f"rl.minibatch: {minibatch} must divide the {rows} rows of a batch and be a multiple of the "
                          f"{dp} data-parallel shards{times}")


def _same_tokenizer(workdir: str, other: str, key: str) -> None:
    a, b = load_tokenizer(workdir), load_tokenizer(other)
    if (a.kind, a.vocab_size, a.fingerprint) != (b.kind, b.vocab_size, b.fingerprint):
        raise CheckpointError(f"{key}: {other} has another tokenizer ({b.kind}, {b.vocab_size} tokens) than the "
                              f"policy's ({a.kind}, {a.vocab_size} tokens); its scores would read other text")


def _scorers(config, workdir, model_cfg, mesh, tokenizer) -> policy.Scorers:
    r = config.rl
    s = policy.Scorers(GPT(model_cfg), workdirs.load_params(workdirs.model_dir(config.train.init_from), config, model_cfg, mesh),
                       tokenizer=tokenizer)
    if r.reward_from:
        _same_tokenizer(workdir, r.reward_from, "rl.reward_from")
        rm_config = ml_collections.ConfigDict(checkpoint.read_config(r.reward_from))
        if rm_config.get("rl", {}).get("stage") != "reward":
            raise ConfigError(f"rl.reward_from: {r.reward_from} is not a reward model (rl.stage=reward)")
        norm = files.path(r.reward_from) / REWARD_NORM_FILE
        if not norm.exists():
            raise CheckpointError(f"rl.reward_from: {r.reward_from} has not finished ({REWARD_NORM_FILE} is written "
                                  "at the end of the reward stage)")
        rm = ScalarHeadGPT(ModelConfig.from_config(rm_config.model))
        abstract, _ = sharding.abstract_state(
            lambda: rm.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"], mesh,
            rm_config.mesh.logical_axis_rules)
        s.reward_model, s.reward_params = rm, checkpoint.load_params(r.reward_from, abstract)
        s.reward_offset = float(json.loads(norm.read_text())["mean"])
    if r.judge_from:
        from gptjax.rl.judge import Judge

        s.judge = Judge(r.judge_from, r.judge_label, mesh)
    return s


def _prompts(config, tokenizer):
    """(train prompts, held-out prompts) as (tokens, mask) arrays. `plays`: the genre task's training plays and
    its held-out plays; a file or TFDS dataset: its last rl.probe_prompts prompts are held out."""
    r = config.rl
    if r.prompts == "plays":
        train = rl_data.read_prompts("plays", "train")
        held = rl_data.read_prompts("plays", "validation")
        held = [held[i] for i in np.random.default_rng(0).permutation(len(held))[:r.probe_prompts]]
    else:
        texts = rl_data.read_prompts(r.prompts, "train", r.prompt_field, r.data_dir)
        if len(texts) <= r.probe_prompts:
            raise DataError(f"rl.prompts: {r.prompts} has {len(texts)} prompts, and rl.probe_prompts="
                            f"{r.probe_prompts} are held out for evaluation")
        train, held = texts[:-r.probe_prompts], texts[-r.probe_prompts:]
    return (rl_data.encode_prompts(train, tokenizer, r.prompt_tokens),
            rl_data.encode_prompts(held, tokenizer, r.prompt_tokens))


def _global(local: dict, mesh):
    return sharding.host_local_to_global(local, mesh)


def _local_rows(n: int) -> slice:
    pc, pi = jax.process_count(), jax.process_index()
    return slice(pi * n // pc, (pi + 1) * n // pc)


def _export(config, workdir: str, gpt_params, step: int) -> None:
    """The policy (or the reward model's backbone) as a plain gptjax workdir at `<workdir>/model`."""
    out = str(files.path(workdir) / "model")
    plain = ml_collections.ConfigDict(config.to_dict())
    del plain["rl"]
    checkpoint.write_config(out, plain)
    if jax.process_index() == 0 and not (files.path(out) / "tokenizer").exists():
        files.copytree(files.path(workdir) / "tokenizer", files.path(out) / "tokenizer")
    checkpoint.save_params(out, gpt_params, step)
    log(f"wrote the plain GPT to {out} (gptjax sample --workdir={workdir} uses it)")


def train_and_evaluate(config, workdir: str) -> dict:
    from gptjax import train

    t_start = time.time()
    _check(config)
    files.check_url(workdir)
    if _reads_prompts(config, workdir):  # a prompt set that cannot be read stops here, before any model is loaded
        rl_data.check_prompts(config.rl.prompts, config.rl.data_dir)
    source = workdirs.model_dir(config.train.init_from)
    with config.unlocked():
        config.train.init_from = source
    train.adopt_init_from(config, workdir)
    _check_context(config)
    tokenizer = load_tokenizer(workdir)
    mesh = sharding.make_mesh(config.mesh.shape)
    checkpoint.check_compatible(workdir, config)
    stage = {"reward": _reward, "dpo": _dpo, "ppo": _policy, "grpo": _policy}[config.rl.stage]
    last = stage(config, workdir, mesh, tokenizer)
    if jax.process_index() == 0 and (files.path(workdir) / "metrics.jsonl").exists():
        metrics.plot_loss_curve(files.path(workdir) / "metrics.jsonl", files.path(workdir) / "loss_curve.png")
    last["wall_seconds"] = time.time() - t_start
    return last


def _loop(config, workdir, run, state, start, hooks, batch_fn=None, step_fn=None):
    writer = metrics.MetricWriter(workdir)
    try:
        return trainer.run_loop(run, state, start, config.train.steps, batch_fn, hooks, writer, step_fn=step_fn)
    finally:
        writer.close()


# --- reward model --------------------------------------------------------------------------------------------


def _label_comparisons(config, workdir, mesh, tokenizer, model_cfg) -> None:
    """Samples rl.num_responses responses for each of rl.num_prompts training prompts from the starting model, has
    the judge score them, and writes them ranked as `<workdir>/comparisons.jsonl` (simulated labellers)."""
    r = config.rl
    scorers = policy.Scorers(GPT(model_cfg), workdirs.load_params(config.train.init_from, config, model_cfg, mesh),
                             tokenizer=tokenizer)
    from gptjax.rl.judge import Judge

    scorers.judge = Judge(r.judge_from, r.judge_label, mesh)
    rollouts = policy.Rollouts(model_cfg, scorers, mesh, config.mesh.logical_axis_rules, r.prompt_tokens,
                               r.response_tokens, r.temperature, tokenizer.eos_id)
    (tokens, mask), _ = _prompts(config, tokenizer)
    order = np.random.default_rng([config.seed, 5]).permutation(len(tokens))[:r.num_prompts]
    K, chunk = r.num_responses, max(1, 64 // r.num_responses)
    prompts, responses, scores = [], [], []
    for i in range(0, len(order), chunk):
        idx = np.repeat(order[i:i + chunk], K)
        pad = (-len(idx)) % sharding.data_parallel_size(mesh)
        idx_p = np.concatenate([idx, idx[:pad]])
        with jax.set_mesh(mesh):
            roll = rollouts.sample(scorers.ref_params, *_global_pair(tokens[idx_p], mask[idx_p], mesh),
                                   jax.random.fold_in(jax.random.key(config.seed), 10**6 + i))
        texts = rollouts.texts(roll)[:len(idx)]
        true = scorers.judge(texts)
        for j in range(0, len(idx), K):
            p = tokens[idx[j]][mask[idx[j]]]
            prompts.append(tokenizer.decode([int(t) for t in p]))
            responses.append(texts[j:j + K])
            scores.append(true[j:j + K])
        log(f"labelled {len(prompts)}/{len(order)} prompts ({K} responses each)")
    if jax.process_index() == 0:
        n = rl_data.write_comparisons(files.path(workdir) / "comparisons.jsonl", prompts, responses, np.asarray(scores))
        log(f"wrote {n} ranked comparisons to {workdir}/comparisons.jsonl ({len(prompts) - n} left out: ties)")


def _global_pair(tokens, mask, mesh):
    g = _global({"t": tokens[_local_rows(len(tokens))], "m": mask[_local_rows(len(mask))]}, mesh)
    return g["t"], g["m"]


def _split_comparisons(recs, val_fraction: float):
    n_val = max(1, int(round(len(recs) * val_fraction)))
    if len(recs) - n_val < 1:
        raise DataError(f"rl.comparisons: {len(recs)} comparisons leave none for training after holding out {n_val}")
    return recs[:-n_val], recs[-n_val:]


def _comparisons_path(config, workdir) -> str:
    r = config.rl
    if r.comparisons:
        return r.comparisons
    if r.comparisons_from:
        return str(files.path(r.comparisons_from) / "comparisons.jsonl")
    return str(files.path(workdir) / "comparisons.jsonl")


def _reward(config, workdir, mesh, tokenizer) -> dict:
    r = config.rl
    model_cfg = ModelConfig.from_config(config.model)
    path = _comparisons_path(config, workdir)
    if not r.comparisons and not files.path(path).exists():
        _label_comparisons(config, workdir, mesh, tokenizer, model_cfg)
    train_recs, val_recs = _split_comparisons(rl_data.read_comparisons(path), r.val_fraction)
    enc = lambda recs: rl_data.encode_comparisons(recs, tokenizer, r.prompt_tokens, r.response_tokens)  # noqa: E731
    train_enc, val_enc = enc(train_recs), enc(val_recs)
    K = max(train_enc["ranks"].shape[1], val_enc["ranks"].shape[1])
    train_enc, val_enc = (_pad_k(e, K) for e in (train_enc, val_enc))
    trainer.check_batch_sizes(config, mesh)
    checkpoint.write_config(workdir, config)
    model = ScalarHeadGPT(model_cfg)
    run = Trainer(config, mesh, model, RewardModeling(r.prompt_tokens, r.response_tokens, K))
    mngr = checkpoint.manager(workdir, config.checkpoint)

    def init_params(abstract):
        fresh = run.init_state(config.seed).params
        return {**fresh, "gpt": checkpoint.load_params(config.train.init_from, abstract["gpt"])}

    state, start = run.restore_or_init(mngr, config.seed, init_params)
    M, B = len(train_enc["prompt"]), config.train.batch_size
    log(f"gptjax rl reward: {M} training prompts ({int(train_enc['valid'].sum())} responses), "
        f"{len(val_enc['prompt'])} held out, steps {start}..{config.train.steps}, workdir {workdir}")

    def batch_fn(step):
        idx = ft_data.row_indices(M, B, config.seed, step)[_local_rows(B)]
        return {k: v[idx] for k, v in train_enc.items()}

    def validate(loop):
        return run.evaluate(loop.state.params, _eval_batches(val_enc, config.eval.batch_size or B))

    hooks = [trainer.LogHook(config.train.log_every_steps, B * K * (r.prompt_tokens + r.response_tokens), 0.0, None),
             trainer.EvalHook(config.eval.every_steps, validate),
             trainer.CheckpointHook(config.checkpoint.every_steps, mngr, lambda step: {"step": int(step)}, workdir)]
    loop = _loop(config, workdir, run, state, start, hooks, batch_fn=batch_fn)
    _normalise(run, loop.state.params, train_enc, B, workdir)
    _export(config, workdir, loop.state.params["gpt"], loop.step)
    return loop.last


def _pad_k(enc: dict, K: int) -> dict:
    k = enc["ranks"].shape[1]
    if k == K:
        return enc
    pad = lambda x: np.concatenate([x, np.zeros((x.shape[0], K - k, *x.shape[2:]), x.dtype)], axis=1)  # noqa: E731
    out = {**enc, **{key: pad(enc[key]) for key in ("response", "ranks", "valid")}}
    out["lengths"] = np.concatenate([enc["lengths"], np.ones((len(enc["lengths"]), K - k), np.int32)], axis=1)
    return out


def _row_batches(arrays: dict, batch_size: int):
    """Every row once, in global batches of `batch_size`: yields (this process's rows, which of them are real);
    the last batch is filled with copies of the last row."""
    n = len(arrays["prompt"])
    for b in range(math.ceil(n / batch_size)):
        idx = (b * batch_size + np.arange(batch_size))[_local_rows(batch_size)]
        yield {k: v[np.minimum(idx, n - 1)] for k, v in arrays.items()}, idx < n


def _eval_batches(enc: dict, batch_size: int):
    """Comparison batches whose padding rows have valid = 0 (no pairs)."""
    for rows, real in _row_batches(enc, batch_size):
        yield {**rows, "valid": rows["valid"] * real[:, None]}


def _normalise(run, params, enc, batch_size, workdir) -> None:
    """Rewards are shifted so that the responses of the training comparisons (the starting model's samples)
    average 0 (InstructGPT); the mean and standard deviation go to reward_norm.json."""
    task = run.task
    fn = jax.jit(lambda p, b: task.rewards(run.model, p, b), in_shardings=(run.state_shardings.params,
                                                                           sharding.batch_sharding(run.mesh)))
    values = []
    with run.context():
        for rows in _eval_batches(enc, batch_size):
            out = sharding.to_host(fn(params, _global(rows, run.mesh)))
            valid = sharding.to_host(_global({"v": rows["valid"]}, run.mesh)["v"])
            values.append(out[valid > 0])
    values = np.concatenate(values)
    norm = {"mean": float(values.mean()), "std": float(values.std()), "count": int(values.size)}
    if jax.process_index() == 0:
        files.write_text(files.path(workdir) / REWARD_NORM_FILE, json.dumps(norm) + "\n")
    log(f"reward normalisation: the starting model's responses average {norm['mean']:.4f} (std {norm['std']:.4f})")


# --- DPO -----------------------------------------------------------------------------------------------------


def _dpo(config, workdir, mesh, tokenizer) -> dict:
    r = config.rl
    model_cfg = ModelConfig.from_config(config.model)
    train_recs, val_recs = _split_comparisons(rl_data.read_comparisons(_comparisons_path(config, workdir)),
                                              r.val_fraction)
    enc = lambda recs: rl_data.pairs(rl_data.encode_comparisons(recs, tokenizer, r.prompt_tokens,  # noqa: E731
                                                                r.response_tokens))
    train_pairs, val_pairs = enc(train_recs), enc(val_recs)
    trainer.check_batch_sizes(config, mesh)
    checkpoint.write_config(workdir, config)
    scorers = _scorers(config, workdir, model_cfg, mesh, tokenizer)
    model = GPT(model_cfg)
    run = Trainer(config, mesh, model, DPO(r.prompt_tokens, r.response_tokens, r.beta, r.label_smoothing))
    B = config.train.batch_size
    for p in (train_pairs, val_pairs):  # the reference's log-probs, computed once
        p["ref_chosen"], p["ref_rejected"] = _reference_logprobs(run, scorers, p, config.eval.batch_size or B)
    mngr = checkpoint.manager(workdir, config.checkpoint)
    state, start = run.restore_or_init(
        mngr, config.seed, lambda abstract: checkpoint.load_params(config.train.init_from, abstract))
    M = len(train_pairs["prompt"])
    log(f"gptjax rl dpo: {M} training pairs, {len(val_pairs['prompt'])} held out, beta {r.beta}, steps "
        f"{start}..{config.train.steps}, workdir {workdir}")
    rollouts, probe_prompts = _probe_setup(config, mesh, tokenizer, model_cfg, scorers)

    def batch_fn(step):
        idx = ft_data.row_indices(M, B, config.seed, step)[_local_rows(B)]
        return {k: v[idx] for k, v in train_pairs.items()}

    def validate(loop):
        values = run.evaluate(loop.state.params, _pair_batches(val_pairs, config.eval.batch_size or B))
        probe = _probe(rollouts, loop.state.params, probe_prompts, config, workdir, loop.step)
        return {**values, **probe, **{k[5:]: v for k, v in probe.items() if k != "eval_response_length"}}

    hooks = [trainer.LogHook(config.train.log_every_steps, 2 * B * (r.prompt_tokens + r.response_tokens), 0.0, None),
             trainer.EvalHook(config.eval.every_steps, validate),
             trainer.CheckpointHook(config.checkpoint.every_steps, mngr, lambda step: {"step": int(step)}, workdir)]
    if start == 0:
        _write_start(config, workdir, rollouts, scorers.ref_params, probe_prompts, plain_names=True)
    loop = _loop(config, workdir, run, state, start, hooks, batch_fn=batch_fn)
    return loop.last


def _pair_batches(pairs: dict, batch_size: int):
    for rows, real in _row_batches(pairs, batch_size):
        yield {**rows, "weight": real.astype(np.float32)}  # 0: a padding row of the last batch


def _reference_logprobs(run, scorers, pairs, batch_size):
    fn = jax.jit(lambda p, b: (sequence_logprobs(scorers.ref_model, p, b["prompt"], b["prompt_mask"], b["chosen"],
                                                 b["chosen_lengths"]),
                               sequence_logprobs(scorers.ref_model, p, b["prompt"], b["prompt_mask"], b["rejected"],
                                                 b["rejected_lengths"])),
                 in_shardings=(None, sharding.batch_sharding(run.mesh)))
    n = len(pairs["prompt"])
    chosen, rejected = [], []
    with run.context():
        for rows, _ in _row_batches(pairs, batch_size):
            c, r = fn(scorers.ref_params, _global(rows, run.mesh))
            chosen.append(sharding.to_host(c))
            rejected.append(sharding.to_host(r))
    return np.concatenate(chosen)[:n].astype(np.float32), np.concatenate(rejected)[:n].astype(np.float32)


# --- PPO and GRPO --------------------------------------------------------------------------------------------


def _probe_setup(config, mesh, tokenizer, model_cfg, scorers):
    r = config.rl
    rollouts = policy.Rollouts(model_cfg, scorers, mesh, config.mesh.logical_axis_rules, r.prompt_tokens,
                               r.response_tokens, r.temperature, tokenizer.eos_id)
    _, (tokens, mask) = _prompts(config, tokenizer)
    dp = sharding.data_parallel_size(mesh)
    n = len(tokens) // dp * dp
    if n == 0:
        raise ConfigError(f"rl.probe_prompts: {len(tokens)} held-out prompts do not fill the {dp} data shards")
    return rollouts, (tokens[:n], mask[:n])


def _probe(rollouts, gpt_params, probe_prompts, config, workdir, step) -> dict:
    tokens, mask = probe_prompts
    with jax.set_mesh(rollouts.mesh):
        values, rows = policy.probe(rollouts, gpt_params, *_global_pair(tokens, mask, rollouts.mesh), config.seed)
    _append_rollouts(workdir, step, "eval", rows)
    return values


def _append_rollouts(workdir, step, kind, rows) -> None:
    if jax.process_index() != 0:
        return
    f = files.AppendFile(files.path(workdir) / "rollouts.jsonl")
    for row in rows:
        f.write(json.dumps({"step": int(step), "kind": kind, **row}) + "\n")
    f.close()


def _write_start(config, workdir, rollouts, ref_params, probe_prompts, plain_names=False) -> None:
    """The starting model's probe scores, logged at step 0: where every method starts from."""
    values = _probe(rollouts, ref_params, probe_prompts, config, workdir, 0)
    if plain_names:
        values.update({k[5:]: v for k, v in values.items() if k != "eval_response_length"})
    writer = metrics.MetricWriter(workdir)
    writer.write(0, values)
    writer.close()
    log("step      0 | " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))


def _policy(config, workdir, mesh, tokenizer) -> dict:
    r = config.rl
    grpo = r.stage == "grpo"
    model_cfg = ModelConfig.from_config(config.model)
    G = r.group_size if grpo else 1
    rows = r.rollout_batch * G
    _mesh_checks(config, mesh, rows, r.minibatch)
    updates = r.epochs * rows // r.minibatch
    with config.unlocked():
        config.train.batch_size = r.minibatch  # the rows of one update: PPO-ptx's pretraining batches match them
    checkpoint.write_config(workdir, config)
    scorers = _scorers(config, workdir, model_cfg, mesh, tokenizer)
    model = GPT(model_cfg) if grpo else ScalarHeadGPT(model_cfg)
    pipeline = None
    if r.ptx_coef:
        from gptjax import data

        pipeline = data.make_pipeline(config, workdir)
    task = PolicyUpdate(r.prompt_tokens, r.response_tokens, r.temperature, r.clip_eps, r.value_clip, r.vf_coef,
                        r.kl_coef if grpo else 0.0, r.ptx_coef, config.data.seq_len, critic=not grpo)
    total = config.train.steps * updates
    run = Trainer(config, mesh, model, task, tx=optimizer.make_optimizer(config.optim, total))
    sched = optimizer.schedule(config.optim, total)
    run.schedule = lambda it: sched(it * updates)
    mngr = checkpoint.manager(workdir, config.checkpoint)

    def init_params(abstract):
        if grpo:
            return checkpoint.load_params(config.train.init_from, abstract)
        fresh = run.init_state(config.seed).params
        return {**fresh, "gpt": checkpoint.load_params(config.train.init_from, abstract["gpt"])}

    state, start = run.restore_or_init(mngr, config.seed, init_params)
    ctl = losses.KLController(r.kl_coef, r.kl_target or None, r.kl_horizon)
    if run.restored_data and "kl_controller" in run.restored_data:
        ctl = losses.KLController.from_state(run.restored_data["kl_controller"])
    gpt_of = (lambda p: p) if grpo else (lambda p: p["gpt"])
    rollouts, probe_prompts = _probe_setup(config, mesh, tokenizer, model_cfg, scorers)
    (prompt_tokens, prompt_mask), _ = _prompts(config, tokenizer)
    M = len(prompt_tokens)
    log(f"gptjax rl {r.stage}: {M} training prompts, {rows} rollouts of {r.response_tokens} tokens per iteration, "
        f"{updates} updates each, steps {start}..{config.train.steps}, workdir {workdir}")
    batch_sh = sharding.batch_sharding(mesh)
    P = r.prompt_tokens

    def values_fn(params, roll):
        return policy.values(model, params, roll, r.temperature)

    values_jit = jax.jit(values_fn, in_shardings=(run.state_shardings.params, batch_sh), out_shardings=batch_sh)

    def advantages(roll, values, kl_coef):
        if grpo:
            return policy.grpo_advantages(roll, G)
        return policy.ppo_advantages(roll, values, kl_coef, r.gamma, r.lam, r.whiten)

    adv_jit = jax.jit(advantages, in_shardings=(batch_sh, batch_sh, None))
    take = rollouts.take

    def iteration(state, it):
        idx = np.repeat(ft_data.row_indices(M, r.rollout_batch, config.seed, it), G)  # groups: consecutive rows
        prompt, pmask = _global_pair(prompt_tokens[idx], prompt_mask[idx], mesh)
        roll = rollouts.sample(gpt_of(state.params), prompt, pmask, jax.random.fold_in(jax.random.key(config.seed),
                                                                                     it))
        true = rollouts.true_reward(roll)
        values = None if grpo else values_jit(state.params, roll)
        extra = adv_jit(roll, values if values is not None else roll["mask"], jnp.float32(ctl.value))
        ev = extra.pop("explained_variance", None)
        batch = {k: roll[k] for k in ("prompt", "prompt_mask", "response", "lengths", "old_logp")}
        batch.update(extra)
        outs, n = None, 0
        for epoch in range(r.epochs):
            perm = np.random.default_rng([config.seed, it, epoch, 11]).permutation(rows)
            for j in range(rows // r.minibatch):
                mb = take(batch, jnp.asarray(perm[j * r.minibatch:(j + 1) * r.minibatch]))
                if pipeline is not None:
                    w = pipeline.train_batch(it * updates + n)
                    mb = {**mb, **_global({"ptx_inputs": w[:, :-1], "ptx_targets": w[:, 1:]}, mesh)}
                state, out = run.train_step(state, mb)
                outs = out if outs is None else jax.tree.map(jnp.add, outs, out)
                n += 1
        out = {k: v / n for k, v in outs.items()}
        out.update(rollouts.summary(roll, true))
        out["kl_coef"] = ctl.value
        if ev is not None:
            out["explained_variance"] = ev
        kl_now = float(out["kl"])  # one sync per iteration: the controller and the judge need the host anyway
        ctl.update(kl_now, rows)
        if (it + 1) % config.train.log_every_steps == 0:
            shown = policy.examples(rollouts, roll, true, 2)
            _append_rollouts(workdir, it + 1, "train", shown)
            log(f"  sample: {json.dumps(shown[0])[:300]}")
        return state, out

    def evaluate(loop):
        return _probe(rollouts, gpt_of(loop.state.params), probe_prompts, config, workdir, loop.step)

    hooks = [trainer.LogHook(config.train.log_every_steps, rows * (P + r.response_tokens), 0.0, None),
             trainer.EvalHook(config.eval.every_steps, evaluate),
             trainer.CheckpointHook(config.checkpoint.every_steps, mngr,
                                    lambda step: {"step": int(step), "kl_controller": ctl.state()}, workdir)]
    if start == 0:
        _write_start(config, workdir, rollouts, scorers.ref_params, probe_prompts)
    loop = _loop(config, workdir, run, state, start, hooks, step_fn=iteration)
    if not grpo:
        _export(config, workdir, loop.state.params["gpt"], loop.step)
    return loop.last

