"""GPT-3's synthetic probes (arithmetic and word scrambling), offline: `gptjax eval --workdir=DIR
--config=experiments/eval/synthetic.py[:limit=100]`. The same config is `gptjax eval`'s default (without --config),
kept in the package as gptjax/evals/config.py."""

from gptjax.evals.config import get_config  # noqa: F401
