"""In-context learning emerges: a small GPT pretrained on episodes whose item -> label mapping is drawn fresh for
every sequence (`gptjax/datasets/icl.py`, data.source=synthetic:icl), against a control arm trained on the same
items, labels and format with no mapping kept within a sequence (synthetic:icl_control).

The measured runs (docs/evals.md) trained 3,000 steps, then resumed to 5,000 (the cosine schedule recomputed for
5,000 steps at the resume), each arm the same way:

gptjax train --config=experiments/icl/mapping.py:arm=icl --workdir=runs/icl/icl
gptjax train --config=experiments/icl/mapping.py:arm=icl,steps=5000 --workdir=runs/icl/icl
gptjax train --config=experiments/icl/mapping.py:arm=control --workdir=runs/icl/control
gptjax train --config=experiments/icl/mapping.py:arm=control,steps=5000 --workdir=runs/icl/control
python -m gptjax.evals.cli --config=experiments/eval/icl.py    # both workdirs, 0-16 shots, 3 seeds

Character tokens, 2 layers x 128 wide (induction needs two attention layers), context 64 (a 16-shot prompt is
50 characters), batch 32, AdamW at 2e-3.
"""

from gptjax import configs

ARMS = {"icl": "synthetic:icl", "control": "synthetic:icl_control"}


def get_config(arg=None):
    opts = configs.parse_arg(arg, arm="icl", steps=3000)
    if opts.arm not in ARMS:
        raise configs.ConfigError(f"arm: {opts.arm!r} is not one of {', '.join(ARMS)}")
    c = configs.get_config()
    c.data.update(source=ARMS[opts.arm], tokenizer="char", seq_len=64)
    c.model.update(num_layers=2, num_heads=4, d_model=128, max_len=64, dropout=0.0)
    c.train.update(steps=opts.steps, batch_size=32, log_every_steps=100)
    c.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=200, decay_steps=opts.steps, b1=0.9, b2=0.99,
                   weight_decay=0.1, clip_norm=1.0)
    c.eval.update(every_steps=1000, steps=10)
    c.checkpoint.every_steps = 1000
    c.sample.update(prompt="K3 B7 K", max_new_tokens=20, temperature=0.0, num_samples=1)
    return c
