"""`gptjax train` with a `finetune` config section: GPT-1 classification (`finetune.kind=classify`) or instruction
tuning (`finetune.kind=sft`), from `train.init_from` (a pretrained workdir, never written to) or from scratch, on
the shared Trainer, hooks and checkpoints. Classification logs val_loss and val_accuracy (and val_f1, macro over
the classes) and writes `predictions.jsonl` (one line per validation example) at every evaluation."""

import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from gptjax import checkpoint, files, metrics, optimizer, sharding, trainer
from gptjax.errors import CheckpointError, ConfigError
from gptjax.finetune import data as ft_data
from gptjax.finetune import heads, tasks, transforms
from gptjax.model import GPT, ModelConfig
from gptjax.tokenizer import build_tokenizer, load_tokenizer
from gptjax.trainer import Trainer, log

KINDS = ("classify", "sft")


def config_section() -> ml_collections.ConfigDict:
    """The `finetune` section that experiment files add (experiments/finetune/*.py)."""
    f = ml_collections.ConfigDict()
    f.kind = "classify"  # classify (GPT-1 head) | sft (instruction tuning)
    f.source = "genre"  # genre (Shakespeare passages) | jsonl | tfds:NAME[/CONFIG] | plays (sft: offline instructions)
    f.train_path = ""  # jsonl
    f.val_path = ""
    f.tfds_train_split = "train"
    f.tfds_val_split = "validation"
    f.data_dir = ""  # TFDS data dir ("": TFDS's default)
    f.passage_chars = 300  # genre: passages of whole lines, at least this many characters
    f.task_type = "classification"  # classification | entailment | similarity | multiple_choice
    f.fields = ("text",)  # record fields holding the texts, in the task's order
    f.label_field = "label"
    f.labels = ()  # the label set (string forms); a label outside it is an error
    f.lm_weight = 0.5  # auxiliary LM loss weight (GPT-1's lambda); 0 turns it off
    f.truncate = True  # cut over-long examples by the documented rule (False: refuse them)
    f.epochs = 0.0  # > 0: train.steps = ceil(epochs * train examples / batch) (rows when sft), unless train.steps is
    #                 given on the command line (then that; giving both is an error)
    f.warmup_fraction = 0.0  # > 0: optim.warmup_steps = ceil(fraction * train.steps), unless optim.warmup_steps is
    #                          given on the command line (likewise)
    f.schedule = "cosine"  # cosine (optim's warmup-cosine) | linear (warmup then linear decay to 0, GPT-1)
    f.prompt_field = "prompt"  # sft
    f.response_field = "response"
    f.template = "### Instruction:\n{prompt}\n\n### Response:\n"
    f.pack = True  # sft: several examples per row, attending only within their own segment
    f.lora_rank = 0  # > 0: train LoRA adapters of this rank (and the head) instead of the whole model
    f.lora_alpha = 16.0
    f.lora_targets = ("qkv", "out", "fc", "proj")
    return f


def _check(config) -> None:
    f = config.finetune
    if f.kind not in KINDS:
        raise ConfigError(f"finetune.kind: {f.kind!r} is not one of {', '.join(KINDS)}")
    if f.kind == "classify":
        if f.task_type not in transforms.TASK_TYPES:
            raise ConfigError(f"finetune.task_type: {f.task_type!r} is not one of {', '.join(transforms.TASK_TYPES)}")
        if f.task_type != "multiple_choice" and len(f.labels) < 2:
            raise ConfigError(f"finetune.labels: needs two or more labels, got {list(f.labels)}")
    if f.schedule not in ("cosine", "linear"):
        raise ConfigError(f"finetune.schedule: {f.schedule!r} is not one of cosine, linear")
    bad = [t for t in f.lora_targets if t not in ("qkv", "out", "fc", "proj")]
    if f.lora_rank and bad:
        raise ConfigError(f"finetune.lora_targets: {bad} are not among qkv, out, fc, proj")


def given(config) -> frozenset:
    """The dotted config keys set on the command line (`--config.KEY=VALUE`), as `configs.finalize` records them in
    `config.overridden`: a value the run would otherwise compute from other fields (train.steps from
    finetune.epochs) is the user's when given. Empty for a config built in code."""
    return frozenset(config.get("overridden", None) or ())


def _tokenizer_fingerprint(workdir: str):
    d = files.path(workdir) / "tokenizer"
    if not (d / "tokenizer.json").is_file():
        return None
    return load_tokenizer(workdir).fingerprint or sorted(p.name for p in d.iterdir())


