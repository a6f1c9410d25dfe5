"""The IMDB sentiment classifier: glue.py's task=imdb (TFDS `imdb_reviews`, field `text`, label 0 = negative,
1 = positive, validated on the `test` split; GPT-1's recipe), trained for one epoch by default. It is the judge of
experiments/rlhf/imdb_sentiment.py, whose true reward is this model's P(label "1" | text).

  tfds build imdb_reviews --file_format=array_record        # once, where TensorFlow is installed
  gptjax train --config=experiments/finetune/imdb.py --workdir=runs/imdb --config.train.init_from=runs/gpt2

Reviews keep their first seq_len tokens (GPT-1's truncation of the longest field). `data_dir=DIR` reads a TFDS copy
prepared elsewhere than TFDS's default (~/tensorflow_datasets).
"""

from gptjax import configs

glue = configs.sibling(__file__, "glue")


def get_config(arg=None):
    a = configs.parse_arg(arg, epochs=1.0, seq_len=128, data_dir="")
    c = glue.get_config(f"task=imdb,seq_len={a.seq_len}")
    c.eval.every_steps = 250
    c.checkpoint.every_steps = 250
    c.finetune.update(epochs=a.epochs, data_dir=a.data_dir)
    return c
