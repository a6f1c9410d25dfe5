"""GPT-1 vs GPT-2, one change at a time, on the Shakespeare corpus: what each of GPT-2's changes to GPT-1 is worth.

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
  pos_embedding=sinusoidal    fixed sinusoidal positions instead of learned
  tie_embeddings=False an output head separate from the token embedding
  GPT-1 block          post-LN, no final LayerNorm, unscaled init (GELU, learned, tied, as GPT-1 had)

Size: a 4 x 128 GPT (1.09M parameters with the 2048-piece BPE) for 300 steps of 16 x 128 tokens (0.61M tokens,
about a third of an epoch), evaluated every 50 steps. On 2 CPU cores, with three other jobs sharing the machine,
this model trained at about 2,460 tokens/s (measured 2026-11-22): about 4.5 minutes per run, 36 for the sweep.
The size is chosen for an idle machine, where the sweep should fit in 30 minutes. Each run ends with the held-out
Shakespeare tasks at 0 and 1 shots (200 examples; eval.tasks), which the results table reports beside the losses.
`:steps=N` changes the length.

python launch/sweep.py --config=experiments/sweeps/gpt1_vs_gpt2_ablation.py --workdir=runs/ablation
"""

from gptjax.configs import ConfigError, default, parse_arg

GPT2 = {"model.norm": "pre", "model.final_norm": True, "model.scale_residual_init": True,
        "model.activation": "gelu", "model.pos_embedding": "learned", "model.tie_embeddings": True}
ALTERNATIVE = {"model.norm": "post", "model.final_norm": False, "model.scale_residual_init": False,
               "model.activation": "relu", "model.pos_embedding": "sinusoidal", "model.tie_embeddings": False}
GPT1_BLOCK = ("model.norm", "model.final_norm", "model.scale_residual_init")


def get_config(arg=None):
    opts = parse_arg(arg, steps=300)
    c = default.get_config()
    c.model.update(num_layers=4, d_model=128, num_heads=4, dropout=0.0)
    c.train.update(steps=opts.steps, batch_size=16, log_every_steps=25)
    c.optim.update(warmup_steps=min(100, opts.steps // 10))
    c.eval.update(every_steps=max(1, opts.steps // 6), steps=20)
    c.checkpoint.update(every_steps=opts.steps)
    # In-context evaluation at the end of each run (the sweep's results table gets a column per task and K)
    c.eval.update(tasks=("shakespeare_next_line", "shakespeare_last_word"), tasks_shots=(0, 1), tasks_limit=200,
                  tasks_every_steps=opts.steps)
    c.sample.update(num_samples=1, max_new_tokens=50)
    for key, value in GPT2.items():  # the base run is GPT-2's block, whatever the defaults are
        group, name = key.split(".")
        if name not in c[group]:  # never add a key the model would silently ignore
            raise ConfigError(f"{key}: not a config key of this gptjax, so this ablation cannot run")
        c[group][name] = value
    return c


def get_sweep():
    """The base (GPT-2) run, one run per knob set back to its alternative, and the full GPT-1 block."""
    return [{}] + [{key: value} for key, value in ALTERNATIVE.items()] + [{k: ALTERNATIVE[k] for k in GPT1_BLOCK}]
