"""nanoGPT's CPU "baby" Shakespeare run (config/train_shakespeare_char.py with its CPU overrides), exactly:
4 layers, 4 heads, 128 wide, context 64, batch 12, no dropout, lr 1e-3 (100 warmup steps) cosine to 1e-4 over
2000 steps, AdamW beta2 0.99, weight decay 0.1, clip 1.0, eval every 250 steps on 20 batches, character tokens.

gptjax train --config=experiments/pretrain/shakespeare_char.py --config.data.path=data/shakespeare_char/input.txt \
    --workdir=runs/shakespeare_char

(data/shakespeare_char/input.txt is nanoGPT's tinyshakespeare file, shipped with gptjax.)
"""

from gptjax.configs import default


def get_config():
    c = default.get_config()
    c.data.source = "text"
    c.data.path = ""  # required: --config.data.path=input.txt (nanoGPT's data/shakespeare_char/input.txt)
    c.data.tokenizer = "char"
    c.data.val_fraction = 0.1
    c.data.seq_len = 64
    # One train shard: every row is a window at a uniform start over the whole train split, as nanoGPT's
    # get_batch draws them (more shards would stratify the rows over parts of the text; a one-process run).
    c.data.shards = 1
    c.model.update(num_layers=4, num_heads=4, d_model=128, max_len=64, dropout=0.0)
    c.train.update(steps=2000, batch_size=12, log_every_steps=50)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000, b1=0.9, b2=0.99, weight_decay=0.1,
                   clip_norm=1.0)
    c.eval.update(every_steps=250, steps=20)
    c.checkpoint.every_steps = 1000
    c.sample.update(prompt="\n", max_new_tokens=500, temperature=0.8, top_k=200, num_samples=1)
    return c
