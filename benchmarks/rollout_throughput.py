"""PPO rollout tokens per second: gptjax's rollout (gptjax/rl/rollouts.py `Rollouts.sample`, then the value head)
against the same loop written with transformers' `generate` and forward passes, same shapes and weights, in one
process; and the steps per second of a whole PPO iteration at the experiment's shape (gptjax only).

The shape is experiments/rlhf/genre_ppo.py's: the default model (4 layers x 256, 4 heads, context 256) with a
2,048-token vocabulary, 64 prompts of 16 tokens, 48 response tokens, temperature 1.0. The weights are random
(gptjax's init): the policy (a `ScalarHeadGPT`, whose GPT starts as the reference, as in a run), the frozen reference
GPT and the reward model (`ScalarHeadGPT`); the peer gets the same ones through gptjax.convert.hf. There is no end
token (eos_id=None on both sides), so every row samples all 48 tokens. Prompts are random tokens, unpadded.

One rollout is, on each side:
  generation  48 tokens sampled after each prompt, with the log-probs of the sampling distribution.
              gptjax: `sampling.sample_batch` (what `Rollouts.sample` calls); transformers:
              `GPT2LMHeadModel.generate(do_sample=True, top_k=0, temperature=1.0, output_scores=True,
              return_dict_in_generate=True)`, then log_softmax of the scores at the sampled tokens.
  scoring     the reference's per-token log-probs of the response, the reward model's score at the last response
              token and the policy's value at every response position. gptjax: `Rollouts`' jitted scorer and
              run.py's `values_fn`; transformers: a GPT2LMHeadModel forward, and two GPT2Model forwards each with
              a Linear(d, 1) head.
  rollout     both (gptjax: `Rollouts.sample` + the value head, as a PPO iteration runs them).
tokens/s = rows x 48 / seconds. transformers runs under torch.inference_mode(), torch.set_num_threads(2) by default. One
warm-up round is not timed (it compiles gptjax's functions; its time is reported); rounds alternate the sides and
the table gives medians, the ratio gptjax / transformers and how much CPU other programs took meanwhile. Before
timing, transformers scores gptjax's sampled rollout and the scores are compared (same weights, same tokens).

The PPO iteration is the one `run._policy` runs (without the judge, which the benchmark has none of): a rollout, the
value head, GAE advantages with the KL penalty, then epochs x rows / minibatch `Trainer.train_step` updates of
`PolicyUpdate` (2 x 64 / 32 = 4), and the one host sync for the KL controller. It is rebuilt here from the same
public pieces (the iteration is a closure inside `_policy`); its first iteration compiles and is not timed.

  python benchmarks/rollout_throughput.py                          # 3 rounds, 3 PPO iterations
  python benchmarks/rollout_throughput.py --rows=8 --rounds=1 --ppo_iters=1    # a quick look
  python benchmarks/rollout_throughput.py --out=rollout.json
  python benchmarks/rollout_throughput.py --torch_threads=1    # the peer on one thread (see below)

While another program holds one of the two cores, transformers on 2 threads slows down 10-30x (its OpenMP threads
spin at every barrier; 650 ms per decode step at batch 64), which says nothing about the libraries: read the
`other load` column, and compare with `--torch_threads=1` on a loaded machine.

Under GPTJAX_SMOKE=1 (benchmarks/common.py): the experiment's config shrunk as `gptjax train` shrinks it (a smaller
model, 8 rollouts of 8 prompt and 8 response tokens, 4-row minibatches, one epoch), one round, one PPO iteration.
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import common  # benchmarks/common.py
from gptjax import optimizer, sampling, sharding
from gptjax.configs import smoke
from gptjax.convert import hf
from gptjax.model import GPT, ModelConfig
from gptjax.rl import losses
from gptjax.rl import rollouts as policy
from gptjax.rl.models import ScalarHeadGPT
from gptjax.rl.objectives import PolicyUpdate
from gptjax.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(REPO, "experiments", "rlhf", "genre_ppo.py")
VOCAB = 2048
SIDES = ("gptjax", "transformers")
PARTS = ("generation", "scoring", "rollout")


def experiment_config():
    spec = importlib.util.spec_from_file_location("genre_ppo", EXPERIMENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.model.vocab_size = VOCAB
    if smoke.enabled():
        smoke.shrink(config)
    return config


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat: user nice system irq softirq steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    """(result, seconds, cores other programs used meanwhile)."""
    busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    others = max(0.0, (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)) / dt
    return out, dt, others


# --- gptjax --------------------------------------------------------------------------------------------------


class Gptjax:
    """The pieces `run._policy` builds for PPO, with random weights instead of workdirs."""

    def __init__(self, config, seed: int = 0):
        r = self.r = config.rl
        self.config = config
        self.cfg = cfg = ModelConfig.from_config(config.model)
        self.mesh = mesh = sharding.make_mesh(config.mesh.shape)
        rules = config.mesh.logical_axis_rules
        rows = r.rollout_batch
        self.updates = r.epochs * rows // r.minibatch
        with config.unlocked():
            config.train.batch_size = r.minibatch
        self.model = model = ScalarHeadGPT(cfg)
        task = PolicyUpdate(r.prompt_tokens, r.response_tokens, r.temperature, r.clip_eps, r.value_clip, r.vf_coef,
                            0.0, r.ptx_coef, config.data.seq_len, critic=True)
        total = config.train.steps * self.updates
        self.run = run = Trainer(config, mesh, model, task, tx=optimizer.make_optimizer(config.optim, total))
        with run.context():
            init_gpt = jax.jit(lambda k: GPT(cfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"])
            init_rm = jax.jit(lambda k: ScalarHeadGPT(cfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"])
            ref_params = nn.unbox(init_gpt(jax.random.key(seed)))
            reward_params = nn.unbox(init_rm(jax.random.key(seed + 1)))
            fresh = run.init_state(seed).params
            # The policy starts as the reference (run.py loads init_from twice; here a copy, since init donates).
            self.state = run.init_state(seed, {**fresh, "gpt": jax.tree.map(jnp.copy, ref_params)})
        self.scorers = policy.Scorers(GPT(cfg), ref_params, ScalarHeadGPT(cfg), reward_params, reward_offset=0.0)
        self.rollouts = policy.Rollouts(cfg, self.scorers, mesh, rules, r.prompt_tokens, r.response_tokens,
                                        r.temperature, eos_id=None)
        self.ctl = losses.KLController(r.kl_coef, r.kl_target or None, r.kl_horizon)
        batch_sh = sharding.batch_sharding(mesh)

        def values_fn(params, roll):
            return policy.values(model, params, roll, r.temperature)

        def advantages(roll, values, kl_coef):
            return policy.ppo_advantages(roll, values, kl_coef, r.gamma, r.lam, r.whiten)

        self.values = jax.jit(values_fn, in_shardings=(run.state_shardings.params, batch_sh), out_shardings=batch_sh)
        self.advantages = jax.jit(advantages, in_shardings=(batch_sh, batch_sh, None))

    def prompts(self, tokens, mask):
        g = sharding.host_local_to_global({"t": tokens, "m": mask}, self.mesh)
        return g["t"], g["m"]

    # The three timed parts of the comparison (each returns device arrays, ready).
    def generation(self, prompt, pmask, key):
        with jax.set_mesh(self.mesh):
            out = sampling.sample_batch(self.cfg, self.state.params["gpt"], prompt, pmask, key,
                                        max_new_tokens=self.r.response_tokens, temperature=self.r.temperature,
                                        eos_id=None, rules=self.rollouts.rules)
        return jax.block_until_ready(out)

    def scoring(self, roll):
        """`roll`: a sampled rollout (as `Rollouts.sample` returns it); scored again, as `sample` and PPO do."""
        with jax.set_mesh(self.mesh):
            sampled = {k: roll[k] for k in ("prompt", "prompt_mask", "response", "lengths")}
            scores = self.rollouts.score(sampled)
            # The value head reads the new mask, so it waits for the scorer, as in `rollout` (no overlap).
            out = scores, self.values(self.state.params, {**roll, **scores})
        return jax.block_until_ready(out)

    def rollout(self, prompt, pmask, key):
        with jax.set_mesh(self.mesh):
            roll = self.rollouts.sample(self.state.params["gpt"], prompt, pmask, key)
            roll["values"] = self.values(self.state.params, roll)
        return jax.block_until_ready(roll)

    def ppo_iteration(self, prompt, pmask, key, it: int) -> tuple[float, float]:
        """One PPO iteration as run.py's `iteration` runs it; returns (rollout + scoring s, the rest s)."""
        r, rows = self.r, self.r.rollout_batch
        run = self.run
        t0 = time.perf_counter()
        with run.context():
            roll = self.rollout(prompt, pmask, key)
            t1 = time.perf_counter()
            values = roll.pop("values")
            extra = self.advantages(roll, values, jnp.float32(self.ctl.value))
            extra.pop("explained_variance")
            batch = {k: roll[k] for k in ("prompt", "prompt_mask", "response", "lengths", "old_logp")}
            batch.update(extra)
            state, outs, n = self.state, None, 0
            for epoch in range(r.epochs):
                perm = np.random.default_rng([self.config.seed, it, epoch, 11]).permutation(rows)
                for j in range(rows // r.minibatch):
                    mb = self.rollouts.take(batch, jnp.asarray(perm[j * r.minibatch:(j + 1) * r.minibatch]))
                    state, out = run.train_step(state, mb)
                    outs = out if outs is None else jax.tree.map(jnp.add, outs, out)
                    n += 1
            out = {k: v / n for k, v in outs.items()}
            out.update(self.rollouts.summary(roll))
            self.ctl.update(float(out["kl"]), rows)  # run.py's one sync per iteration
            self.state = jax.block_until_ready(state)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1


# --- transformers --------------------------------------------------------------------------------------------


class Transformers:
    """The same rollout with transformers: generate, then the reference, reward and value forward passes."""

    def __init__(self, gj: Gptjax, threads: int = 2):
        import torch
        from transformers import GPT2LMHeadModel, GPT2Model

        torch.set_num_threads(threads)
        self.torch = torch
        cfg, r = gj.cfg, gj.r
        self.P, self.N, self.T = r.prompt_tokens, r.response_tokens, r.temperature

        def load(cls, gpt_params):
            with tempfile.TemporaryDirectory() as d:
                hf.save_hf_gpt2(jax.device_get(gpt_params), cfg, d)
                return cls.from_pretrained(d).eval()

        def head(score):
            lin = torch.nn.Linear(cfg.d_model, 1)
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(np.asarray(score["kernel"]).T))
                lin.bias.copy_(torch.tensor(np.asarray(score["bias"])))
            return lin.eval()

        params = jax.device_get(gj.state.params)
        self.policy = load(GPT2LMHeadModel, params["gpt"])
        self.policy.generation_config.eos_token_id = None
        self.ref = load(GPT2LMHeadModel, gj.scorers.ref_params)
        self.value_body, self.value_head = load(GPT2Model, params["gpt"]), head(params["score"])
        rm = jax.device_get(gj.scorers.reward_params)
        self.reward_body, self.reward_head = load(GPT2Model, rm["gpt"]), head(rm["score"])

    def generation(self, prompt):
        torch = self.torch
        with torch.inference_mode():
            out = self.policy.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                       max_new_tokens=self.N, top_k=0, top_p=1.0, temperature=self.T,
                                       output_scores=True, return_dict_in_generate=True, pad_token_id=0,
                                       use_cache=True)
            response = out.sequences[:, prompt.shape[1]:]
            scores = torch.stack(out.scores, dim=1)  # the sampling distribution's logits (temperature applied)
            logp = torch.log_softmax(scores, dim=-1).gather(-1, response[..., None])[..., 0]
        return response, logp

    def scoring(self, prompt, response):
        torch, P = self.torch, self.P
        with torch.inference_mode():
            tokens = torch.cat([prompt, response], dim=1)
            mask = torch.ones_like(tokens)
            logits = self.ref(tokens, attention_mask=mask).logits[:, P - 1:-1] / self.T
            ref_logp = torch.log_softmax(logits, dim=-1).gather(-1, response[..., None])[..., 0]
            reward = self.reward_head(self.reward_body(tokens, attention_mask=mask).last_hidden_state[:, -1])[:, 0]
            values = self.value_head(self.value_body(tokens, attention_mask=mask).last_hidden_state[:, P - 1:-1])
        return {"ref_logp": ref_logp, "reward": reward, "values": values[..., 0]}

    def rollout(self, prompt):
        response, logp = self.generation(prompt)
        return {"response": response, "old_logp": logp, **self.scoring(prompt, response)}


