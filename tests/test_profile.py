"""`train.profile_steps`: a jax.profiler trace of the chosen steps, where TensorBoard's profile plugin reads it."""

import glob
import os

import pytest

from gptjax import configs, errors, runs


def _config(corpus, steps, profile):
    c = configs.get_config()
    c.data.update(source="text", path=corpus, tokenizer="char", seq_len=32)
    c.model.update(num_layers=1, d_model=32, num_heads=2)
    c.train.update(steps=steps, batch_size=8, log_every_steps=1, profile_steps=profile)
    c.eval.update(every_steps=steps, steps=1)
    c.sample.update(max_new_tokens=4, num_samples=1)
    return configs.finalize(c)


def test_the_trace_of_the_chosen_steps_names_the_train_step(corpus_file, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    runs.train(_config(corpus_file, 5, (2, 4)), workdir)
    traces = glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1, traces
    data = open(traces[0], "rb").read()
    assert b"train_step" in data  # the jitted step's XLA module
    assert b"step_num" in data  # the step annotations of xprof's step view
    assert f"profiling steps 2..3 into {workdir}/plugins/profile" in capsys.readouterr().out
    # A resumed run past its profile range traces nothing more.
    runs.train(_config(corpus_file, 6, (2, 4)), workdir)
    assert len(glob.glob(os.path.join(workdir, "plugins", "profile", "*"))) == 1


@pytest.mark.parametrize("profile", [(3, 3), (4, 2), (-1, 2), (1, 2, 3)])
def test_bad_profile_steps_are_one_line(profile):
    c = configs.get_config()
    c.train.profile_steps = profile
    with pytest.raises(errors.ConfigError, match="train.profile_steps"):
        configs.finalize(c)
