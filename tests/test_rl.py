"""Learning from preferences end to end: the reward model, PPO, GRPO and DPO stages on tiny workdirs (a char-level
'pretrained' policy and a fixed genre judge), the rollout layout and log-probabilities, sharded and resumed PPO, and
the bad input each stage refuses with one line. The losses themselves are in test_rl_losses.py."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import configs, sampling, sharding, runs
from gptjax.errors import CheckpointError, DataError
from gptjax.model import GPT, ModelConfig
from gptjax.rl import data as rl_data
from gptjax.rl import probe, rollouts as policy
from gptjax.rl.models import ScalarHeadGPT
from gptjax.rl.objectives import PolicyUpdate, RewardModeling, response_logprobs
from gptjax.trainer import Trainer
from tests import rl_fixtures as F
from tests.helpers import gptjax_in_process, metrics_by_step, one_line_error

CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=2, max_len=32, attention_impl="reference",
                  norm_impl="reference", loss_impl="reference")
RULES = configs.default.get_config().mesh.logical_axis_rules


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    tok = F.policy_workdir(root / "pre", F.plays_alphabet())
    F.judge_workdir(root / "judge", root / "pre", tok)
    return root


PPO = {"kl_target": 0.01, "kl_horizon": 50}  # an adaptive KL controller that moves within two iterations


def _run(stage, root, name, **rl):
    rl = {**(PPO if stage == "ppo" else {}), **rl}
    c = F.stage_config(stage, root / "pre", root / "judge", rm=root / "rm" if stage != "reward" else "", **rl)
    return runs.train(configs.finalize(c), str(root / name))


def _placed(params, model, mesh, example):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), example)["params"])
    return jax.device_put(params, sharding.logical_shardings(boxed, mesh, RULES))


def _prompts(B=8, P=6, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (B, P)).astype(np.int32)
    mask = np.ones((B, P), bool)
    for b in range(0, B, 3):  # some left padding
        mask[b, :2], tokens[b, :2] = False, 0
    return tokens, mask


# --- the rollout's log-probabilities and layout ------------------------------------------------------------


@pytest.mark.slow  # the fast tier's probe test needs the same identity (its KL to the reference is 0)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_a_forward_pass_of_the_policy(temperature):
    """The sampler's log-probabilities (temperature applied) are the policy's, by a forward pass over prompt +
    response in the rollout layout (left padding, skipped positions): the `old_logp` PPO's ratios start from."""
    params = GPT(CFG).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
    params = nn.unbox(params)
    tokens, mask = _prompts()
    response, logp, lengths = sampling.sample_batch(CFG, params, jnp.asarray(tokens), jnp.asarray(mask),
                                                    jax.random.key(5), max_new_tokens=10, temperature=temperature)
    assert int(lengths.min()) == 10
    # Jitted (one program for both temperatures) rather than dispatched op by op.
    forward = jax.jit(lambda *a: response_logprobs(GPT(CFG), params, *a)[:2])
    forward_logp, resp_mask = forward(tokens, mask, response, lengths, temperature)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(forward_logp), atol=2e-5)
    assert float(resp_mask.sum()) == 8 * 10
    other = forward(tokens, mask, response, lengths, 1.3)[0]
    assert np.abs(np.asarray(other) - np.asarray(logp)).max() > 1e-2  # the temperature is really applied


def test_reward_model_reads_the_last_response_token_and_pairs_every_ranked_pair():
    """RewardModeling's rewards are the score head at each response's last real token, whatever follows it; its
    loss is the ranking loss over all K-choose-2 pairs."""
    model = ScalarHeadGPT(CFG)
    task = RewardModeling(prompt_tokens=6, response_tokens=5, num_responses=3)
    params = nn.unbox(task.init(model, jax.random.key(2), task.example_batch()))
    tokens, mask = _prompts(B=2)
    rng = np.random.default_rng(3)
    batch = {"prompt": tokens, "prompt_mask": mask, "response": rng.integers(1, 40, (2, 3, 5)).astype(np.int32),
             "lengths": np.array([[5, 2, 3], [1, 4, 5]], np.int32), "ranks": np.array([[0, 2, 1], [1, 0, 2]], np.int32),
             "valid": np.array([[1, 1, 1], [1, 1, 0]], np.float32)}
    rewards = jax.jit(lambda b: task.rewards(model, params, b))  # one program for both batches
    r = np.asarray(rewards(batch))
    changed = {**batch, "response": batch["response"].copy()}
    changed["response"][0, 1, 2:] = 7  # after response (0, 1)'s last token: its reward must not move
    assert np.asarray(rewards(changed))[0, 1] == pytest.approx(r[0, 1], abs=1e-6)
    loss, m = jax.jit(lambda b: task.loss(model, params, b, None))(batch)
    pairs = [(0, 0, 2), (0, 0, 1), (0, 2, 1), (1, 1, 0)]  # (row, better, worse); row 1's third is not valid
    expected = np.mean([np.log1p(np.exp(-(r[b, i] - r[b, j]))) for b, i, j in pairs])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["train_accuracy"]) == pytest.approx(np.mean([r[b, i] > r[b, j] for b, i, j in pairs]))


