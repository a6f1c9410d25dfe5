"""The base ConfigDict every experiment starts from: the embedded Shakespeare run.

Each field is typed by its default value; ml_collections refuses an override of the wrong type, and the locked
dict refuses unknown keys. `validate` checks what types cannot: a config that could not train.
"""

import ml_collections

from gptjax.configs import finetune, presets, rl, smoke
from gptjax.configs.model import ATTENTION_IMPLS, EMBED_IMPLS, LOSS_IMPLS, NORM_IMPLS, REMAT_POLICIES, model_config_dict
from gptjax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")  # optim.schedule (gptjax/optimizer.py)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Every model field and its default is listed, with its meaning, in gptjax/model.py::ModelConfig.
    c.model = m = model_config_dict()
    m.preset = ""  # one of configs.presets.PRESETS; sets the shape fields

    c.data = d = ml_collections.ConfigDict()
    d.source = "shakespeare"  # shakespeare | text | tfds:NAME[/CONFIG]
    d.path = ""  # text: file, glob or comma-separated files
    d.val_fraction = 0.1  # text: last fraction of characters held out
    d.tfds_text_key = "text"  # tfds: feature holding the document text
    d.tfds_train_split = "train"
    d.tfds_val_split = "validation"
    d.data_dir = ""  # where TFDS builders write; "": ~/.cache/gptjax/tfds
    d.tokenizer = "sentencepiece"  # char | sentencepiece | hf (a tokenizer.json or vocab.json+merges.txt dir)
    d.spm_model_type = "bpe"  # bpe | unigram (when training a sentencepiece model)
    d.tokenizer_path = ""  # sentencepiece: an existing .model ("": train one on the training split); hf: its dir
    d.vocab_size = 2048  # sentencepiece vocabulary size when training one
    d.seq_len = 128  # tokens per training sequence
    d.shards = 0  # train shards S (0: lcm(8, process count)); batches depend on S, not on the process count

    c.train = t = ml_collections.ConfigDict()
    t.steps = 1000
    t.batch_size = 16  # global batch, in sequences
    t.grad_accum_steps = 1  # micro-batches per step (the batch is split into this many)
    t.log_every_steps = 50
    t.init_from = ""  # a workdir or checkpoint step dir whose params start this run (fine-tuning)
    # A jax.profiler trace of steps START..END-1 into <workdir>/plugins/profile (TensorBoard's profile plugin,
    # xprof); (0, 0): none. By process 0, or by every process of a multi-host run with profile_all_processes.
    t.profile_steps = (0, 0)
    t.profile_all_processes = False

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 1e-3
    o.min_lr = 1e-4
    o.warmup_steps = 100
    o.decay_steps = 0  # 0: train.steps
    o.b1 = 0.9
    o.b2 = 0.99
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.decay_embeddings = False
    o.clip_norm = 1.0  # 0: no clipping
    o.schedule = "cosine"  # cosine | linear | constant, after a linear warmup (gptjax/optimizer.py)

    c.eval = e = ml_collections.ConfigDict()
    e.every_steps = 200
    e.steps = 20
    e.batch_size = 0  # 0: train.batch_size
    e.max_examples = 0  # runs validated on examples (fine-tuning, reward model, DPO): at most this many (0: all)
    # In-context evaluation during training (gptjax/evals): task specs, each at every K in tasks_shots, on
    # tasks_limit examples, every tasks_every_steps steps (0: eval.every_steps); logged as icl/<task>/<K>shot_<metric>.
    e.tasks = ()
    e.tasks_shots = (0, 1, 4)
    e.tasks_limit = 100
    e.tasks_every_steps = 0

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 500
    k.keep = 2
    k.async_save = True
    # A newest checkpoint that cannot be read when the run resumes (truncated or missing files): "fallback" renames
    # it aside as <step>.corrupt and resumes from the newest step that reads, saying so in one line; "refuse" stops
    # with one line naming it. Also what reading train.init_from does.
    k.on_corrupt = "fallback"

    c.mesh = ms = ml_collections.ConfigDict()
    ms.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
    # Logical axis -> mesh axes. Parameters: embed/vocab/mlp/heads/kv/layers; activations: batch/length/act_*.
    ms.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("layers", None),
        ("length", None),
        # The residual stream's width. "tensor" (MaxText's activation_embed) keeps 1/tensor of the block inputs
        # that remat saves on each chip: GPT-3 175B on v5p-1024 at fsdp 64 x tensor 8 needs 125.9 GiB of
        # temporaries per chip with None and 44.2 with "tensor" (docs/plan.md); experiments/pretrain/gpt3.py takes
        # it wherever it shards over tensor. Not the default: on 8 virtual CPU devices, mesh (2, 2, 2) with 4 rows,
        # jax 0.10.2's compiled program gives wrong attention outputs with it (tests/test_sharding.py holds the case).
        ("act_embed", None),
        ("act_mlp", "tensor"),
        ("act_heads", "tensor"),
        ("act_vocab", "tensor"),
    )

    c.sample = s = ml_collections.ConfigDict()
    s.prompt = "ROMEO:"
    s.num_samples = 2
    s.max_new_tokens = 200
    s.temperature = 0.8
    s.top_k = 0
    s.top_p = 1.0
    return c