def _adopt(config, workdir: str) -> None:
    """init_from: never this workdir (or inside it); a workdir resumed here must have the same tokenizer. Either may
    be a URL (gs://...)."""
    from gptjax import train

    files.check_url(config.train.init_from, "train.init_from")
    source, here = str(files.path(config.train.init_from)).rstrip("/"), str(files.path(workdir)).rstrip("/")
    if here == source or here.startswith(source + "/"):
        raise ConfigError(f"train.init_from: {config.train.init_from} is (or holds) this run's workdir; fine-tune "
                          "into a new --workdir, the pretrained run is never written to")
    if not (files.path(source) / checkpoint.CONFIG_FILE).exists():
        raise CheckpointError(f"train.init_from: {config.train.init_from} is not a gptjax workdir (no config.json)")
    here, there = _tokenizer_fingerprint(workdir), _tokenizer_fingerprint(source)
    if here is not None and here != there:
        raise CheckpointError(f"train.init_from: {config.train.init_from} has another tokenizer than {workdir}/"
                              "tokenizer; fine-tune into a new --workdir")
    train.adopt_init_from(config, workdir)


def _optimizer(config, task, steps: int):
    """The optim section's AdamW (masked to the adapters with LoRA); with finetune.schedule=linear, GPT-1's linear
    warmup then linear decay to 0. Returns (tx, schedule)."""
    o = config.optim
    if config.finetune.schedule == "cosine":
        return task.optimizer(optimizer.make_optimizer(o, steps)), optimizer.schedule(o, steps)
    warm = o.warmup_steps
    sched = optax.join_schedules([optax.linear_schedule(o.lr / (warm + 1), o.lr, warm),
                                  optax.linear_schedule(o.lr, 0.0, max(steps - warm, 1))], [warm])
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
        optax.adamw(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                    mask=lambda p: optimizer.decay_mask(p, o.decay_embeddings)))
    return task.optimizer(tx), sched


def _check_given(config) -> None:
    """A field the run computes from another is never computed over a value given on the command line; giving both
    the field and the one it is computed from is refused."""
    f, cli = config.finetune, given(config)
    for field, source, value in (("train.steps", "finetune.epochs", f.epochs),
                                 ("optim.warmup_steps", "finetune.warmup_fraction", f.warmup_fraction)):
        if field in cli and source in cli and value > 0:
            raise ConfigError(f"{field}: given together with {source}={value}, which sets it; give one of them")


def _set_steps(config, num_train: int) -> None:
    """train.steps from finetune.epochs and optim.warmup_steps from finetune.warmup_fraction, except where the
    command line gave them: then the fraction or epochs is set to 0 in the saved config, which says what ran."""
    f, t, cli = config.finetune, config.train, given(config)
    with config.unlocked():
        if f.epochs > 0 and "train.steps" in cli:
            f.epochs = 0.0
        if f.epochs > 0:
            t.steps = max(1, math.ceil(f.epochs * num_train / t.batch_size))
        if f.warmup_fraction > 0 and "optim.warmup_steps" in cli:
            f.warmup_fraction = 0.0
        if f.warmup_fraction > 0:
            config.optim.warmup_steps = math.ceil(f.warmup_fraction * t.steps)


def _load_pretrained(config, init_from: str, abstract, num_new: int, kind: str, fresh):
    """Fresh params with the pretrained backbone copied in; the embedding's last `num_new` rows (the special
    tokens) keep their fresh values."""
    gpt_path = ("model", "gpt") if kind == "classify" else ("model",)
    sub_abs, sub_fresh = abstract, fresh
    for k in gpt_path:
        sub_abs, sub_fresh = sub_abs[k], sub_fresh[k]
    wte = sub_abs["wte"]
    base_abs = {**sub_abs, "wte": jax.ShapeDtypeStruct((wte.shape[0] - num_new, *wte.shape[1:]), wte.dtype,
                                                      sharding=wte.sharding)}
    pre = checkpoint.load_params(init_from, base_abs)
    grown = jax.jit(lambda new, old: new.at[:old.shape[0]].set(old), out_shardings=wte.sharding)(
        sub_fresh["wte"], pre["wte"])
    pre = {**pre, "wte": grown}

    def put(tree, path):
        if not path:
            return pre
        return {**tree, path[0]: put(tree[path[0]], path[1:])}

    return put(fresh, gpt_path)


