"""GPT-1 vs GPT-2, one change at a time, on the Shakespeare corpus: what each of GPT-2's changes to GPT-1 is worth,
each arm at its own learning rate and warmup, over three seeds.

GPT-2 (Radford et al. 2019, section 2.3) changed GPT-1's block in three ways: LayerNorm moved to the input of
each sub-block (pre-LN), a final LayerNorm after the last block, and residual-projection weights initialised with
std 0.02 / sqrt(2 * num_layers). Three other choices that both kept are ablated too: GELU (the original
Transformer used ReLU), learned positions (it used sinusoids) and the output head tied to the token embedding.
The base entry is the GPT-2 block; every other entry sets exactly one knob to its alternative, and the last entry
is the whole GPT-1 block:

  base                 pre-LN, final LayerNorm, scaled residual init, GELU, learned positions, tied head
  norm=post            LayerNorm after each residual sum (GPT-1)
  final_norm=False     no LayerNorm after the last block (GPT-1)
  scale_residual_init=False   every weight at std 0.02 (GPT-1)
  activation=relu      ReLU MLP instead of GELU
  pos_embedding=sinusoidal,embed_scale=True   the Transformer's sinusoids, with its token embeddings scaled by
                       sqrt(d_model) (model.embed_scale): unscaled embeddings at std 0.02 drown under the table
  tie_embeddings=False an output head separate from the token embedding
  GPT-1 block          post-LN, no final LayerNorm, unscaled init (GELU, learned, tied, as GPT-1 had)

Tuning and seeds. One seed at one shared learning rate (1e-3, 30 warmup steps), as this sweep ran before, found
"post-LN does not train", though GPT-1 trained post-LN at 2.5e-4 with a long warmup. Now every arm runs at each
point of get_grid(), optim.lr in {5e-4, 2e-3} (4x apart, around that 1e-3) x optim.warmup_steps in {20, 60} (10%
and 30% of the run), with each seed of get_seeds(), and launch/sweep.py chooses each arm's point on its mean
validation loss over the seeds and reports its difference from the base with a 95% interval, paired by seed (a
seed fixes the data order). The held-out Shakespeare tasks at 0 and 1 shots (100 examples each; eval.tasks) are
read at the chosen point.

Size and budget (issue 22: at most 60 minutes on the 2-core machine). 8 arms x 4 points x 3 seeds = 96 runs, so
at most 37 s a run. The one-seed sweep's model, 4 x 128 for 300 steps of 16 x 128 tokens, took about 4.5 minutes
a run with three other jobs on the machine and 135 s idle; measured again on 2026-12-07 with another session's
jobs beside it, 116 s (7,500 tokens/s: 82 s of training, 34 s of starting, tokenizing, compiling, evaluating and
sampling). 96 of those would take 3.1 hours. A run costs 20 to 30 s whatever its length, so the model and the run
shrink: 4 x 64 (4 heads of 16; 0.35M parameters, 0.13M of them the token embedding) on 16 x 64 tokens a step at 13,000
to 20,000 tokens/s, 200 steps (0.2M tokens, an eighth of an epoch of the 1.7M-token training split), evaluated
every 50 steps on 10 batches. Measured the same day, same conditions: 36.7 s a run (about 10 s of it training), so
96 runs take about 59 minutes: the budget, with nothing to spare. Two runs at once (--parallel=2) gained about 10%
there (two 300-step runs of this model in 97 s against 54 s for one). `:steps=N` changes the length (and the
evaluation cadence with it); the grid's warmups stay 20 and 60 steps.

Measured 2026-12-07 with --parallel=2: 48.8 minutes for the 96 runs (docs/ablations.md has the results).

python launch/sweep.py --config=experiments/sweeps/gpt1_vs_gpt2_ablation.py --workdir=runs/ablation --parallel=2
"""

from gptjax.configs import ConfigError, default, parse_arg

GPT2 = {"model.norm": "pre", "model.final_norm": True, "model.scale_residual_init": True,
        "model.activation": "gelu", "model.pos_embedding": "learned", "model.tie_embeddings": True}
ALTERNATIVE = {"model.norm": "post", "model.final_norm": False, "model.scale_residual_init": False,
               "model.activation": "relu", "model.pos_embedding": "sinusoidal", "model.tie_embeddings": False}
# What an alternative comes with where it came from: the Transformer scaled its embeddings beside the sinusoids.
COMPANIONS = {"model.pos_embedding": {"model.embed_scale": True}}
GPT1_BLOCK = ("model.norm", "model.final_norm", "model.scale_residual_init")
STEPS = 200


def get_config(arg=None):
    opts = parse_arg(arg, steps=STEPS)
    c = default.get_config()
    c.model.update(num_layers=4, d_model=64, num_heads=4, dropout=0.0)
    c.data.update(seq_len=64)
    c.train.update(steps=opts.steps, batch_size=16, log_every_steps=25)
    c.optim.update(warmup_steps=min(100, opts.steps // 10))
    c.eval.update(every_steps=max(1, opts.steps // 4), steps=10)
    c.checkpoint.update(every_steps=opts.steps)
    # In-context evaluation at the end of each run (the sweep's results table gets a column per task and K)
    c.eval.update(tasks=("shakespeare_next_line", "shakespeare_last_word"), tasks_shots=(0, 1), tasks_limit=100,
                  tasks_every_steps=opts.steps)
    c.sample.update(num_samples=1, max_new_tokens=50)
    for key, value in {**GPT2, "model.embed_scale": False}.items():  # the base is GPT-2's block, whatever the defaults
        group, name = key.split(".")
        if name not in c[group]:  # never add a key the model would silently ignore
            raise ConfigError(f"{key}: not a config key of this gptjax, so this ablation cannot run")
        c[group][name] = value
    return c


def get_sweep():
    """The base (GPT-2) run, one run per knob set back to its alternative, and the full GPT-1 block."""
    singles = [{key: value, **COMPANIONS.get(key, {})} for key, value in ALTERNATIVE.items()]
    return [{}] + singles + [{k: ALTERNATIVE[k] for k in GPT1_BLOCK}]


def get_seeds():
    """Three seeds: each fixes the data order and the initialisation, so the arms' differences pair by seed."""
    return [0, 1, 2]


def get_grid():
    """Tuned per arm: a learning rate either side of the one-seed sweep's 1e-3 (the lower toward GPT-1's 2.5e-4),
    each with a short and a long warmup (post-LN needs warmup; GPT-1 warmed up over 2,000 of its steps)."""
    return {"optim.lr": [5e-4, 2e-3], "optim.warmup_steps": [20, 60]}