def finalize(config: ml_collections.ConfigDict, overridden=(), plan: bool = False,
             shrink: bool = True) -> ml_collections.ConfigDict:
    """Applies the model preset (if any), shrinks the config for a smoke run under GPTJAX_SMOKE=1 (`plan`: for
    `gptjax plan`; `shrink=False` for a config that describes given weights, as import-hf's), and checks it; returns
    it locked. `overridden`: the dotted keys given on the command line (`model.num_heads`, ...), which the preset
    leaves as they are."""
    with config.unlocked():
        if config.model.preset:
            keep = {k.removeprefix("model.") for k in overridden if k.startswith("model.")}
            presets.apply_preset(config.model, config.model.preset, keep)
            config.model.preset = ""
        # The keys given on the command line: a run never computes its own value over one of these (fine-tuning's
        # epochs -> train.steps, for example); config.json records them.
        config.overridden = tuple(sorted(overridden))
        if shrink and smoke.enabled():
            smoke.shrink(config, plan=plan)
            m = config.model
            smoke.announce(f"a smoke run: {config.train.steps} steps of {config.train.batch_size} x "
                           f"{config.data.seq_len} tokens, {m.num_layers} x {m.d_model} model")
    validate(config)
    config.lock()
    return config


def validate(c: ml_collections.ConfigDict) -> None:
    m, d, t, o = c.model, c.data, c.train, c.optim

    def need(ok, key, problem):
        if not ok:
            raise ConfigError(f"{key}: {problem}")

    need(m.num_layers > 0, "model.num_layers", f"must be positive, got {m.num_layers}")
    need(m.num_heads > 0 and m.d_model % m.num_heads == 0, "model.num_heads",
         f"{m.num_heads} heads do not divide model.d_model={m.d_model}")
    need(m.pos_embedding in ("learned", "sinusoidal"), "model.pos_embedding",
         f"{m.pos_embedding!r} is not one of learned, sinusoidal")
    need(m.norm in ("pre", "post"), "model.norm", f"{m.norm!r} is not one of pre, post")
    need(m.remat in REMAT_POLICIES, "model.remat", f"{m.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
    need(m.activation in ("gelu", "relu"), "model.activation", f"{m.activation!r} is not one of gelu, relu")
    for key, allowed in (("attention_impl", ATTENTION_IMPLS), ("norm_impl", NORM_IMPLS), ("loss_impl", LOSS_IMPLS),
                         ("embed_impl", EMBED_IMPLS)):
        need(m.get(key, "auto") in allowed, f"model.{key}", f"{m[key]!r} is not one of {', '.join(allowed)}")
    for key in ("param_dtype", "dtype"):
        need(m[key] in ("float32", "bfloat16", "float16", "float64"), f"model.{key}",
             f"{m[key]!r} is not a float dtype name")
    chunks = m.get("loss_chunks", 1)
    need(isinstance(chunks, int) and chunks >= 1 and d.seq_len % chunks == 0, "model.loss_chunks",
         f"{chunks} pieces do not split data.seq_len={d.seq_len}")
    need(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    need(d.seq_len > 0, "data.seq_len", f"must be positive, got {d.seq_len}")
    need(d.seq_len <= m.max_len, "data.seq_len",
         f"{d.seq_len} is longer than the position table model.max_len={m.max_len}")
    need(d.tokenizer in ("char", "sentencepiece", "hf"), "data.tokenizer",
         f"{d.tokenizer!r} is not one of char, sentencepiece, hf")
    need(d.source in ("shakespeare", "text", "synthetic:icl", "synthetic:icl_control")
         or d.source.startswith("tfds:"), "data.source",
         f"{d.source!r} is not one of shakespeare, text, tfds:NAME[/CONFIG], synthetic:icl[_control]")
    need(d.source != "text" or bool(d.path), "data.path", "data.source=text needs a file path")
    need(0.0 < d.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
    need(t.steps > 0, "train.steps", f"must be positive, got {t.steps}")
    need(t.batch_size > 0, "train.batch_size", f"must be positive, got {t.batch_size}")
    need(t.grad_accum_steps > 0 and t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps",
         f"{t.grad_accum_steps} micro-batches do not divide train.batch_size={t.batch_size}")
    prof = tuple(t.get("profile_steps", (0, 0)))
    need(len(prof) == 2 and all(isinstance(x, int) for x in prof) and (prof == (0, 0) or 0 <= prof[0] < prof[1]),
         "train.profile_steps", f"needs (START, END) with 0 <= START < END (steps START..END-1), got {prof}")
    need(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    need(o.lr > 0 and 0 <= o.min_lr <= o.lr, "optim.min_lr", f"needs 0 <= min_lr <= lr, got {o.min_lr} and {o.lr}")
    need(o.schedule in SCHEDULES, "optim.schedule", f"{o.schedule!r} is not one of {', '.join(SCHEDULES)}")
    need(c.eval.every_steps > 0 and c.eval.steps > 0, "eval.every_steps", "eval.every_steps and eval.steps must be positive")
    need(c.checkpoint.every_steps > 0, "checkpoint.every_steps", f"must be positive, got {c.checkpoint.every_steps}")
    need(c.checkpoint.keep > 0, "checkpoint.keep", f"must be positive, got {c.checkpoint.keep}")
    need(c.checkpoint.get("on_corrupt", "fallback") in ("fallback", "refuse"), "checkpoint.on_corrupt",
         f"{c.checkpoint.get('on_corrupt')!r} is not one of fallback, refuse")
    shape = tuple(c.mesh.shape)
    need(len(shape) == 3 and all(isinstance(s, int) and (s > 0 or s == -1) for s in shape)
         and list(shape).count(-1) <= 1, "mesh.shape",
         f"{shape} is not three positive sizes (data, fsdp, tensor) with at most one -1")
    sections = [name for name in ("finetune", "rl") if name in c]
    need(len(sections) <= 1, sections[-1] if sections else "", "a config fine-tunes (a finetune section) or runs an "
         "rl stage (an rl section), not both")
    if "finetune" in c:
        finetune.validate(c)
    if "rl" in c:
        rl.validate(c)
