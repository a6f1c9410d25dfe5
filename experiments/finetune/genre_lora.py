"""The genre task with LoRA: rank-8 adapters on attention q/k/v/o and both MLP kernels, plus the task head, train;
the pretrained weights stay frozen (so do the three new token embeddings). Higher lr, as is usual for adapters.

  gptjax train --config=experiments/finetune/genre_lora.py --workdir=runs/genre_lora \
      --config.train.init_from=runs/shakespeare
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("genre", pathlib.Path(__file__).with_name("genre.py"))
genre = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(genre)


def get_config(arg=None):
    c = genre.get_config(arg)
    c.finetune.update(lora_rank=c.finetune.lora_rank or 8, lora_alpha=16.0)
    c.optim.lr = 1e-3
    return c
