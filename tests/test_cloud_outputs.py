"""`gptjax eval` and `gptjax inspect` on gs:// workdirs: every output (JSON, markdown, PNG, HTML) lands in the
stand-in bucket of test_cloud.py, nothing in a local folder named "gs:" (the fixture checks the cwd stays empty),
and a URL that cannot be used is one line before any work."""

import json
import string
import sys

import pytest

from gptjax import files
from helpers import gptjax_in_process, one_line_error
from test_cloud import ROOT, bucket  # noqa: F401  (the fixture: the stand-in gs:// filesystem)

TEXT = "the cat sat on the mat. the cat sat on the hat."
TASKS = "--config.tasks=('arithmetic_2da',)"


def make_workdir(url):
    """A char-level workdir written straight to `url`: config, tokenizer and an untrained checkpoint (what is read
    is what matters here, not what the model knows)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gptjax import checkpoint, configs, tokenizer
    from gptjax.model import GPT, ModelConfig

    config = configs.get_config()
    config.data.tokenizer = "char"
    config.data.seq_len = 128
    config.model.update(num_layers=1, d_model=32, num_heads=2, max_len=128)
    tok = tokenizer.build_tokenizer(config.data, url, lambda: [string.printable])
    config.model.vocab_size = tok.vocab_size
    config.mesh.shape = (-1, 1, 1)
    config = configs.finalize(config)
    checkpoint.write_config(url, config)
    model_cfg = ModelConfig.from_config(config.model)
    params = GPT(model_cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    checkpoint.save_params(url, nn.unbox(params))
    return url


@pytest.mark.slow  # about 30 s on 2 cores: a checkpoint written and copied on the bucket, two evals, an inspect
def test_eval_and_inspect_write_into_the_bucket(bucket, capsys):  # noqa: F811
    from gptjax.analysis import inspect_cli

    run = make_workdir("gs://b/runs/tiny")
    files.copytree(run, "gs://b/runs/copy")  # a second workdir for the comparison of models
    stored = bucket / "b" / "runs"

    status, out, err = gptjax_in_process(
        capsys, "eval", "--workdir=gs://b/runs/tiny,gs://b/runs/copy", f"--config={ROOT}/experiments/eval/"
        "synthetic.py:limit=2", TASKS, "--config.shots=(0,1)", "--config.seeds=(0,)", "--output_dir=gs://b/cmp")
    assert status == 0, err
    for name in ("tiny", "copy"):
        assert sorted(p.name for p in (stored / name / "eval").iterdir()) == ["results.json", "results.md",
                                                                              "shots.png"], name
        res = json.loads((stored / name / "eval" / "results.json").read_text())
        assert res["workdir"] == f"gs://b/runs/{name}"
        assert res["tasks"]["arithmetic_2da"]["shots"]["1"]["mean"]["n"] == 2
        assert "| arithmetic_2da | acc |" in (stored / name / "eval" / "results.md").read_text()
        assert (stored / name / "eval" / "shots.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (bucket / "b" / "cmp").iterdir()) == ["models.md", "models.png"]
    assert "### tiny" in (bucket / "b" / "cmp" / "models.md").read_text()
    assert "eval: wrote gs://b/runs/tiny/eval/results.json" in out

    files.write_text("gs://b/text.txt", TEXT)
    status, out, err = gptjax_in_process(capsys, "inspect", f"--workdir={run}", "--text_file=gs://b/text.txt",
                                         "--out=gs://b/inspect", "--layers=0", "--heads=0,1")
    assert status == 0, err
    assert sorted(p.name for p in (bucket / "b" / "inspect").iterdir()) == sorted(inspect_cli.OUTPUTS)
    for name in inspect_cli.OUTPUTS:
        assert (bucket / "b" / "inspect" / name).stat().st_size > 0, name
    assert (bucket / "b" / "inspect" / "tokens.html").read_text().count('class="tok"') == len(TEXT)
    assert json.loads((bucket / "b" / "inspect" / "heads.json").read_text())["seed"] == 0
    assert "to gs://b/inspect (mean loss" in out


def test_unusable_urls_are_one_line_before_any_work(bucket, monkeypatch, capsys):  # noqa: F811
    config = f"--config={ROOT}/experiments/eval/synthetic.py:limit=2"
    one_line_error(capsys, "--workdir=memory://run: memory:// is not supported here", "eval",
                   "--workdir=memory://run", config, TASKS)
    one_line_error(capsys, "--output_dir=memory://cmp: memory:// is not supported here", "eval",
                   "--workdir=gs://b/a,gs://b/c", "--output_dir=memory://cmp", config, TASKS)
    one_line_error(capsys, "--workdir: gs://b/a holds no training run", "eval", "--workdir=gs://b/a", config, TASKS)
    one_line_error(capsys, "--out=memory://x: memory:// is not supported here", "inspect", "--workdir=gs://b/a",
                   "--text=the cat", "--out=memory://x")
    one_line_error(capsys, "--text_file: no such file: gs://b/nope.txt", "inspect", "--workdir=gs://b/a",
                   "--text_file=gs://b/nope.txt", "--out=gs://b/x")

    registry = sys.modules["fsspec.registry"]._registry  # gs:// without its filesystem package installed
    for protocol in ("gs", "gcs"):
        monkeypatch.delitem(registry, protocol, raising=False)
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.setitem(files.WORKDIR_PACKAGES, "gs", [("google.cloud.storage", "google-cloud-storage")])
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    one_line_error(capsys, "pip install gcsfs google-cloud-storage", "eval", "--workdir=gs://b/a", config, TASKS)
    one_line_error(capsys, "--workdir=gs://b/a: gs:// needs the Python packages gcsfs and google-cloud-storage",
                   "inspect", "--workdir=gs://b/a", "--text=the cat", "--out=out")
    assert not list(bucket.iterdir())  # nothing written anywhere (the fixture checks the cwd)