@pytest.mark.slow
def test_sharded_ppo_update_equals_one_device():
    """One PPO iteration's pieces (rollout, reference and reward scores, values, advantages, one update) on a
    2 x 2 x 2 mesh equal one device: tokens exactly, numbers to float tolerance."""
    tokens, mask = _prompts(B=8)
    policy_model, ref = ScalarHeadGPT(CFG), GPT(CFG)
    p0 = jax.device_get(nn.unbox(policy_model.init(jax.random.key(4), jnp.zeros((1, 8), jnp.int32))["params"]))
    c = configs.default.get_config()
    c.optim.update(lr=1e-2, warmup_steps=0)
    c.train.update(steps=1, batch_size=8)
    task = PolicyUpdate(6, 7, 1.0)
    results = []
    for mesh in (sharding.make_mesh((1, 1, 1), jax.devices()[:1]), sharding.make_mesh((2, 2, 2))):
        run = Trainer(c, mesh, policy_model, task)
        with run.context():
            state = run.init_state(0, jax.device_put(p0, run.state_shardings.params))
            ref_params = _placed(p0["gpt"], ref, mesh, jnp.zeros((1, 8), jnp.int32))
            rm_params = _placed(p0, policy_model, mesh, jnp.zeros((1, 8), jnp.int32))
            scorers = policy.Scorers(ref, ref_params, policy_model, rm_params, 0.0)
            rollouts = policy.Rollouts(CFG, scorers, mesh, RULES, 6, 7, 1.0, None)
            g = sharding.host_local_to_global({"t": tokens, "m": mask}, mesh)
            roll = rollouts.sample(state.params["gpt"], g["t"], g["m"], jax.random.key(9))
            _, _, values, _ = response_logprobs(policy_model, state.params, roll["prompt"], roll["prompt_mask"],
                                                roll["response"], roll["lengths"])
            extra = policy.ppo_advantages(roll, values * roll["mask"], 0.1, 1.0, 0.95)
            extra.pop("explained_variance")
            batch = {**{k: roll[k] for k in ("prompt", "prompt_mask", "response", "lengths", "old_logp")}, **extra}
            state, out = run.train_step(state, batch)
            results.append((jax.device_get(roll), jax.device_get(out), jax.device_get(state.params)))
    (r1, o1, p1), (r2, o2, p2) = results
    np.testing.assert_array_equal(r1["response"], r2["response"])
    for k in ("old_logp", "ref_logp", "reward"):
        np.testing.assert_allclose(r1[k], r2[k], atol=1e-5)
    for k in ("train_loss", "policy_loss", "value_loss", "grad_norm"):
        np.testing.assert_allclose(o1[k], o2[k], rtol=1e-4, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p1, p2)


