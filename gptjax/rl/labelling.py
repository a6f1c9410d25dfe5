"""Simulated labellers: the reward stage's comparisons, when it has none, sampled from the starting model and
ranked by the judge (the experiment's true preference), as InstructGPT's labellers rank a prompt's responses."""

import jax
import numpy as np

from gptjax import files, sharding, workdirs
from gptjax.metrics import log
from gptjax.model import GPT
from gptjax.rl import data as rl_data
from gptjax.rl import stage
from gptjax.rl.rollouts import Rollouts, Scorers


def label_comparisons(config, workdir, mesh, tokenizer, model_cfg) -> None:
    """Samples rl.num_responses responses for each of rl.num_prompts training prompts from the starting model, has
    the judge score them, and writes them ranked as `<workdir>/comparisons.jsonl`."""
    from gptjax.rl.judge import Judge

    r = config.rl
    scorers = Scorers(GPT(model_cfg), workdirs.load_params(config.train.init_from, config, model_cfg, mesh),
                      tokenizer=tokenizer)
    scorers.judge = Judge(r.judge_from, r.judge_label, mesh)
    rollouts = Rollouts(model_cfg, scorers, mesh, config.mesh.logical_axis_rules, r.prompt_tokens,
                        r.response_tokens, r.temperature, tokenizer.eos_id)
    (tokens, mask), _ = stage.prompts(config, tokenizer)
    order = np.random.default_rng([config.seed, 5]).permutation(len(tokens))[:r.num_prompts]
    K, chunk = r.num_responses, max(1, 64 // r.num_responses)
    prompts, responses, scores = [], [], []
    for i in range(0, len(order), chunk):
        idx = np.repeat(order[i:i + chunk], K)
        pad = (-len(idx)) % sharding.data_parallel_size(mesh)
        idx_p = np.concatenate([idx, idx[:pad]])
        with jax.set_mesh(mesh):
            roll = rollouts.sample(scorers.ref_params, *stage.global_pair(tokens[idx_p], mask[idx_p], mesh),
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