def train_and_evaluate(config, workdir: str) -> dict:
    t_start = time.time()
    _check(config)
    _check_given(config)
    files.check_url(workdir)  # before any work: an unusable URL is one line, never a local folder named "gs:"
    f = config.finetune
    recs = {split: ft_data.records(f, split) for split in ("train", "validation")}  # bad data stops here
    if config.train.init_from:
        _adopt(config, workdir)
        tokenizer = load_tokenizer(workdir)
    else:
        key = f.fields[0] if f.kind == "classify" else f.prompt_field
        tokenizer = build_tokenizer(config.data, workdir, lambda: [str(r.get(key, "")) + "\n" + str(
            r.get(f.response_field, "")) for _, r in recs["train"]])
    base_vocab = config.model.vocab_size or tokenizer.vocab_size
    if base_vocab < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size: {base_vocab} is smaller than the tokenizer's {tokenizer.vocab_size}")
    seq_len = config.data.seq_len
    mesh = sharding.make_mesh(config.mesh.shape)
    trainer.check_batch_sizes(config, mesh)
    pi, pc = jax.process_index(), jax.process_count()
    lora = tasks.LoraSpec(f.lora_rank, f.lora_alpha, tuple(f.lora_targets)) if f.lora_rank else None
    if f.kind == "classify":
        specials = transforms.Specials.after(base_vocab)
        num_new = transforms.NUM_SPECIAL
        train_enc, val_enc = (ft_data.encode_classification(recs[s], tokenizer, f, specials, seq_len)
                              for s in ("train", "validation"))
        num_train = len(train_enc)
        C = train_enc.inputs.shape[1]
        num_classes = C if f.task_type == "multiple_choice" else len(f.labels)
    else:
        num_new = 0 if tokenizer.eos_id is not None else 1
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else base_vocab
        train_rows, val_rows = (ft_data.sft_rows(ft_data.encode_sft(recs[s], tokenizer, f, eos, seq_len), seq_len,
                                                 f.pack) for s in ("train", "validation"))
        num_train = len(train_rows["inputs"])
    with config.unlocked():
        config.model.vocab_size = base_vocab + num_new
    _set_steps(config, num_train)
    checkpoint.check_compatible(workdir, config)
    checkpoint.write_config(workdir, config)

    model_cfg = ModelConfig.from_config(config.model)
    if f.kind == "classify":
        model = heads.ClassifierGPT(model_cfg, num_classes, heads.COMBINE[f.task_type])
        task = tasks.Classification(seq_len, C, f.lm_weight, model_cfg.loss_impl, lora)
    else:
        model = GPT(model_cfg)
        task = tasks.InstructionTuning(seq_len, model_cfg.loss_impl, lora)
    tx, sched = _optimizer(config, task, config.train.steps)
    run = Trainer(config, mesh, model, task, tx=tx)
    run.schedule = sched
    mngr = checkpoint.manager(workdir, config.checkpoint)
    init_from = config.train.init_from

    def init_params(abstract):
        fresh = run.init_state(config.seed).params
        return _load_pretrained(config, init_from, abstract, num_new, f.kind, fresh)

    state, start = run.restore_or_init(mngr, config.seed, init_params if init_from else None)
    log(f"resumed from {workdir}/checkpoints/{start}" if start else
        f"initialised from {init_from}" if init_from else "initialised from scratch")
    B = config.train.batch_size
    local = B // pc
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log(f"gptjax finetune ({f.kind}, {f.source}): {n_params / 1e6:.2f}M params"
        + (f" (LoRA rank {f.lora_rank})" if lora else "") + f", {num_train} training "
        + ("examples" if f.kind == "classify" else "rows")
        + f", steps {start}..{config.train.steps}, workdir {workdir}")

    eval_batch = config.eval.batch_size or B
    if f.kind == "classify":
        scores_fn = jax.jit(lambda p, b: task.scores(model, p, b),
                            in_shardings=(run.state_shardings.params, sharding.batch_sharding(mesh)))

        def batch_fn(step):
            idx = ft_data.row_indices(num_train, B, config.seed, step)[pi * local:(pi + 1) * local]
            return ft_data.classification_batch(train_enc, idx)

        def validate(loop):
            return evaluate_classification(run, scores_fn, loop.state.params, val_enc, eval_batch, list(f.labels),
                                           workdir, loop.step)
        tokens_per_step = B * C * seq_len
    else:
        def batch_fn(step):
            idx = ft_data.row_indices(num_train, B, config.seed, step)[pi * local:(pi + 1) * local]
            return {k: v[idx] for k, v in train_rows.items()}

        def validate(loop):
            n = len(val_rows["inputs"])
            local_eval = eval_batch // pc
            batches = []
            for b in range(math.ceil(n / eval_batch)):
                idx = b * eval_batch + pi * local_eval + np.arange(local_eval)
                rows = {k: v[np.minimum(idx, n - 1)] for k, v in val_rows.items()}
                rows["weights"] = rows["weights"] * (idx < n)[:, None]
                batches.append(rows)
            return {"val_loss": run.evaluate(loop.state.params, batches)["val_loss"]}
        tokens_per_step = B * seq_len

    hooks = [
        trainer.LogHook(config.train.log_every_steps, tokens_per_step, 0.0, None),
        trainer.EvalHook(config.eval.every_steps, validate),
        trainer.CheckpointHook(config.checkpoint.every_steps, mngr,
                               lambda step: {"step": int(step), "seed": config.seed, "finetune": f.kind,
                                             "train_examples": num_train, "batch_size": B,
                                             "order": "epoch permutations: default_rng([seed, epoch, 7])"}, workdir),
    ]
    writer = metrics.MetricWriter(workdir)
    try:
        loop = trainer.run_loop(run, state, start, config.train.steps, batch_fn, hooks, writer)
    finally:
        writer.close()
    if f.kind == "sft":
        export_model(config, workdir, task, loop.state.params, loop.step)
    if jax.process_index() == 0 and (files.path(workdir) / "metrics.jsonl").exists():
        metrics.plot_loss_curve(files.path(workdir) / "metrics.jsonl", files.path(workdir) / "loss_curve.png")
    loop.last["wall_seconds"] = time.time() - t_start
    return loop.last


