"""The kinds of training, one page each, and the registry that picks one for a config.

A config's sections say what `gptjax train` runs: none, pretraining (`pretrain.py`); a `finetune` section,
fine-tuning (`finetune.py`: GPT-1 heads, instruction tuning, LoRA); an `rl` section, the stage `rl.stage` names
(`reward.py`, `ppo.py` for PPO and GRPO, `rloo.py`, `dpo.py`). A config with both sections is refused when it is
finalized (gptjax/configs/default.py). Each kind's module has `train(config, workdir) -> dict` (the final metrics)
and `planned(config) -> (model, objective)`, what `gptjax plan` compiles for it (and `configure(config)`, where a
kind sets config fields before it runs); each hands its model, objective, batches and hooks to
`trainer.Trainer.fit`, which owns the rest of the run.

Adding a kind: a new module here with those two functions (copy the closest one, rloo.py for an RL method) and a
line in KINDS.
"""

import importlib
import time

KINDS = {
    "pretrain": "gptjax.runs.pretrain",
    "finetune": "gptjax.runs.finetune",
    "reward": "gptjax.runs.reward",
    "ppo": "gptjax.runs.ppo",
    "grpo": "gptjax.runs.ppo",
    "rloo": "gptjax.runs.rloo",
    "dpo": "gptjax.runs.dpo",
}


def kind(config) -> str:
    if "finetune" in config:
        return "finetune"
    if "rl" in config:
        return config.rl.stage
    return "pretrain"


def module(config):
    return importlib.import_module(KINDS[kind(config)])


def train(config, workdir: str) -> dict:
    """Trains (or resumes) the run that `config` describes in `workdir`; returns its final metrics, with the wall
    time of the whole run (data, compiling, training, what it writes at the end) as wall_seconds."""
    from gptjax import configs

    start = time.time()
    configs.validate(config)  # a config built in code, not by finalize, is checked too
    last = module(config).train(config, workdir)
    last["wall_seconds"] = time.time() - start
    return last
