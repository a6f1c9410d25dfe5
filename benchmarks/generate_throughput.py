"""Decoding speed of gptjax against transformers' GPT2LMHeadModel.generate, same shapes and weights, in one process.

Both sides decode greedily from the same random weights (gptjax's init, exported with gptjax.convert.hf): a batch
of prompts of 32 tokens, 128 new tokens, no end token, transformers with use_cache=True and
torch.set_num_threads(2). A timed call is the whole generation (prefill included) as a user calls it:
`model.generate(...)` against `gptjax.sampling.generate(...)`. Rounds alternate the variants; the table reports
medians, the ratio to transformers, and whether the greedy tokens agree with transformers' (fp32 only: bf16 weights
change the arithmetic). `--positions` measures per-token time against position instead (fp32): prompts of 32, 512 and 992
tokens, 32 new tokens each, time per new token.

  python benchmarks/generate_throughput.py                   # 124M and 4 x 128 shapes, batch 1 and 8, 3 rounds
  python benchmarks/generate_throughput.py --shapes=small --rounds=5
  python benchmarks/generate_throughput.py --positions       # per-token time up to the 1024-token context (124M)

Under GPTJAX_SMOKE=1 (benchmarks/common.py): the smallest shape asked for (`--positions`: the small one), shrunk to
gptjax's smoke model (context 64), the first batch size, 16 new tokens (4 per position), one round.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import common  # benchmarks/common.py
from gptjax import sampling
from gptjax.configs import smoke
from gptjax.convert import hf
from gptjax.model import GPT, ModelConfig

SHAPES = {
    # name: layers, width, heads, vocabulary, context
    "124m": dict(num_layers=12, d_model=768, num_heads=12, vocab_size=50257, max_len=1024),
    # nanoGPT's baby Shakespeare shape (character vocabulary); the decode loop's per-step overhead dominates.
    "small": dict(num_layers=4, d_model=128, num_heads=4, vocab_size=65, max_len=1024),
}
PROMPT, NEW = 32, 128


def _torch_model(params, cfg):
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        hf.save_hf_gpt2(params, cfg, d)
        model = GPT2LMHeadModel.from_pretrained(d).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _variants(name, cfg, params):
    """name -> (function prompts_BxP -> new tokens BxN, label)."""
    import torch

    model = _torch_model(params, cfg)

    def torch_generate(prompts, new):
        with torch.no_grad():
            out = model.generate(torch.as_tensor(prompts), attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                                 max_new_tokens=new, do_sample=False, use_cache=True)
        return out[:, prompts.shape[1]:].numpy()

    def jax_generate(c, p):
        def run(prompts, new):
            out = sampling.generate(c, p, prompts.tolist(), max_new_tokens=new, temperature=0.0)
            return np.stack([x.tokens for x in out])

        return run

    bf16 = ModelConfig(**{**cfg.__dict__, "param_dtype": "bfloat16", "dtype": "bfloat16"})
    return {
        "transformers fp32": torch_generate,
        "gptjax fp32": jax_generate(cfg, params),
        "gptjax bf16 weights": jax_generate(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)),
    }


def throughput(shapes: dict, batches, rounds, new):
    print(f"| shape | batch | variant | new tokens/s (median of {rounds}) | min..max | ratio vs transformers | "
          "greedy tokens = transformers |")
    print("|---|---:|---|---:|---|---:|---|")
    for shape, model in shapes.items():
        cfg = ModelConfig(**model)
        params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                              is_leaf=lambda x: hasattr(x, "unbox"))
        variants = _variants(shape, cfg, params)
        for batch in batches:
            prompts = np.random.default_rng(batch).integers(0, cfg.vocab_size, (batch, PROMPT))
            outputs = {name: fn(prompts, new) for name, fn in variants.items()}  # warm up: compile, allocate
            times = {name: [] for name in variants}
            for r in range(rounds):
                order = list(variants)[r % len(variants):] + list(variants)[: r % len(variants)]
                for name in order:
                    t = time.perf_counter()
                    variants[name](prompts, new)
                    times[name].append(time.perf_counter() - t)
            ref = statistics.median(batch * new / t for t in times["transformers fp32"])
            for name, ts in times.items():
                rates = [batch * new / t for t in ts]
                same = np.array_equal(outputs[name], outputs["transformers fp32"])
                agree = "-" if name.startswith("transformers") else ("yes" if same else
                        f"{(outputs[name] == outputs['transformers fp32']).mean():.0%} of tokens")
                print(f"| {shape} | {batch} | {name} | {statistics.median(rates):,.0f} | "
                      f"{min(rates):,.0f}..{max(rates):,.0f} | {statistics.median(rates) / ref:.2f}x | {agree} |",
                      flush=True)


def positions(shape, model: dict, rounds, new=32):
    cfg = ModelConfig(**model)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    variants = {k: v for k, v in _variants(shape, cfg, params).items() if "bf16" not in k}
    print(f"| prompt tokens | positions decoded | " + " | ".join(f"{n} ms/token" for n in variants) + " |")
    print("|---:|---|" + "---:|" * len(variants))
    for p in sorted({min(x, cfg.max_len - new) for x in (32, 512, cfg.max_len - new)}):  # 32, 512, 992
        prompts = np.random.default_rng(p).integers(0, cfg.vocab_size, (1, p))
        row = []
        for name, fn in variants.items():
            fn(prompts, new), fn(prompts, 1)  # warm up (compile) both lengths
            # Per new token, with the prompt's prefill subtracted (a 1-token run costs one prefill + one step).
            ts = []
            for _ in range(rounds):
                t = time.perf_counter()
                fn(prompts, new)
                full = time.perf_counter() - t
                t = time.perf_counter()
                fn(prompts, 1)
                ts.append((full - (time.perf_counter() - t)) / (new - 1))
            row.append(f"{statistics.median(ts) * 1e3:.2f}")
        print(f"| {p} | {p}..{p + new - 1} | " + " | ".join(row) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="124m,small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--positions", action="store_true")
    args = parser.parse_args()
    shapes = {name: SHAPES[name] for name in args.shapes.split(",")}
    new, positions_shape, positions_new = NEW, "124m", 32
    smoke_run = common.smoke_run("the smallest shape, shrunk to gptjax's smoke model, one batch size, 16 new tokens "
                                 "(4 per position), 1 round")
    if smoke_run:
        name = min(shapes, key=lambda s: SHAPES[s]["num_layers"] * SHAPES[s]["d_model"] ** 2)
        shapes = {name: common.smoke_model(SHAPES[name])}
        args.batches, args.rounds = args.batches.split(",")[0], 1
        new, positions_shape, positions_new = smoke.NEW_TOKENS, "small", 4
    print(f"# jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; prompt {PROMPT}, "
          f"{new} new tokens, greedy; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", file=sys.stderr)
    if args.positions:
        model = SHAPES[positions_shape]
        positions(positions_shape, common.smoke_model(model) if smoke_run else model, args.rounds, positions_new)
    else:
        throughput(shapes, [int(b) for b in args.batches.split(",")], args.rounds, new)


if __name__ == "__main__":
    main()
