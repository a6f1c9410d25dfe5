"""The genre task with LoRA: rank-8 adapters on attention q/k/v/o and both MLP kernels, plus the task head, train;
the pretrained weights stay frozen (so do the three new token embeddings). Higher lr, as is usual for adapters.

  gptjax train --config=experiments/finetune/genre_lora.py --workdir=runs/genre_lora \
      --config.train.init_from=runs/shakespeare
"""

from gptjax import configs

genre = configs.sibling(__file__, "genre")


def get_config(arg=None):
    c = genre.get_config(arg)
    c.finetune.update(lora_rank=c.finetune.lora_rank or 8, lora_alpha=16.0)
    c.optim.lr = 1e-3
    return c
