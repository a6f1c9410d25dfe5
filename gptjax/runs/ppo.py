"""Policy-gradient stages on rollouts of the policy: PPO (`rl.stage=ppo`, InstructGPT step 3) and GRPO
(`rl.stage=grpo`, DeepSeekMath); RLOO (rloo.py) reuses this loop with its own `Method`.

Each iteration (one step of train.steps) samples rl.rollout_batch prompts (times the group size: responses per
prompt), scores the rollouts with the reward model and the reference, turns them into advantages by the method, and
takes rl.epochs passes of rl.minibatch-row clipped-surrogate updates (`objectives.PolicyUpdate`). PPO: a per-token
KL penalty to the reference in the reward (fixed, or adaptive towards rl.kl_target), GAE on a value head. GRPO:
rewards normalised within each prompt's group, a k3 KL term in the loss, no critic. Logs reward, true_reward (the
judge's), kl each iteration, and the probe at each evaluation (rl/probe.py).
"""

import dataclasses
import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import batching, optimizer, sharding, trainer, workdirs
from gptjax.metrics import log
from gptjax.model import GPT, ModelConfig
from gptjax.rl import losses, rollouts as rollouts_lib, stage
from gptjax.rl.models import ScalarHeadGPT
from gptjax.rl.objectives import PolicyUpdate
from gptjax.rl.probe import Probe, StartProbe, append_rollouts, examples


@dataclasses.dataclass(frozen=True)
class Method:
    """What a policy-gradient method changes in the shared loop."""

    group_size: int  # responses sampled per prompt (consecutive rows)
    critic: bool  # a value head on the policy (ScalarHeadGPT), trained beside it
    kl_in_loss: float  # beta of a k3 KL term in the loss (GRPO); 0: none
    advantages: Callable  # (rollout dict, values or the mask, kl_coef) -> dict of batch keys (advantages, ...)


def method(config) -> Method:
    r = config.rl
    if r.stage == "grpo":
        return Method(r.group_size, False, r.kl_coef,
                      lambda roll, values, kl_coef: rollouts_lib.grpo_advantages(roll, r.group_size))
    return Method(1, True, 0.0, lambda roll, values, kl_coef: rollouts_lib.ppo_advantages(
        roll, values, kl_coef, r.gamma, r.lam, r.whiten))


def planned(config, m: Method | None = None):
    r, m = config.rl, m or method(config)
    model_cfg = ModelConfig.from_config(config.model)
    return ((ScalarHeadGPT(model_cfg) if m.critic else GPT(model_cfg)),
            PolicyUpdate(r.prompt_tokens, r.response_tokens, r.temperature, r.clip_eps, r.value_clip, r.vf_coef,
                         m.kl_in_loss, r.ptx_coef, config.data.seq_len, critic=m.critic))


def configure(config) -> None:
    """What a policy stage sets in its config before it runs (and `gptjax plan` plans): train.batch_size is the
    rows of one update, rl.minibatch (PPO-ptx's pretraining batches match them)."""
    with config.unlocked():
        config.train.batch_size = config.rl.minibatch


def train(config, workdir: str) -> dict:
    return train_policy(config, workdir, method(config))


