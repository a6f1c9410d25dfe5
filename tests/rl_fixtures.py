"""Tiny workdirs for the preference-learning tests: a 'pretrained' policy on the plays' characters and a genre
judge (an untrained classifier head on that backbone: a fixed, deterministic scorer is all the plumbing needs)."""

import jax
import flax.linen as nn
import numpy as np

from gptjax import checkpoint, configs
from gptjax.finetune import data as ft_data
from gptjax.finetune import heads, transforms
from gptjax.configs import finetune as finetune_config
from gptjax.model import GPT, ModelConfig
from gptjax.configs import rl as rl_config
from gptjax.rl import stage as rl_stage
from gptjax.tokenizer import build_tokenizer

TINY = dict(num_layers=2, d_model=32, num_heads=2, max_len=64, attention_impl="reference", norm_impl="reference",
            loss_impl="reference", dropout=0.0)


def plays_alphabet() -> str:
    texts = [r["text"] for split in ("train", "validation") for _, r in ft_data.genre_records(split)]
    return "".join(sorted(set("".join(texts)) | set("\n")))


def policy_workdir(path, alphabet: str, seed: int = 3):
    c = configs.default.get_config()
    c.model.update(**TINY)
    c.data.update(tokenizer="char", seq_len=32)
    tok = build_tokenizer(c.data, str(path), lambda: [alphabet])
    c.model.vocab_size = tok.vocab_size
    checkpoint.write_config(str(path), c)
    params = GPT(ModelConfig.from_config(c.model)).init(jax.random.PRNGKey(seed), np.zeros((1, 8), np.int32))
    checkpoint.save_params(str(path), nn.unbox(params["params"]))
    return tok


def judge_workdir(path, policy_path, tok):
    import shutil

    c = configs.default.get_config()
    c.model.update(**TINY)
    c.model.vocab_size = tok.vocab_size + transforms.NUM_SPECIAL
    c.data.update(tokenizer="char", seq_len=64)
    c.finetune = f = finetune_config.section()
    f.update(kind="classify", source="genre", labels=ft_data.GENRES, lm_weight=0.0)
    shutil.copytree(str(policy_path / "tokenizer"), str(path / "tokenizer"))
    checkpoint.write_config(str(path), c)
    model = heads.ClassifierGPT(ModelConfig.from_config(c.model), len(ft_data.GENRES))
    params = model.init(jax.random.PRNGKey(7), np.zeros((1, 1, 64), np.int32), np.ones((1, 1), np.int32))["params"]
    params = jax.tree.map(lambda x: x * 30 if x.ndim == 2 and x.shape[-1] == len(ft_data.GENRES) else x,
                          nn.unbox(params))  # a head that tells texts apart
    checkpoint.save_params(str(path), {"model": params})


def stage_config(stage, policy, judge, rm="", **rl):
    c = configs.default.get_config()
    c.train.update(init_from=str(policy), steps=2, batch_size=8, log_every_steps=1)
    c.optim.update(lr=1e-3, warmup_steps=0)
    c.eval.update(every_steps=2, batch_size=8)
    c.checkpoint.update(every_steps=1, async_save=False)
    c.rl = r = rl_config.section()
    r.update(stage=stage, judge_from=str(judge), judge_label="comedies", prompt_tokens=8, response_tokens=8,
             num_prompts=16, num_responses=3, rollout_batch=8, minibatch=8, epochs=2, probe_prompts=8, group_size=2)
    if rm:
        r.reward_from = str(rm)
    if stage == "dpo":
        r.comparisons_from = str(rm)
    r.update(**rl)
    return c