def test_probe_of_the_reference_policy_has_no_kl_and_the_judges_scores(workdirs):
    """policy.Rollouts and probe with the judge and no reward model, on one device: the policy is the reference, so
    the KL is 0; a fixed seed gives the same probe; each example's true reward is the judge's probability of its
    response's text, wherever that text sits in the judge's batch."""
    from gptjax import workdirs as wd
    from gptjax.errors import ConfigError
    from gptjax.rl import stage as rl_stage
    from gptjax.rl.judge import Judge

    root = workdirs
    c = configs.finalize(F.stage_config("reward", root / "pre", root / "judge"))  # a judge, no reward model
    _, model_cfg, tok = wd.load_config(str(root / "pre"))
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    scorers = rl_stage.scorers(c, str(root / "pre"), model_cfg, mesh, tok)
    assert scorers.reward_model is None and scorers.judge is not None
    rollouts = policy.Rollouts(model_cfg, scorers, mesh, RULES, 8, 8, 1.0, tok.eos_id)
    texts = ["ROMEO:", "O, she", "Now is", "JULIET:"]
    tokens = np.zeros((4, 8), np.int32)
    mask = np.zeros((4, 8), bool)
    for i, t in enumerate(texts):  # left padded
        ids = tok.encode(t)
        tokens[i, 8 - len(ids):], mask[i, 8 - len(ids):] = ids, True
    g = sharding.host_local_to_global({"t": tokens, "m": mask}, mesh)
    values, rows = probe.measure(rollouts, scorers.ref_params, g["t"], g["m"], seed=0)
    again, _ = probe.measure(rollouts, scorers.ref_params, g["t"], g["m"], seed=0)
    assert values == again and set(values) == {"eval_kl", "eval_true_reward", "eval_response_length"}
    assert values["eval_kl"] == pytest.approx(0.0, abs=1e-3) and 0.0 < values["eval_true_reward"] < 1.0
    assert [r["prompt"] for r in rows] == texts[:3]
    judged = scorers.judge([r["response"] for r in rows])
    assert [r["true_reward"] for r in rows] == pytest.approx(judged, abs=1e-4)
    alone = scorers.judge([rows[2]["response"]])[0]
    assert alone == pytest.approx(judged[2], abs=1e-6) and len(set(np.round(judged, 6))) > 1
    with pytest.raises(ConfigError, match="rl.judge_label: 'sonnets' is not one of"):
        Judge(str(root / "judge"), "sonnets", mesh)
    with pytest.raises(ConfigError, match="is not a text classifier"):
        Judge(str(root / "pre"), "comedies", mesh)


def test_report_tables_and_plots_the_probe_curves(tmp_path):
    """rl.report on two runs' metrics.jsonl: one table row per run that has probes (start -> end, a resumed step's
    last row wins), and the plot."""
    from gptjax.rl import report

    logs = {"ppo": [{"step": 0, "eval_true_reward": 0.2, "eval_reward": 0.0, "eval_kl": 0.0},
                    {"step": 1, "train_loss": 3.0},
                    {"step": 2, "eval_true_reward": 0.9, "eval_reward": 0.5, "eval_kl": 1.0},
                    {"step": 2, "eval_true_reward": 0.4, "eval_reward": 0.3, "eval_kl": 2.5}],
            "dpo": [{"step": 0, "eval_true_reward": 0.25, "eval_reward": 0.1, "eval_kl": 0.0},
                    {"step": 4, "eval_true_reward": 0.5, "eval_reward": 0.2, "eval_kl": 0.75}],
            "sft": [{"step": 3, "train_loss": 2.0}]}
    for name, rows in logs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.main([str(tmp_path / n) for n in logs] + [f"--out={tmp_path / 'report'}"])
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[2:] == ["| ppo | 2 | 0.200 → **0.400** | 0.000 → 0.300 | 2.50 |",
                      "| dpo | 4 | 0.250 → **0.500** | 0.100 → 0.200 | 0.75 |"]
    assert (tmp_path / "report.png").stat().st_size > 0


# --- bad input: one line each ------------------------------------------------------------------------------


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_comparisons_name_the_line(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    cases = [({"prompt": "p", "chosen": "a"}, "2: missing field 'rejected'"),
             ({"prompt": "p", "chosen": "same", "rejected": "same"}, "2: chosen and rejected are identical"),
             ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1, 1]},
              "2: a tie: responses 1 and 2 share rank 1"),
             ({"chosen": "a", "rejected": "b"}, "2: missing field 'prompt'")]
    for bad, message in cases:
        path = _jsonl(tmp_path / "c.jsonl", [good, bad])
        with pytest.raises(DataError, match=f"c.jsonl:{message}"):
            rl_data.read_comparisons(path)
    recs = rl_data.read_comparisons(_jsonl(tmp_path / "ok.jsonl", [good, {"prompt": "q", "responses": ["x", "y", "z"],
                                                                           "ranks": [2, 0, 1]}]))
    assert [r[3] for r in recs] == [[0, 1], [2, 0, 1]]


