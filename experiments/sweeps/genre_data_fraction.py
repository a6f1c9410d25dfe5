"""GPT-1's claim where it can be tested here: how much pretraining helps as labelled data gets scarce. A play's genre
from a passage (experiments/finetune/genre.py), trained on 1%, 3%, 10% and 100% of the 13,411 training passages,
three ways, three seeds each:

  pretrained   the whole model fine-tuned from a language model pretrained on the plays
  scratch      the same shape and tokenizer, randomly initialised
  lora         rank-8 adapters and the head on the pretrained model, the rest frozen

Each at learning rates 1e-3 and 3e-3 (get_grid()); for each way and fraction the curve keeps the rate with the best
mean validation accuracy. A first run at fixed rates (pretrained 3e-4, genre.py's; scratch and LoRA 1e-3) left the
pretrained model at chance at every fraction while scratch reached 0.34 at 100%: the comparison was the rates'.

A seed draws the training subset (nested: one seed's 1% is inside its 3%, its 3% inside its 10%), the head's
initialisation and the data order, so the three ways pair by seed. The six held-out plays' 2,094 passages are split
once, half validation and half test (finetune.test_fraction=0.5, the same records for every run); 500 of each are
scored at every evaluation (eval.max_examples). Early stopping is the same for every run: the evaluation with the
best validation accuracy (the earliest on a tie) is the run's result, and its test accuracy is what the curve
reports (gptjax/finetune/curve.py); validation is never reported, test is never chosen on.

Length: three epochs of the subset, at least 40 and at most 250 steps of 16 passages (40, 76, 250, 250 steps), so
the 10% and 100% runs see the same number of passages and differ in how many are distinct. Five evaluations a run.

The model is 4 x 64 (the GPT-1 ablation's shape, 0.35M parameters), at 96 tokens of context (a passage is about
90 tokens), so that the 72 runs fit in about half an hour here (measured 2026-12-07: 25.6 minutes with
--parallel=2; docs/finetune.md has the results). The language model is pretrained first (the default
run's corpus, all plays but every 10th, which includes three of the six held-out genre plays: it has read some test
passages, never their labels):

  gptjax train --config=experiments/pretrain/shakespeare.py --config.train.steps=1500 --config.model.d_model=64 \
      --config.model.num_heads=4 --workdir=runs/genre_lm
  python launch/sweep.py --config=experiments/sweeps/genre_data_fraction.py --workdir=runs/genre_fraction --parallel=2
  python -m gptjax.finetune.curve runs/genre_fraction

The last command writes curve.md (test accuracy per way and fraction, mean and sd over seeds, the paired difference
pretrained - scratch with a 95% interval, the majority class's accuracy as a floor) and curve.png (bands: lowest
to highest seed).
"""

from gptjax import configs

genre = configs.sibling(__file__, "../finetune/genre")

PRETRAINED = "runs/genre_lm"  # the language model the pretrained and LoRA arms start from
TRAIN_PASSAGES = 13_411  # the genre task's training passages (gptjax.finetune.data.genre_records("train"))
FRACTIONS = (0.01, 0.03, 0.1, 1.0)
BATCH = 16


def steps_for(fraction: float) -> int:
    """Three epochs of the subset, within [40, 250] steps."""
    return min(250, max(40, -(-3 * round(fraction * TRAIN_PASSAGES) // BATCH)))


def get_config(arg=None):
    c = genre.get_config(arg)
    c.model.update(num_layers=4, d_model=64, num_heads=4)  # the pretrained model's shape, for the scratch arm
    c.data.seq_len = 96
    c.train.update(batch_size=BATCH, steps=steps_for(1.0), log_every_steps=10)
    c.finetune.update(epochs=0.0, test_fraction=0.5)
    c.optim.update(lr=1e-3, warmup_steps=2)
    c.eval.update(max_examples=500, batch_size=100)
    c.checkpoint.every_steps = 1000  # the run saves at its end whatever this is
    return c


def get_sweep():
    """Each way at each fraction: the way's start, learning rate and the fraction's length."""
    arms = []
    for way in ("pretrained", "scratch", "lora"):
        for fraction in FRACTIONS:
            steps = steps_for(fraction)
            start = ({"train.init_from": PRETRAINED} if way != "scratch"
                     else {"data.tokenizer_path": PRETRAINED + "/tokenizer/spm.model"})
            arms.append({"finetune.train_fraction": fraction, "finetune.lora_rank": 8 if way == "lora" else 0,
                         **start, "train.steps": steps, "eval.every_steps": max(1, steps // 5)})
    return arms


def get_grid():
    """Each way and fraction at two learning rates; the curve keeps the one with the best validation accuracy."""
    return {"optim.lr": [1e-3, 3e-3]}


def get_seeds():
    """Three seeds: each draws the subset, the head's initialisation and the data order, shared by the three ways."""
    return [0, 1, 2]