def train_policy(config, workdir: str, m: Method) -> dict:
    r = config.rl
    rows = r.rollout_batch * m.group_size
    updates = r.epochs * rows // r.minibatch
    configure(config)
    mesh, tokenizer = stage.begin(config, workdir, check=lambda mesh: stage.check_minibatch(config, mesh, rows,
                                                                                            r.minibatch))
    model_cfg = ModelConfig.from_config(config.model)
    scorers = stage.scorers(config, workdir, model_cfg, mesh, tokenizer)
    pipeline = None
    if r.ptx_coef:
        from gptjax import data

        pipeline = data.make_pipeline(config, workdir)
    model, objective = planned(config, m)
    total = config.train.steps * updates
    sched = optimizer.schedule(config.optim, total)
    run = trainer.Trainer(config, mesh, model, objective, tx=optimizer.make_optimizer(config.optim, total),
                          schedule=lambda it: sched(it * updates))
    ctl = losses.KLController(r.kl_coef, r.kl_target or None, r.kl_horizon)

    def restore(data):
        if "kl_controller" in data:
            ctl.restore(data["kl_controller"])

    gpt_of = (lambda p: p["gpt"]) if m.critic else (lambda p: p)
    rollouts = rollouts_lib.Rollouts(model_cfg, scorers, mesh, config.mesh.logical_axis_rules, r.prompt_tokens,
                                     r.response_tokens, r.temperature, tokenizer.eos_id)
    probe = Probe(config, workdir, mesh, rollouts, tokenizer)
    (prompt_tokens, prompt_mask), _ = stage.prompts(config, tokenizer)
    M = len(prompt_tokens)
    batch_sh = sharding.batch_sharding(mesh)
    values_jit = jax.jit(lambda params, roll: rollouts_lib.values(model, params, roll, r.temperature),
                         in_shardings=(run.state_shardings.params, batch_sh), out_shardings=batch_sh)
    adv_jit = jax.jit(m.advantages, in_shardings=(batch_sh, batch_sh, None))

    def iteration(state, it):
        idx = np.repeat(batching.row_indices(M, r.rollout_batch, config.seed, it), m.group_size)  # groups: consecutive
        prompt, pmask = stage.global_pair(prompt_tokens[idx], prompt_mask[idx], mesh)
        roll = rollouts.sample(gpt_of(state.params), prompt, pmask,
                               jax.random.fold_in(jax.random.key(config.seed), it))
        true = rollouts.true_reward(roll)
        values = values_jit(state.params, roll) if m.critic else None
        extra = adv_jit(roll, values if values is not None else roll["mask"], jnp.float32(ctl.value))
        ev = extra.pop("explained_variance", None)
        batch = {k: roll[k] for k in ("prompt", "prompt_mask", "response", "lengths", "old_logp")}
        if not m.critic:
            batch["ref_logp"] = roll["ref_logp"]
        batch.update(extra)
        outs, n = None, 0
        for epoch in range(r.epochs):
            perm = np.random.default_rng([config.seed, it, epoch, 11]).permutation(rows)
            for j in range(rows // r.minibatch):
                mb = rollouts.take(batch, jnp.asarray(perm[j * r.minibatch:(j + 1) * r.minibatch]))
                if pipeline is not None:
                    w = pipeline.train_batch(it * updates + n)
                    mb = {**mb, **sharding.host_local_to_global({"ptx_inputs": w[:, :-1], "ptx_targets": w[:, 1:]},
                                                                mesh)}
                state, out = run.train_step(state, mb)
                outs = out if outs is None else jax.tree.map(jnp.add, outs, out)
                n += 1
        out = {k: v / n for k, v in outs.items()}
        out.update(rollouts.summary(roll, true))
        out["kl_coef"] = ctl.value
        if ev is not None:
            out["explained_variance"] = ev
        ctl.update(float(out["kl"]), rows)  # one sync per iteration: the controller and the judge need the host anyway
        if (it + 1) % config.train.log_every_steps == 0:
            shown = examples(rollouts, roll, true, 2)
            append_rollouts(workdir, it + 1, "train", shown)
            log(f"  sample: {json.dumps(shown[0])[:300]}")
        return state, out

    loop = run.fit(workdir, step_fn=iteration, validate=lambda loop: probe(gpt_of(loop.state.params), loop.step),
                   data_state=lambda step: {"step": int(step), "kl_controller": ctl.state()}, restore=restore,
                   init=trainer.pretrained(config.train.init_from, ("gpt",) if m.critic else ()),
                   hooks=[StartProbe(probe, scorers.ref_params)],
                   tokens_per_step=rows * (r.prompt_tokens + r.response_tokens), title=f"gptjax rl {r.stage}",
                   describe=f"{M} training prompts, {rows} rollouts of {r.response_tokens} tokens per iteration, "
                            f"{updates} updates each")
    if m.critic:
        workdirs.export_model(config, workdir, loop.state.params["gpt"], loop.step)
    return loop.last
