"""Instruction tuning (InstructGPT step 1, SFT): prompt/response pairs in a template, the loss on response tokens
only, several examples packed per row with segment-aware attention and restarting positions.

The data is JSONL (`prompt` and `response` fields) or, by default, an offline set built from the plays: "Continue
this speech." + a speaker and two lines -> the speech's next line (training plays / the pretraining run's held-out
plays).

  gptjax train --config=experiments/finetune/instruct.py --workdir=runs/sft --config.train.init_from=runs/shakespeare
  gptjax train --config=experiments/finetune/instruct.py:lora=8 ...   # LoRA adapters only
  ... --config.finetune.source=jsonl --config.finetune.train_path=train.jsonl --config.finetune.val_path=val.jsonl
"""

from gptjax import configs
from gptjax.configs import default
from gptjax.configs import finetune as finetune_config


def get_config(arg=None):
    a = configs.parse_arg(arg, steps=300, lora=0, pack=True, lr=3e-4)
    c = default.get_config()
    c.train.update(batch_size=16, steps=a.steps, log_every_steps=10)
    c.optim.update(lr=a.lr if not a.lora else 1e-3, min_lr=0.0, warmup_steps=10, weight_decay=0.0, schedule="linear")
    c.eval.update(every_steps=100, batch_size=32)
    c.checkpoint.every_steps = 100
    del c.sample  # read by pretraining only; sample from <workdir>/model with `gptjax sample --template`
    c.finetune = f = finetune_config.section()
    f.update(kind="sft", source="plays", pack=a.pack, lora_rank=a.lora)
    return c
