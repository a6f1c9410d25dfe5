"""lm-evaluation-harness bridge: `GptjaxLM`, an `lm_eval.api.model.LM` for a gptjax workdir, registered as `gptjax`.

Its three request types run on `gptjax.evals.scoring.Scorer` (sorted, bucketed, sharded over the mesh), so lm-eval's
numbers for a task are gptjax's own. After `pip install -e ".[eval]"`, lm-eval's own command line finds it (the
installed gptjax-lm-eval.pth registers it when lm-eval loads its model table; see `lm_eval_registration`):

    lm_eval --model gptjax --model_args workdir=runs/shakespeare --tasks lambada_openai

`python -m gptjax.evals.harness ...` is the same command line with the model registered by this module, for an
environment where the .pth is not installed (gptjax on PYTHONPATH); it runs as well where the .pth is. From Python,
after `import gptjax.evals.harness` (or with the .pth installed): `lm_eval.simple_evaluate(model="gptjax",
model_args="workdir=DIR", ...)`.

The name is registered the one way the .pth registers it, as the lazy target `gptjax.evals.harness:GptjaxLM`
(`lm_eval_registration.register`), and only where it is missing: lm-eval 0.4.13 refuses a second registration of a
different target, and under `python -m` this file runs as `__main__`, whose class is not the one lm-eval loads.
model_args: workdir (required), tokens_per_batch (rows per batch x bucket length, default 4096).
"""

import sys

import lm_eval.models  # noqa: F401  lm-eval's own table first: registering into an empty one would hide it
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry

from gptjax.evals import lm_eval_registration


class GptjaxLM(LM):
    def __init__(self, workdir: str, tokens_per_batch: int = 4096, batch_size=None, max_batch_size=None,
                 device=None, **unused):
        """`batch_size`, `max_batch_size` and `device` are lm-eval's generic options: gptjax sizes batches by
        `tokens_per_batch` and runs on the devices JAX sees (every one, sharded over the data axes)."""
        super().__init__()
        from gptjax import sharding, workdirs
        from gptjax.evals import scoring

        config, model_cfg, params, tok = workdirs.load(workdir)
        mesh = sharding.make_mesh((-1, 1, 1))  # the mesh workdirs.load puts the params on
        self.scorer = scoring.Scorer(model_cfg, params, tok, mesh=mesh, rules=config.mesh.logical_axis_rules,
                                     tokens_per_batch=int(tokens_per_batch), progress=sys.stderr.isatty())
        self.tokenizer = tok

    @property
    def max_length(self) -> int:
        return self.scorer.max_len

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.scorer.loglikelihood([tuple(r.args[:2]) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.scorer.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests, disable_tqdm: bool = False):
        reqs = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            reqs.append((context, tuple(until), int(kwargs.get("max_gen_toks", 256))))
        return self.scorer.generate_until(reqs)


lm_eval_registration.register(model_registry)  # a no-op where the .pth registered it when lm_eval.models loaded


def cli():
    """lm-eval's command line with the `gptjax` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    cli()