def test_bad_options_are_one_line(capsys, workdirs, tmp_path):
    root = workdirs
    base = ["train", "--config=experiments/rlhf/genre_ppo.py", f"--config.train.init_from={root / 'pre'}",
            f"--config.rl.judge_from={root / 'judge'}", f"--workdir={tmp_path / 'w'}"]
    one_line_error(capsys, "rl.beta: must be >= 0, got -0.1", *base, "--config.rl.beta=-0.1")
    one_line_error(capsys, "rl.group_size: GRPO normalises rewards within a group", *base,
                   "--config.rl.stage=grpo", "--config.rl.group_size=1")
    one_line_error(capsys, "rl.response_tokens: a rollout of 16 prompt + 60 response tokens is longer than the "
                   "model's context of 64", *base, "--config.rl.response_tokens=60")
    # What the stage would replace or never read is refused rather than ignored: train.batch_size (ppo updates on
    # rl.minibatch rows) and sample.* (read by pretraining only).
    one_line_error(capsys, "train.batch_size: ppo sets it to rl.minibatch, the rows of one update; set "
                   "rl.minibatch=32", *base, "--config.train.batch_size=8")
    one_line_error(capsys, "--config.sample.prompt: no such key in the config", *base, "--config.sample.prompt=x")
    # Accumulation cannot split a minibatch of 24 rows into 16 micro-batches (the step's reshape would fail).
    one_line_error(capsys, "rl.minibatch: 24 must divide the 48 rows of a batch and be a multiple of the 8 "
                   "data-parallel shards times train.grad_accum_steps=16", *base, "--config.train.grad_accum_steps=16",
                   "--config.rl.minibatch=24", "--config.rl.rollout_batch=48")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_a_reward_model_with_another_tokenizer_is_refused(workdirs, tmp_path):
    """The reward model must read the policy's tokens: a reward workdir with another tokenizer is one line."""
    other = tmp_path / "other_rm"
    F.policy_workdir(other, "abc \n")
    cfg = json.load(open(other / "config.json"))
    cfg["rl"] = {"stage": "reward"}
    (other / "config.json").write_text(json.dumps(cfg))
    c = F.stage_config("ppo", workdirs / "pre", workdirs / "judge", rm=other)
    with pytest.raises(CheckpointError, match="rl.reward_from: .* has another tokenizer"):
        runs.train(configs.finalize(c), str(tmp_path / "ppo"))


# --- the stages end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_reward_ppo_grpo_rloo_dpo_end_to_end(workdirs, capsys):
    """reward: comparisons sampled and labelled by the judge, a reward model with held-out accuracy and rewards
    normalised so the starting model's samples average 0. ppo, grpo, rloo, dpo: reward, true_reward and kl logged,
    and `gptjax sample` works on every workdir."""
    root = workdirs
    out = _run("reward", root, "rm")
    assert 0.0 <= out["val_accuracy"] <= 1.0
    recs = rl_data.read_comparisons(str(root / "rm" / "comparisons.jsonl"))
    assert len(recs) >= 14 and all(len(r[2]) == 3 for r in recs)
    norm = json.load(open(root / "rm" / "reward_norm.json"))
    from gptjax import workdirs as wd
    from gptjax.rl import stage as rl_stage

    _, model_cfg, tok = wd.load_config(str(root / "pre"))
    mesh = sharding.make_mesh((-1, 1, 1))
    c = configs.finalize(F.stage_config("ppo", root / "pre", root / "judge", rm=root / "rm"))
    scorers = rl_stage.scorers(c, str(root / "pre"), model_cfg, mesh, tok)
    assert scorers.reward_offset == norm["mean"]
    train_recs, _ = rl_stage.split_comparisons(recs, 0.1)
    enc = rl_data.encode_comparisons(train_recs, tok, 8, 8)
    task = RewardModeling(8, 8, 3)
    with jax.set_mesh(mesh):
        r = np.asarray(task.rewards(scorers.reward_model, scorers.reward_params, enc)) - scorers.reward_offset
    assert abs(r[enc["valid"] > 0].mean()) < 1e-4  # the starting model's samples average 0

    for stage in ("rm", "ppo", "grpo", "rloo", "dpo"):
        if stage != "rm":
            _run(stage, root, stage)
            logged = {k for line in open(root / stage / "metrics.jsonl") for k in json.loads(line)}
            assert {"reward", "true_reward", "kl", "eval_reward", "eval_true_reward", "eval_kl"} <= logged, stage
        status, text, _ = gptjax_in_process(capsys, "sample", f"--workdir={root / stage}", "--prompt=ROMEO:",
                                            "--max_new_tokens=5", "--temperature=0")
        assert status == 0 and "ROMEO:" in text, stage
    rows = [json.loads(x) for x in open(root / "ppo" / "rollouts.jsonl")]
    assert {"train", "eval"} == {r["kind"] for r in rows} and all("true_reward" in r for r in rows)
    assert metrics_by_step(root / "ppo", "eval_kl")[0] == pytest.approx(0.0, abs=1e-5)  # it starts as the reference
    from gptjax.rl import report

    report.main([str(root / s) for s in ("ppo", "grpo", "dpo")] + [f"--out={root / 'report'}"])
    md = (root / "report.md").read_text()
    assert [line.split("|")[1].strip() for line in md.splitlines()[2:]] == ["ppo", "grpo", "dpo"]
    first = json.loads(open(root / "dpo" / "metrics.jsonl").readline())
    assert f"{first['eval_true_reward']:.3f} →" in md.splitlines()[4] and (root / "report.png").stat().st_size > 0


