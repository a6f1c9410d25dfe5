"""GPT-1's fine-tuning recipe (Radford et al. 2018, section 4.1) on a GLUE-style classification dataset: lr 6.25e-5,
batch 32, 3 epochs, linear warmup over 0.2% of training then linear decay to 0, classifier dropout 0.1 (here the
model's dropout), lambda = 0.5 for the auxiliary LM loss.

The dataset is a TFDS name or JSONL files with a mapping from its feature names to the task's fields:
  glue.py:task=sst2   glue/sst2      classification  fields (sentence,)            labels 0, 1
  glue.py:task=mnli   glue/mnli      entailment      (premise, hypothesis)         labels 0, 1, 2
  glue.py:task=qqp    glue/qqp       similarity      (question1, question2)        labels 0, 1
  glue.py:task=copa   super_glue/copa multiple choice (premise, choice1, choice2)   label = index of the answer
  glue.py:task=imdb   imdb_reviews   classification  (text,)                       labels 0, 1
JSONL instead of TFDS: --config.finetune.source=jsonl --config.finetune.train_path=F --config.finetune.val_path=F.
The length is 3 epochs of the training split (--config.finetune.epochs=E), or --config.train.steps=N steps.
A TFDS dataset is read without TensorFlow, so it must be prepared once as array_record where TensorFlow is installed
(`tfds build glue/sst2 --file_format=array_record`; --config.finetune.data_dir=DIR if not in ~/tensorflow_datasets).

  gptjax train --config=experiments/finetune/glue.py:task=sst2 --workdir=runs/sst2 --config.train.init_from=DIR
"""

from gptjax import configs
from gptjax.configs import default
from gptjax.configs import finetune as finetune_config
from gptjax.errors import ConfigError

TASKS = {
    "sst2": ("tfds:glue/sst2", "classification", ("sentence",), ("0", "1"), "validation"),
    "mnli": ("tfds:glue/mnli", "entailment", ("premise", "hypothesis"), ("0", "1", "2"), "validation_matched"),
    "qqp": ("tfds:glue/qqp", "similarity", ("question1", "question2"), ("0", "1"), "validation"),
    "copa": ("tfds:super_glue/copa", "multiple_choice", ("premise", "choice1", "choice2"), ("0", "1"), "validation"),
    "imdb": ("tfds:imdb_reviews", "classification", ("text",), ("0", "1"), "test"),
}


def get_config(arg=None):
    a = configs.parse_arg(arg, task="sst2", seq_len=128)
    if a.task not in TASKS:
        raise ConfigError(f"glue.py: task {a.task!r} is not one of {', '.join(TASKS)}")
    source, task_type, fields, labels, val_split = TASKS[a.task]
    c = default.get_config()
    c.model.dropout = 0.1
    c.data.seq_len = a.seq_len
    c.train.update(batch_size=32, steps=1, log_every_steps=50)
    c.optim.update(lr=6.25e-5, min_lr=0.0, warmup_steps=0, weight_decay=0.01, b1=0.9, b2=0.999, schedule="linear")
    c.eval.update(every_steps=500, batch_size=64)
    c.checkpoint.every_steps = 500
    del c.sample  # read by pretraining only
    c.finetune = f = finetune_config.section()
    f.update(kind="classify", source=source, task_type=task_type, fields=fields, label_field="label", labels=labels,
             tfds_val_split=val_split, lm_weight=0.5, epochs=3.0, warmup_fraction=0.002)
    return c
