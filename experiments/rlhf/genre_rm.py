"""InstructGPT step 2 on the offline genre experiment: sample 4 continuations of 384 play openings from the default
Shakespeare model, rank each prompt's four by the genre classifier's P(comedy) (the simulated labellers), and train a
reward model (the same GPT with a scalar head on the last token) on all 6 pairs per prompt.

  gptjax train --config=experiments/rlhf/genre_rm.py --workdir=runs/rlhf/genre_rm

Needs runs/shakespeare (README's main job) and runs/genre (experiments/finetune/genre.py). Writes comparisons.jsonl,
logs val_accuracy (pairwise accuracy on the held-out 10% of prompts) and writes reward_norm.json (the starting model's
samples average reward 0).
"""

from gptjax import configs

_genre = configs.sibling(__file__, "_genre")


def get_config(arg=None):
    c, a = _genre.genre("reward", arg, prompts=384, steps=100)
    c.train.update(steps=a.steps, batch_size=16)
    c.optim.update(lr=1e-4, warmup_steps=20)
    c.eval.update(every_steps=25, batch_size=32)
    c.checkpoint.every_steps = 50
    c.rl.update(num_prompts=a.prompts, num_responses=4)
    return c