@pytest.mark.slow
def test_resumed_ppo_equals_a_straight_run(workdirs, monkeypatch):
    """PPO with an adaptive KL controller, stopped after iteration 1 of 2 (as a kill would stop it, after the
    checkpoint) and resumed, gives the straight run's iteration-2 metrics (the controller's value is restored
    from the checkpoint, rollouts and minibatch orders are functions of the iteration)."""
    from gptjax import loop as loop_lib

    root = workdirs
    if not (root / "ppo" / "metrics.jsonl").exists():  # the end-to-end test's straight run, when run alone
        _run("reward", root, "rm")
        _run("ppo", root, "ppo")
    straight = {k: v[2] for k, v in ((k, metrics_by_step(root / "ppo", k)) for k in
                                     ("train_loss", "kl", "kl_coef", "reward", "true_reward", "eval_kl"))}
    real_loop = loop_lib.run_loop
    with monkeypatch.context() as m:  # the first process: its loop ends after iteration 1 of 2
        m.setattr(loop_lib, "run_loop", lambda run, state, start, total, *a, **k: real_loop(run, state, start, 1, *a,
                                                                                          **k))
        _run("ppo", root, "ppo_resumed")
    resumed = _run("ppo", root, "ppo_resumed")
    for k in straight:
        assert resumed[k] == pytest.approx(straight[k], rel=1e-5, abs=1e-7), k
    a = metrics_by_step(root / "ppo", "kl_coef")
    assert a[2] != a[1]  # the controller moved, so restoring it mattered


@pytest.mark.slow
def test_train_steps_on_the_command_line_sets_the_steps_of_every_genre_stage(workdirs, capsys, tmp_path):
    """`gptjax train --config=experiments/rlhf/genre_{rm,ppo,grpo,dpo}.py --config.train.steps=3`, shrunk, in the
    order the stages need each other: each trains 3 steps (their own lengths are 100, 80, 80 and 150)."""
    root = workdirs
    arg = f"policy={root / 'pre'},judge={root / 'judge'},rm={tmp_path / 'genre_rm'}"
    common = ["--config.train.steps=3", "--config.checkpoint.async_save=False", "--config.rl.prompt_tokens=8",
              "--config.rl.response_tokens=8", "--config.rl.probe_prompts=8"]
    rollouts = ["--config.rl.minibatch=8", "--config.rl.epochs=1"]
    stages = {"genre_rm": ["--config.rl.num_prompts=16", "--config.rl.num_responses=3"],
              "genre_ppo": [*rollouts, "--config.rl.rollout_batch=8"],
              "genre_grpo": [*rollouts, "--config.rl.rollout_batch=4"],
              "genre_dpo": []}
    for name, flags in stages.items():
        workdir = tmp_path / name
        status, _, err = gptjax_in_process(capsys, "train", f"--config=experiments/rlhf/{name}.py:{arg}",
                                           f"--workdir={workdir}", *common, *flags)
        assert status == 0, (name, err[-3000:])
        assert max(metrics_by_step(str(workdir))) == 3, name  # train_loss is logged every 5 steps and at the last
        assert sorted(os.listdir(workdir / "checkpoints")) == ["3"], name
