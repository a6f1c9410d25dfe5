"""Every experiment file parses and validates; bad keys and impossible configs stop with one line."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from gptjax import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "**", "*.py"), recursive=True)
                     if not os.path.basename(p).startswith("_"))  # _name.py: settings experiment files share
EVAL_EXPERIMENTS = [p for p in EXPERIMENTS if os.sep + "eval" + os.sep in p]  # `gptjax eval` configs
EXPERIMENTS = [p for p in EXPERIMENTS if p not in EVAL_EXPERIMENTS]  # `gptjax train` configs


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_experiments():
    names = {os.path.relpath(p, ROOT) for p in EXPERIMENTS}
    for required in ("experiments/pretrain/shakespeare.py", "experiments/pretrain/shakespeare_char.py",
                     "experiments/pretrain/gpt2_124m.py"):
        assert required in names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_experiment_parses_and_validates(path):
    module = load(path)
    config = module.get_config()
    if config.data.source == "text" and not config.data.path:
        config.data.path = "corpus.txt"  # the one field these files leave to the command line
    config = configs.finalize(config)
    assert config.is_locked
    with pytest.raises(AttributeError):
        config.train.stepz = 1  # locked: a typo cannot add a key
    if hasattr(module, "get_sweep"):
        for overrides in module.get_sweep():
            c = module.get_config()
            for key, value in overrides.items():
                node = c
                *parents, leaf = key.split(".")
                for p in parents:
                    node = node[p]
                assert leaf in node, f"sweep key {key} is not in the config"
                node[leaf] = value
            if c.data.source == "text" and not c.data.path:
                c.data.path = "corpus.txt"
            configs.finalize(c)


def test_nanogpt_baby_config_is_exact():
    c = load(os.path.join(ROOT, "experiments/pretrain/shakespeare_char.py")).get_config()
    assert (c.model.num_layers, c.model.num_heads, c.model.d_model, c.data.seq_len) == (4, 4, 128, 64)
    assert (c.train.batch_size, c.model.dropout, c.train.steps) == (12, 0.0, 2000)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps, c.optim.decay_steps) == (1e-3, 1e-4, 100, 2000)
    assert (c.optim.b2, c.optim.weight_decay, c.optim.clip_norm) == (0.99, 0.1, 1.0)
    assert (c.eval.every_steps, c.eval.steps, c.data.tokenizer) == (250, 20, "char")


def test_gpt1_recipe_is_gpt1():
    """GPT-1 had neither GPT-2's final LayerNorm nor its scaled residual init, and a 40,478-token vocabulary: the
    tokenizer the recipe trains is that size, so the embedding has no unused rows (116.5M parameters)."""
    from gptjax.model import GPT, ModelConfig, count_params

    c = load(os.path.join(ROOT, "experiments/pretrain/gpt1.py")).get_config()
    c.data.path = "books.txt"
    c = configs.finalize(c)
    m = c.model
    assert (m.norm, m.final_norm, m.scale_residual_init, m.num_layers, m.d_model, m.max_len) == (
        "post", False, False, 12, 768, 512)
    assert c.data.vocab_size == m.vocab_size == 40478
    model = GPT(ModelConfig.from_config(m))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    assert round(count_params(params) / 1e6, 1) == 116.5
    g2 = configs.finalize(load(os.path.join(ROOT, "experiments/pretrain/gpt2_124m.py")).get_config())
    assert g2.model.scale_residual_init and g2.model.final_norm


def test_gpt2_124m_recipe():
    c = configs.finalize(load(os.path.join(ROOT, "experiments/pretrain/gpt2_124m.py")).get_config())
    assert (c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.max_len) == (12, 768, 12, 1024)
    assert c.train.batch_size * c.data.seq_len >= 480 * 1024  # about 0.5M tokens per step, as in GPT-3 table 2.1
    assert c.data.source.startswith("tfds:")


def test_command_line_fields_win_over_the_preset():
    """A config file sets `model.preset`, which is applied at finalize; a shape field given on the command line
    (an ablation: GPT-3 XL at 2 layers) must keep its value, and the fields not given still come from the preset."""
    from absl import flags

    from gptjax import main

    argv = ["gptjax plan", f"--config={ROOT}/experiments/pretrain/gpt3.py:size=gpt3-xl", "--config.model.num_layers=2",
            "--config.model.max_len=4096"]
    fv = flags.FlagValues()
    main.define_config(fv, argv)
    fv(argv)
    m = main._final_config(fv).model
    assert (m.num_layers, m.max_len, m.d_model, m.num_heads, m.vocab_size) == (2, 4096, 2048, 16, 50257)
    assert configs.finalize(load(os.path.join(ROOT, "experiments/pretrain/gpt3.py")).get_config("size=gpt3-xl")
                            ).model.num_layers == 24


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model.num_heads": 5}, "model.num_heads: 5 heads do not divide model.d_model=256"),
        ({"data.seq_len": 512}, "data.seq_len: 512 is longer than the position table model.max_len=256"),
        ({"train.grad_accum_steps": 3}, "train.grad_accum_steps: 3 micro-batches do not divide train.batch_size=16"),
        ({"model.norm": "middle"}, "model.norm: 'middle' is not one of pre, post"),
        ({"data.source": "web"}, "data.source: 'web' is not one of"),
        ({"mesh.shape": (2, 2)}, "mesh.shape: (2, 2) is not three positive sizes"),
        ({"model.preset": "gpt4"}, "model.preset: 'gpt4' is not one of"),
        ({"model.attention_impl": "flash"}, "model.attention_impl: 'flash' is not one of auto, reference"),
    ],
)
def test_impossible_configs(overrides, message):
    c = configs.get_config()
    for key, value in overrides.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    with pytest.raises(configs.ConfigError) as err:
        configs.finalize(c)
    assert message in str(err.value) and "\n" not in str(err.value)


def gptjax_in_process(capsys, *args):
    """(exit status, stderr) of `gptjax ARGS` run in this process (main.main parses into its own FlagValues)."""
    from gptjax import main

    status = main.main(["gptjax", *args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.model.num_layrs=3"], "--config.model.num_layrs: no such key in the config (did you mean num_layers?)"),
        (["--config.model.num_heads=abc"], "--config.model.num_heads=abc"),
        (["--config.model.num_heads=3"], "model.num_heads: 3 heads do not divide model.d_model=256"),
        (["--config=missing.py"], "--config: [Errno 2] No such file or directory: 'missing.py'"),
        (["--config=experiments/pretrain/gpt3.py:size=huge"], "size: 'huge' is not one of"),
        (["--config=experiments/pretrain/shakespeare_char.py"], "data.path: data.source=text needs a file path"),
        (["--config=experiments/pretrain/shakespeare_char.py", "--config.model.num_layrs=3"],
         "--config.model.num_layrs: no such key in the config (did you mean num_layers?)"),
        (["--config=experiments/pretrain/shakespeare_char.py", "--config.train.steps=abc"], "--config.train.steps=abc"),
        (["--config.model.attention_impl=cudnn", "--config.train.steps=1"], "cudnn needs an NVIDIA GPU"),
        (["--nosuchflag=1"], "nosuchflag"),
    ],
)
def test_cli_config_errors_are_one_line(capsys, tmp_path, args, message):
    status, err = gptjax_in_process(capsys, "train", f"--workdir={tmp_path / 'run'}", *args)
    assert status == 2
    assert err.startswith("gptjax: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_experiment_reports_a_mistyped_key_in_one_line(capsys, tmp_path, experiment):
    status, err = gptjax_in_process(capsys, "train", f"--workdir={tmp_path / 'run'}", f"--config={experiment}",
                                    "--config.train.stpes=3")
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("gptjax: error: --config.train.stpes: no such key in the config"), err


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only user errors become one line: an experiment file with a bug in it raises (here a NameError)."""
    from gptjax import main

    bad = tmp_path / "buggy.py"
    bad.write_text("def get_config():\n    return undefined_name\n")
    with pytest.raises(Exception) as err:
        main.main(["gptjax", "train", f"--workdir={tmp_path / 'run'}", f"--config={bad}"])
    assert "undefined_name" in str(err.value) or "undefined_name" in repr(err.value.__context__)
