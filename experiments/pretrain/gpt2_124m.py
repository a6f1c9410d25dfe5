"""GPT-2 small (124M) on C4 (English), for real hardware (a TPU v4-32 / 8xA100 class machine).

Batch and schedule follow GPT-3's table 2.1 for the 125M model (0.5M tokens per batch, lr 6e-4, warmup
375M tokens, cosine to 10% over 300B tokens scaled here to nanoGPT's 600k steps), AdamW beta2 0.95, weight
decay 0.1, clip 1.0, bf16 compute with fp32 params. GPT-2's WebText was never released; the data is TFDS
`c4/en:3.0.1` (see `gptjax.configs.web_scale`: an array_record copy under data.data_dir), GPT-2's BPE comes
from a Hugging Face GPT-2 tokenizer directory given as data.tokenizer_path.

gptjax train --config=experiments/pretrain/gpt2_124m.py --workdir=gs://BUCKET/gpt2_124m \
    --config.data.data_dir=gs://BUCKET/tfds --config.data.tokenizer_path=/path/to/gpt2 --distributed
Options: `gpt2_124m.py:size=gpt2-medium` for the other GPT-2 presets.
"""

from gptjax import configs


def get_config(arg=None):
    opts = configs.parse_arg(arg, size="gpt2-small")
    c = configs.get_config()
    configs.web_scale(c, opts.size, seq_len=1024)
    c.train.update(steps=600_000, batch_size=480, grad_accum_steps=1, log_every_steps=100)
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=2000, decay_steps=600_000, b1=0.9, b2=0.95, eps=1e-8,
                   weight_decay=0.1, clip_norm=1.0)
    c.eval.update(every_steps=2000, steps=100, batch_size=0)
    c.checkpoint.update(every_steps=2000, keep=3)
    c.mesh.shape = (-1, 1, 1)  # pure data parallel fits 124M; try (1, -1, 1) (FSDP) for the larger presets
    return c
