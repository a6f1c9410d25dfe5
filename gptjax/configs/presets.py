"""Model size presets from the GPT papers.

GPT-1: Radford et al. 2018, section 4.1. GPT-2: Radford et al. 2019, table 2 (with the 1024 context and the
50257-token BPE vocabulary). GPT-3: Brown et al. 2020, table 2.1 (2048 context, same vocabulary as GPT-2).
"""

from gptjax.errors import ConfigError

# name: (num_layers, d_model, num_heads, max_len, vocab_size, norm)
PRESETS = {
    "gpt1": (12, 768, 12, 512, 40478, "post"),
    "gpt2-small": (12, 768, 12, 1024, 50257, "pre"),
    "gpt2-medium": (24, 1024, 16, 1024, 50257, "pre"),
    "gpt2-large": (36, 1280, 20, 1024, 50257, "pre"),
    "gpt2-xl": (48, 1600, 25, 1024, 50257, "pre"),
    "gpt3-small": (12, 768, 12, 2048, 50257, "pre"),
    "gpt3-medium": (24, 1024, 16, 2048, 50257, "pre"),
    "gpt3-large": (24, 1536, 16, 2048, 50257, "pre"),
    "gpt3-xl": (24, 2048, 16, 2048, 50257, "pre"),  # the table prints 24 heads of 128, which 2048 cannot hold
    "gpt3-2.7b": (32, 2560, 32, 2048, 50257, "pre"),
    "gpt3-6.7b": (32, 4096, 32, 2048, 50257, "pre"),
    "gpt3-13b": (40, 5120, 40, 2048, 50257, "pre"),  # the table prints 5140, which 40 heads of 128 cannot make
    "gpt3-175b": (96, 12288, 96, 2048, 50257, "pre"),
}

# Parameter counts the papers report (embeddings included, head tied), for the preset test.
PAPER_PARAMS = {
    "gpt1": 117e6,
    "gpt2-small": 124e6,  # the paper's table says 117M; 124M is the count with the real 50257 vocab
    "gpt2-medium": 355e6,  # paper: 345M
    "gpt2-large": 774e6,  # paper: 762M
    "gpt2-xl": 1558e6,  # paper: 1542M
    "gpt3-small": 125e6,
    "gpt3-medium": 350e6,
    "gpt3-large": 760e6,
    "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9,
    "gpt3-13b": 13.0e9,
    "gpt3-175b": 174.6e9,
}


def apply_preset(model_cfg, name: str, keep=()) -> None:
    """Sets the shape fields of `model_cfg` (a ConfigDict) from the preset `name`, except the fields in `keep`
    (those given on the command line: `--config.model.num_layers=4` on a preset config means 4 layers)."""
    if name not in PRESETS:
        raise ConfigError(f"model.preset: {name!r} is not one of {', '.join(PRESETS)}")
    layers, d_model, heads, max_len, vocab, norm = PRESETS[name]
    # GPT-2 added the final LayerNorm and the residual projections' 1/sqrt(2 * layers) init; GPT-1 (post-LN) has
    # neither
    shape = dict(num_layers=layers, d_model=d_model, num_heads=heads, max_len=max_len, vocab_size=vocab, norm=norm,
                 final_norm=norm == "pre", scale_residual_init=norm == "pre")
    model_cfg.update({k: v for k, v in shape.items() if k not in keep})
