"""What the benchmark scripts share: smoke runs.

Under GPTJAX_SMOKE=1 (gptjax/configs/smoke.py) each script runs its comparison shrunk: both sides, one shape, one
round of a couple of steps (or examples, requests, rows, positions), through the same code, and prints its table as
usual. That is how the tests run the documented benchmark commands, in 10-60 s each (tests/test_benchmarks_smoke.py,
the docs tier). The numbers of such a run mean nothing; the first line of its output says so.

Importing this module imports gptjax, which on a machine without TPUs tells libtpu not to look for one before jax
starts (gptjax/__init__.py): import it before jax is used.
"""

from gptjax import configs
from gptjax.configs import smoke

SMOKE_LABEL = f"smoke run ({smoke.ENV}=1)"


def smoke_run(what: str) -> bool:
    """Under GPTJAX_SMOKE=1: prints the line that marks the output as a smoke run of `what`, and returns True."""
    if not smoke.enabled():
        return False
    print(f"# {SMOKE_LABEL}: {what}; its numbers are meaningless", flush=True)
    return True


def _shrunk(model: dict, seq_len: int, batch: int):
    """The default config with these model fields, sequence length and batch, shrunk as configs.finalize shrinks
    every config under GPTJAX_SMOKE."""
    c = configs.get_config()
    c.model.update(model)
    c.data.seq_len, c.train.batch_size = seq_len, batch
    return smoke.shrink(c)


def smoke_model(model: dict) -> dict:
    """ModelConfig fields (num_layers, num_heads, d_model, max_len, ...) as a smoke run builds them: what smoke.shrink
    makes of them, with the context cut to the smoke sequence length. Every config that passes configs.finalize under
    GPTJAX_SMOKE is shrunk, an imported workdir's too, so a model that goes to gptjax's workdirs and to a peer must
    already have the shrunk shape."""
    c = _shrunk(model, model["max_len"], smoke.BATCH)
    return {**{k: c.model[k] for k in model}, "max_len": min(c.model.max_len, smoke.SEQ_LEN)}


def smoke_shape(shape: dict) -> dict:
    """A benchmark shape (layers, heads, width, ctx, batch) as a smoke run builds it (see smoke_model): the peer's
    model, the batches and the FLOP counts must use the shrunk shape to match gptjax's."""
    c = _shrunk(dict(num_layers=shape["layers"], num_heads=shape["heads"], d_model=shape["width"],
                     max_len=shape["ctx"]), shape["ctx"], shape["batch"])
    return dict(shape, layers=c.model.num_layers, heads=c.model.num_heads, width=c.model.d_model,
                ctx=c.data.seq_len, batch=c.train.batch_size)
