"""The `finetune` section of a config (experiments/finetune/*.py): what makes `gptjax train` fine-tune
(gptjax/runs/finetune.py). Plain ml_collections: loading a config imports no jax."""

import ml_collections

from gptjax.errors import ConfigError

KINDS = ("classify", "sft")
TASK_TYPES = ("classification", "entailment", "similarity", "multiple_choice")  # GPT-1's input transformations
LORA_TARGETS = ("qkv", "out", "fc", "proj")


def section() -> ml_collections.ConfigDict:
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
    f.train_fraction = 1.0  # (0, 1]: train on this fraction of the training records, drawn with the run's seed
    f.test_fraction = 0.0  # [0, 1): set this fraction of the validation records aside as a test split (the same
    #                       for every run), evaluated beside validation as test_loss, test_accuracy, test_f1
    f.lm_weight = 0.5  # auxiliary LM loss weight (GPT-1's lambda); 0 turns it off
    f.truncate = True  # cut over-long examples by the documented rule (False: refuse them)
    f.epochs = 0.0  # > 0: train.steps = ceil(epochs * train examples / batch) (rows when sft), unless train.steps is
    #                 given on the command line (then that; giving both is an error)
    f.warmup_fraction = 0.0  # > 0: optim.warmup_steps = ceil(fraction * train.steps), unless optim.warmup_steps is
    #                          given on the command line (likewise)
    f.prompt_field = "prompt"  # sft
    f.response_field = "response"
    f.template = "### Instruction:\n{prompt}\n\n### Response:\n"
    f.pack = True  # sft: several examples per row, attending only within their own segment
    f.lora_rank = 0  # > 0: train LoRA adapters of this rank (and the head) instead of the whole model
    f.lora_alpha = 16.0
    f.lora_targets = LORA_TARGETS
    return f


def validate(c: ml_collections.ConfigDict) -> None:
    f = c.finetune
    if f.kind not in KINDS:
        raise ConfigError(f"finetune.kind: {f.kind!r} is not one of {', '.join(KINDS)}")
    if f.kind == "classify":
        if f.task_type not in TASK_TYPES:
            raise ConfigError(f"finetune.task_type: {f.task_type!r} is not one of {', '.join(TASK_TYPES)}")
        if f.task_type != "multiple_choice" and len(f.labels) < 2:
            raise ConfigError(f"finetune.labels: needs two or more labels, got {list(f.labels)}")
    if not 0 < f.train_fraction <= 1:
        raise ConfigError(f"finetune.train_fraction: needs 0 < fraction <= 1, got {f.train_fraction}")
    if not 0 <= f.test_fraction < 1:
        raise ConfigError(f"finetune.test_fraction: needs 0 <= fraction < 1, got {f.test_fraction}")
    if f.test_fraction and f.kind != "classify":
        raise ConfigError("finetune.test_fraction: a test split is for classification (finetune.kind=classify)")
    bad = [t for t in f.lora_targets if t not in LORA_TARGETS]
    if f.lora_rank and bad:
        raise ConfigError(f"finetune.lora_targets: {bad} are not among {', '.join(LORA_TARGETS)}")
    given = set(c.get("overridden", None) or ())
    for field, source, value in (("train.steps", "finetune.epochs", f.epochs),
                                 ("optim.warmup_steps", "finetune.warmup_fraction", f.warmup_fraction)):
        if field in given and source in given and value > 0:
            raise ConfigError(f"{field}: given together with {source}={value}, which sets it; give one of them")