# --- the comparison ------------------------------------------------------------------------------------------


def agreement(gj: Gptjax, tf: Transformers, prompt_np, prompt, pmask, key) -> dict:
    """transformers scores gptjax's sampled rollout: the largest differences of each score (same weights, tokens).
    old_logp is gptjax's sampling log-probs against transformers' reference log-probs: the policy starts as the
    reference, so at temperature 1 they are the same distribution."""
    roll = jax.device_get(gj.rollout(prompt, pmask, key))
    theirs = tf.scoring(tf.torch.tensor(prompt_np).long(), tf.torch.tensor(np.asarray(roll["response"])).long())
    pairs = {"ref_logp": ("ref_logp", "ref_logp"), "reward": ("reward", "reward"), "values": ("values", "values"),
             "old_logp": ("old_logp", "ref_logp")}
    return {k: float(np.max(np.abs(np.asarray(roll[a]) - theirs[b].numpy()))) for k, (a, b) in pairs.items()}


def compare(gj: Gptjax, tf: Transformers, rows: int, rounds: int, seed: int) -> dict:
    r = gj.r
    prompt_np = np.random.default_rng(seed).integers(0, VOCAB, (rows, r.prompt_tokens)).astype(np.int32)
    prompt, pmask = gj.prompts(prompt_np, np.ones(prompt_np.shape, bool))
    prompt_pt = tf.torch.as_tensor(prompt_np).long()

    def key(i):
        return jax.random.fold_in(jax.random.key(seed), i)

    def calls(i):
        return {
            ("gptjax", "generation"): lambda: gj.generation(prompt, pmask, key(i)),
            ("gptjax", "scoring"): lambda: gj.scoring(roll0),
            ("gptjax", "rollout"): lambda: gj.rollout(prompt, pmask, key(i)),
            ("transformers", "generation"): lambda: tf.generation(prompt_pt),
            ("transformers", "scoring"): lambda: tf.scoring(prompt_pt, resp0),
            ("transformers", "rollout"): lambda: tf.rollout(prompt_pt),
        }

    # Warm-up: the first rollout compiles gptjax's sampler, scorer and value head (timed apart); then one untimed
    # call of every part on both sides.
    with jax.set_mesh(gj.mesh):
        roll0, compile_s, _ = timed(lambda: gj.rollout(prompt, pmask, key(0)))
    roll0.pop("values")
    resp0 = tf.torch.tensor(np.asarray(roll0["response"])).long()
    _, tf_first_s, _ = timed(lambda: tf.rollout(prompt_pt))
    for fn in calls(0).values():
        fn()
    print(f"# warm-up: gptjax's first rollout {compile_s:.1f} s (jit compiles), transformers' {tf_first_s:.1f} s",
          file=sys.stderr, flush=True)
    agree = agreement(gj, tf, prompt_np, prompt, pmask, key(10**6))
    times = {name: [] for name in calls(0)}
    others = {name: [] for name in calls(0)}
    for i in range(rounds):
        names = list(calls(i + 1))
        order = names[::-1] if i % 2 else names
        fns = calls(i + 1)
        for name in order:
            _, dt, o = timed(fns[name])
            times[name].append(dt)
            others[name].append(o)
        print(f"# round {i + 1}: " + ", ".join(f"{s} {p} {times[(s, p)][-1]:.3f} s" for s, p in names),
              file=sys.stderr, flush=True)
    tokens = rows * r.response_tokens
    out = {"rows": rows, "prompt_tokens": r.prompt_tokens, "new_tokens": r.response_tokens, "rounds": rounds,
           "gptjax_first_rollout_s": compile_s, "transformers_first_rollout_s": tf_first_s,
           "agreement_max_abs_diff": agree, "parts": {}}
    for part in PARTS:
        row = {}
        for side in SIDES:
            rates = [tokens / t for t in times[(side, part)]]
            row[side] = {"tokens_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                         "seconds": statistics.median(times[(side, part)]),
                         "other_load_cores": statistics.median(others[(side, part)])}
        row["ratio"] = row["gptjax"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        out["parts"][part] = row
    return out


def ppo(gj: Gptjax, iters: int, seed: int) -> dict:
    r = gj.r
    rows = r.rollout_batch
    rng = np.random.default_rng([seed, 1])

    def one(it):
        tokens = rng.integers(0, VOCAB, (rows, r.prompt_tokens)).astype(np.int32)
        prompt, pmask = gj.prompts(tokens, np.ones(tokens.shape, bool))
        key = jax.random.fold_in(jax.random.key(seed + 1), it)
        return timed(lambda: gj.ppo_iteration(prompt, pmask, key, it))

    (_, _), first, _ = one(0)  # compiles the advantages, take and train_step
    res = [one(it) for it in range(1, iters + 1)]
    total = [t for _, t, _ in res]
    return {"rows": rows, "epochs": r.epochs, "minibatch": r.minibatch, "updates_per_iteration": gj.updates,
            "iterations": iters, "first_iteration_s": first, "seconds": statistics.median(total),
            "iterations_per_s": statistics.median(1 / t for t in total),
            "rollout_and_scoring_s": statistics.median(a for (a, _), _, _ in res),
            "updates_s": statistics.median(b for (_, b), _, _ in res),
            "min_s": min(total), "max_s": max(total), "other_load_cores": statistics.median(o for _, _, o in res)}


def report(header: str, cmp: dict | None, ppo_res: dict | None) -> None:
    print(header)
    if cmp:
        n, new = cmp["rows"], cmp["new_tokens"]
        print(f"\n### Rollouts: {n} prompts of {cmp['prompt_tokens']} tokens, {new} new tokens each (no end token), "
              f"tokens/s = {n} x {new} / s, median of {cmp['rounds']}")
        print("| setting | gptjax tokens/s | min..max | transformers tokens/s | min..max | ratio gptjax / transformers"
              " | other load (cores) gptjax / transformers |")
        print("|---|---:|---|---:|---|---:|---|")
        for part, row in cmp["parts"].items():
            g, t = row["gptjax"], row["transformers"]
            print(f"| {part} | {g['tokens_per_s']:,.0f} | {g['min']:,.0f}..{g['max']:,.0f} | "
                  f"{t['tokens_per_s']:,.0f} | {t['min']:,.0f}..{t['max']:,.0f} | **{row['ratio']:.2f}x** | "
                  f"{g['other_load_cores']:.2f} / {t['other_load_cores']:.2f} |")
        print(f"\nFirst rollout (not timed above): gptjax {cmp['gptjax_first_rollout_s']:.1f} s (jit compiles), "
              f"transformers {cmp['transformers_first_rollout_s']:.1f} s.")
        a = cmp["agreement_max_abs_diff"]
        print("\ntransformers scoring gptjax's rollout, max |difference|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in a.items()))
    if ppo_res:
        p = ppo_res
        print(f"\n### A whole PPO iteration (gptjax): {p['rows']} rollouts, {p['epochs']} epochs of "
              f"{p['minibatch']}-row minibatches = {p['updates_per_iteration']} updates; median of {p['iterations']}")
        print("| iterations/s | s/iteration | min..max s | rollout + scoring s | advantages + updates s | "
              "first iteration s (compiles) | other load (cores) |")
        print("|---:|---:|---|---:|---:|---:|---:|")
        print(f"| {p['iterations_per_s']:.3f} | {p['seconds']:.2f} | {p['min_s']:.2f}..{p['max_s']:.2f} | "
              f"{p['rollout_and_scoring_s']:.2f} | {p['updates_s']:.2f} | {p['first_iteration_s']:.1f} | "
              f"{p['other_load_cores']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="rollouts in the comparison (the experiment: 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ppo_iters", type=int, default=3, help="timed PPO iterations (0: skip)")
    parser.add_argument("--torch_threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the results here as JSON")
    args = parser.parse_args()
    smoke_run = common.smoke_run("the experiment's config shrunk for a smoke run, 1 round, 1 PPO iteration")
    if smoke_run:
        args.rounds, args.ppo_iters = 1, 1
    import torch
    import transformers

    config = experiment_config()
    gj = Gptjax(config, args.seed)
    if smoke_run:
        args.rows = min(args.rows, gj.r.rollout_batch)
    tf = Transformers(gj, args.torch_threads)
    c = gj.cfg
    header = (f"# jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), torch "
              f"{torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
              f"{os.cpu_count()} CPUs; model {c.num_layers} x {c.d_model}, {c.num_heads} heads, vocab {c.vocab_size}, "
              f"context {c.max_len}, fp32, temperature {gj.r.temperature}; "
              f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    cmp = compare(gj, tf, args.rows, args.rounds, args.seed) if args.rounds else None
    ppo_res = ppo(gj, args.ppo_iters, args.seed) if args.ppo_iters else None
    report(header, cmp, ppo_res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"header": header, "rollouts": cmp, "ppo_iteration": ppo_res}, f, indent=2)


if __name__ == "__main__":
    main()
