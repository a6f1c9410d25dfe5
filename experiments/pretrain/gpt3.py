"""The GPT-3 family (Brown et al. 2020, table 2.1): `gpt3.py:size=gpt3-175b` etc.

Batch size (in tokens) and learning rate follow table 2.1; warmup 375M tokens; cosine decay to 10% over
260B tokens; AdamW (0.9, 0.95, eps 1e-8), weight decay 0.1, clip 1.0; context 2048. Sharding defaults to FSDP
over all devices with 8-way tensor parallelism for the models above 6.7B. The data is TFDS `c4/en:3.0.1`, as
MaxText trains its GPT-3 configs (see `gptjax.configs.web_scale`), with GPT-2's BPE (data.tokenizer_path).

gptjax train --config=experiments/pretrain/gpt3.py:size=gpt3-xl --workdir=gs://BUCKET/gpt3_xl \
    --config.data.data_dir=gs://BUCKET/tfds --config.data.tokenizer_path=/path/to/gpt2 --distributed
"""

from gptjax import configs, sharding

# size: (batch size in sequences of 2048, learning rate)
_TABLE = {
    "gpt3-small": (256, 6.0e-4),
    "gpt3-medium": (256, 3.0e-4),
    "gpt3-large": (256, 2.5e-4),
    "gpt3-xl": (512, 2.0e-4),
    "gpt3-2.7b": (512, 1.6e-4),
    "gpt3-6.7b": (1024, 1.2e-4),
    "gpt3-13b": (1024, 1.0e-4),
    "gpt3-175b": (1536, 0.6e-4),
}


def get_config(arg=None):
    opts = configs.parse_arg(arg, size="gpt3-small", tensor=0)
    if opts.size not in _TABLE:
        raise ValueError(f"size: {opts.size!r} is not one of {', '.join(_TABLE)}")
    batch, lr = _TABLE[opts.size]
    tokens_per_step = batch * 2048
    c = configs.get_config()
    configs.web_scale(c, opts.size, seq_len=2048)
    c.train.update(steps=300_000_000_000 // tokens_per_step, batch_size=batch, log_every_steps=100)
    c.optim.update(lr=lr, min_lr=lr / 10, warmup_steps=375_000_000 // tokens_per_step,
                   decay_steps=260_000_000_000 // tokens_per_step, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
    c.eval.update(every_steps=1000, steps=50)
    c.checkpoint.update(every_steps=1000, keep=3)
    tensor = opts.tensor or (8 if opts.size in ("gpt3-13b", "gpt3-175b") else 1)
    c.mesh.shape = (1, -1, tensor)
    if tensor > 1:  # each chip keeps 1/tensor of the saved block inputs (docs/plan.md; gptjax/configs/default.py)
        c.mesh.logical_axis_rules = sharding.with_rule(c.mesh.logical_axis_rules, "act_embed", "tensor")
    return c