def export_model(config, workdir: str, task, params, step: int) -> str:
    """An instruction-tuned model as a plain gptjax workdir, `<workdir>/model/` (config, tokenizer, params-only
    checkpoint with any LoRA adapters merged), for `gptjax sample --workdir=<workdir>/model --template` and evals."""
    out = str(files.path(workdir) / "model")
    merged = jax.jit(task.model_params)(params)
    checkpoint.write_config(out, config)
    src, dst = files.path(workdir) / "tokenizer", files.path(out) / "tokenizer"
    if jax.process_index() == 0 and not dst.exists():
        files.copytree(src, dst)
    checkpoint.save_params(out, merged, step)
    log(f"wrote the instruction-tuned model (adapters merged) to {out}")
    return out


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """F1 averaged over the classes that occur in gold or predictions."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def evaluate_classification(run, scores_fn, params, enc, eval_batch: int, labels: list, workdir: str | None,
                            step: int) -> dict:
    """val_loss, val_accuracy and val_f1 over every validation example; writes predictions.jsonl (example, gold,
    predicted, probabilities) to the workdir."""
    pi, pc = jax.process_index(), jax.process_count()
    outs = []
    with run.context():
        for local in ft_data.eval_batches(enc, eval_batch, pi, pc):
            scores = scores_fn(params, sharding.host_local_to_global(local, run.mesh))
            outs.append(np.asarray(multihost_utils.process_allgather(scores, tiled=True)))
    scores = np.concatenate(outs)[:len(enc)]
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(scores), axis=-1))
    pred = logp.argmax(-1)
    gold = enc.labels
    values = {"val_loss": float(-logp[np.arange(len(gold)), gold].mean()),
              "val_accuracy": float((pred == gold).mean()), "val_f1": macro_f1(pred, gold, logp.shape[1])}
    if workdir is not None and pi == 0:
        names = labels or [str(i) for i in range(logp.shape[1])]
        lines = [json.dumps({"example": w, "label": names[g] if g < len(names) else int(g),
                             "prediction": names[p] if p < len(names) else int(p),
                             "probs": [round(float(x), 5) for x in np.exp(lp)]})
                 for w, g, p, lp in zip(enc.where, gold, pred, logp)]
        files.write_text(files.path(workdir) / "predictions.jsonl", "\n".join(lines) + "\n")
        files.write_text(files.path(workdir) / "predictions_step.json", json.dumps({"step": int(step)}) + "\n")
    return values
