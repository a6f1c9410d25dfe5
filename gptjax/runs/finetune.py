"""Fine-tuning (a `finetune` config section, gptjax/configs/finetune.py): GPT-1 classification with its input
transformations and auxiliary LM loss (`finetune.kind=classify`), or instruction tuning on response tokens
(`finetune.kind=sft`), optionally LoRA adapters only; from `train.init_from` (never written to) or from scratch.

Classification logs val_loss, val_accuracy and val_f1 (macro over the classes) and writes `predictions.jsonl` at
every evaluation; with `finetune.test_fraction` it logs test_loss, test_accuracy and test_f1 on the records set
aside from validation too. `finetune.train_fraction` trains on a seeded, nested subset of the training records.
Instruction tuning writes the tuned GPT, adapters merged, to `<workdir>/model` at the end, for
`gptjax sample --workdir=<workdir> --template`.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from gptjax import batching, checkpoint, files, optimizer, sharding, trainer, workdirs
from gptjax.errors import ConfigError
from gptjax.finetune import data as ft_data
from gptjax.finetune import heads, objectives, transforms
from gptjax.model import GPT, ModelConfig
from gptjax.tokenizer import build_tokenizer, load_tokenizer


def _lora(f):
    return objectives.LoraSpec(f.lora_rank, f.lora_alpha, tuple(f.lora_targets)) if f.lora_rank else None


def planned(config):
    """The model and objective the config trains (its vocabulary already holds any tokens fine-tuning adds)."""
    f, seq_len = config.finetune, config.data.seq_len
    model_cfg = ModelConfig.from_config(config.model)
    if f.kind == "sft":
        return GPT(model_cfg), objectives.InstructionTuning(seq_len, model_cfg.loss_impl, _lora(f))
    C = transforms.num_sequences(f.task_type, len(f.fields))
    num_classes = C if f.task_type == "multiple_choice" else len(f.labels)
    return (heads.ClassifierGPT(model_cfg, num_classes, heads.COMBINE[f.task_type]),
            objectives.Classification(seq_len, C, f.lm_weight, model_cfg.loss_impl, _lora(f)))


def _set_steps(config, num_train: int) -> None:
    """train.steps from finetune.epochs and optim.warmup_steps from finetune.warmup_fraction, except where the
    command line gave them (`config.overridden`): then the epochs or fraction is set to 0 in the saved config, which
    says what ran."""
    f, t, given = config.finetune, config.train, set(config.get("overridden", None) or ())
    with config.unlocked():
        if f.epochs > 0 and "train.steps" in given:
            f.epochs = 0.0
        if f.epochs > 0:
            t.steps = max(1, math.ceil(f.epochs * num_train / t.batch_size))
        if f.warmup_fraction > 0 and "optim.warmup_steps" in given:
            f.warmup_fraction = 0.0
        if f.warmup_fraction > 0:
            config.optim.warmup_steps = math.ceil(f.warmup_fraction * t.steps)


def train(config, workdir: str) -> dict:
    mesh = trainer.start(config, workdir)
    f = config.finetune
    recs = {split: ft_data.records(f, split) for split in ("train", "validation")}  # bad data stops here
    recs["train"] = ft_data.subset(recs["train"], f.train_fraction, config.seed)
    recs["validation"], recs["test"] = ft_data.split_test(recs["validation"], f.test_fraction)
    if config.train.init_from:
        workdirs.adopt_init_from(config, workdir)
        tokenizer = load_tokenizer(workdir)
    else:
        key = f.fields[0] if f.kind == "classify" else f.prompt_field
        tokenizer = build_tokenizer(config.data, workdir, lambda: [str(r.get(key, "")) + "\n" + str(
            r.get(f.response_field, "")) for _, r in recs["train"]])
    base_vocab = config.model.vocab_size or tokenizer.vocab_size
    if base_vocab < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size: {base_vocab} is smaller than the tokenizer's {tokenizer.vocab_size}")
    seq_len = config.data.seq_len
    if f.kind == "classify":
        num_new = transforms.NUM_SPECIAL
        specials = transforms.Specials.after(base_vocab)
        train_enc, val_enc = (ft_data.encode_classification(recs[s], tokenizer, f, specials, seq_len)
                              for s in ("train", "validation"))
        train_rows, val_rows = ft_data.classification_arrays(train_enc), ft_data.classification_arrays(val_enc)
        test_enc = ft_data.encode_classification(recs["test"], tokenizer, f, specials, seq_len) if recs["test"] \
            else None
        test_rows = ft_data.classification_arrays(test_enc) if test_enc is not None else None
        tokens_per_step = config.train.batch_size * train_enc.inputs.shape[1] * seq_len
    else:
        num_new = 0 if tokenizer.eos_id is not None else 1
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else base_vocab
        train_rows, val_rows = (ft_data.sft_rows(ft_data.encode_sft(recs[s], tokenizer, f, eos, seq_len), seq_len,
                                                 f.pack) for s in ("train", "validation"))
        tokens_per_step = config.train.batch_size * seq_len
    num_train = len(train_rows["inputs"])
    with config.unlocked():
        config.model.vocab_size = base_vocab + num_new
    _set_steps(config, num_train)
    checkpoint.check_compatible(workdir, config)  # the config is whole: before the model is traced
    model, objective = planned(config)
    run = trainer.Trainer(config, mesh, model, objective,
                          tx=optimizer.make_optimizer(config.optim, config.train.steps, frozen=objective.frozen))
    B, eval_batch, limit = config.train.batch_size, config.eval.batch_size or config.train.batch_size, \
        config.eval.max_examples

    if f.kind == "classify":
        scores_fn = jax.jit(lambda p, b: objective.scores(model, p, b),
                            in_shardings=(run.state_shardings.params, sharding.batch_sharding(mesh)))

        def validate(loop):
            values = evaluate_classification(run, scores_fn, loop.state.params, val_rows, val_enc, eval_batch,
                                             list(f.labels), workdir, loop.step, limit)
            if test_rows is not None:  # the test split: reported beside validation, never chosen on
                test = evaluate_classification(run, scores_fn, loop.state.params, test_rows, test_enc, eval_batch,
                                               list(f.labels), None, loop.step, limit)
                values.update({"test_" + k[len("val_"):]: v for k, v in test.items()})
            return values
    else:
        def validate(loop):
            batches = ({**rows, "weights": rows["weights"] * real[:, None]}
                       for rows, real in batching.eval_rows(val_rows, eval_batch, limit))
            return {"val_loss": run.evaluate(loop.state.params, batches)["val_loss"]}

    init = None
    if config.train.init_from:  # the pretrained GPT under the head (and beside the adapters), its embedding grown
        init = trainer.pretrained(config.train.init_from, ("model", "gpt") if f.kind == "classify" else ("model",),
                                  num_new)
    loop = run.fit(workdir, batches=lambda step: batching.train_rows(train_rows, B, config.seed, step),
                   validate=validate, init=init, tokens_per_step=tokens_per_step,
                   data_state=lambda step: {"step": int(step), "seed": config.seed, "finetune": f.kind,
                                            "train_examples": num_train, "batch_size": B,
                                            "order": "epoch permutations: default_rng([seed, epoch, 7])"},
                   title=f"gptjax finetune ({f.kind}, {f.source})",
                   describe=(f"LoRA rank {f.lora_rank}, " if f.lora_rank else "") + f"{num_train} training "
                            + ("examples" if f.kind == "classify" else "rows"))
    if f.kind == "sft":
        workdirs.export_model(config, workdir, jax.jit(objective.model_params)(loop.state.params), loop.step,
                              what="the instruction-tuned model (adapters merged)")
    return loop.last


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """F1 averaged over the classes that occur in gold or predictions."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def evaluate_classification(run, scores_fn, params, rows: dict, enc, eval_batch: int, labels: list,
                            workdir: str | None, step: int = 0, limit: int = 0) -> dict:
    """val_loss, val_accuracy and val_f1 over the validation examples (the first `limit` when > 0); writes
    predictions.jsonl (example, gold, predicted, probabilities) to the workdir."""
    outs = []
    with run.context():
        for local, real in batching.eval_rows(rows, eval_batch, limit):
            local = {**local, "weight": local["weight"] * real[:, None]}
            scores = scores_fn(params, sharding.host_local_to_global(local, run.mesh))
            outs.append(np.asarray(multihost_utils.process_allgather(scores, tiled=True)))
    n = min(len(enc), limit) if limit > 0 else len(enc)
    scores = np.concatenate(outs)[:n]
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(scores), axis=-1))
    pred = logp.argmax(-1)
    gold = enc.labels[:n]
    values = {"val_loss": float(-logp[np.arange(len(gold)), gold].mean()),
              "val_accuracy": float((pred == gold).mean()), "val_f1": macro_f1(pred, gold, logp.shape[1])}
    if workdir is not None and jax.process_index() == 0:
        names = labels or [str(i) for i in range(logp.shape[1])]
        lines = [json.dumps({"example": w, "label": names[g] if g < len(names) else int(g),
                             "prediction": names[p] if p < len(names) else int(p),
                             "probs": [round(float(x), 5) for x in np.exp(lp)]})
                 for w, g, p, lp in zip(enc.where, gold, pred, logp)]
        files.write_text(files.path(workdir) / "predictions.jsonl", "\n".join(lines) + "\n")
        files.write_text(files.path(workdir) / "predictions_step.json", json.dumps({"step": int(step)}) + "\n")
    return values
