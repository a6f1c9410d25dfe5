"""The `gptjax` command: `gptjax train|sample|import-hf [flags]`. Thin: parses flags, starts jax.distributed when
asked, and calls the library. Bad input ends with one line `gptjax: error: ...` and exit status 2."""

import os
import re
import sys

from absl import app, flags

COMMANDS = ("train", "sample", "import-hf")
USAGE = (
    "usage: gptjax train [--config=FILE[:ARG]] --workdir=DIR [--config.KEY=VALUE ...]\n"
    "       gptjax sample --workdir=DIR (--prompt=TEXT | --prompt_file=FILE) [--max_new_tokens --temperature "
    "--top_k --top_p --beam_size --length_penalty --num_samples --stop --truncate --seed]\n"
    "       gptjax import-hf --hf_dir=DIR --workdir=DIR"
)
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")


def _define_common():
    flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, metrics, samples.", required=True)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection (TPU pods, SLURM).")


def _define_train():
    from ml_collections import config_flags

    _define_common()
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file, FILE[:ARG].", lock_config=True)


def _define_sample():
    _define_common()
    flags.DEFINE_string("prompt", None, "Text to continue.")
    flags.DEFINE_string("prompt_file", None, "File whose text to continue.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this much probability.")
    flags.DEFINE_integer("beam_size", 1, "Beam search with this many beams (GPT-3: 4); 1 samples.")
    flags.DEFINE_float("length_penalty", 0.6, "Beam search's alpha in ((5 + length) / 6) ** alpha.")
    flags.DEFINE_integer("num_samples", 1, "Continuations to draw (with beam search: the best beams).")
    flags.DEFINE_multi_string("stop", [], "End a continuation before this text (repeatable; \\n is a newline).")
    flags.DEFINE_enum("truncate", "error", ["error", "left"],
                      "A prompt too long for the context: fail, or keep its end.")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same text.")


def _define_import_hf():
    _define_common()
    flags.DEFINE_string("hf_dir", None, "A transformers GPT-2 directory (config.json + *.safetensors).", required=True)


def _init_distributed():
    import jax

    f = flags.FLAGS
    if f.num_processes and f.num_processes > 1:
        jax.distributed.initialize(f.coordinator_address, num_processes=f.num_processes, process_id=f.process_id)
    elif f.distributed:
        jax.distributed.initialize()


def _train(argv):
    from gptjax import configs, train

    config = flags.FLAGS.config
    try:
        config.unlocked  # config_flags defers a file that failed to load to the first attribute read
    except OSError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise FileNotFoundError(f"--config: {lines[-1]}") from None
    config = configs.finalize(config)
    train.train_and_evaluate(config, flags.FLAGS.workdir)


def _sample(argv):
    from gptjax import workdirs

    f = flags.FLAGS
    if (f.prompt is None) == (f.prompt_file is None):
        raise ValueError("give exactly one of --prompt and --prompt_file")
    if f.prompt_file is not None and not os.path.exists(f.prompt_file):
        raise FileNotFoundError(f"--prompt_file: no such file: {f.prompt_file}")
    prompt = f.prompt if f.prompt is not None else open(f.prompt_file, encoding="utf-8").read()
    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in f.stop]
    workdirs.sample_from_workdir(
        f.workdir, prompt, max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_k=f.top_k,
        top_p=f.top_p, beam_size=f.beam_size, length_penalty=f.length_penalty, num_samples=f.num_samples,
        stop_strings=stops, truncate=f.truncate, seed=f.seed,
    )


def _import_hf(argv):
    from gptjax import workdirs

    workdirs.import_hf(flags.FLAGS.hf_dir, flags.FLAGS.workdir)


_DISPATCH = {
    "train": (_define_train, _train),
    "sample": (_define_sample, _sample),
    "import-hf": (_define_import_hf, _import_hf),
}


def _guarded(fn):
    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        _init_distributed()
        from gptjax.checkpoint import CheckpointError
        from gptjax.data import DataError
        from gptjax.sampling import PromptError
        from gptjax.train import TrainingError

        try:
            fn(argv)
        except (ValueError, FileNotFoundError, DataError, CheckpointError, PromptError, TrainingError) as err:
            print(f"gptjax: error: {err}", file=sys.stderr)
            sys.exit(2)

    return main


def run():
    argv = list(sys.argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2)
    command = argv.pop(1)
    define, fn = _DISPATCH[command]
    try:
        define()  # the config flag loads the file and applies --config.* overrides here
    except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as err:
        print(f"gptjax: error: {_describe_config_error(err, argv)}", file=sys.stderr)
        sys.exit(2)
    argv[0] = f"gptjax {command}"
    if not any(a.startswith(("--verbosity", "-v")) for a in argv):
        argv.append("--verbosity=-1")  # absl/orbax INFO lines would drown the progress lines
    app.run(_guarded(fn), argv=argv, flags_parser=_parse_flags)


def _describe_config_error(err, argv) -> str:
    """One line for an override naming a key the config does not have (or a config file that fails)."""
    text = str(err).encode().decode("unicode_escape")
    key = re.search(r"'([^'\\]+)'", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    for arg in argv:
        name = arg.split("=")[0]
        if key and name.startswith("--config.") and f".{key.group(1)}" in name + ".":
            return f"{name}: no such key in the config" + (f" (did you mean {hint.group(1)}?)" if hint else "")
    return f"--config: {text.strip().splitlines()[0]}"


def _parse_flags(argv):
    """absl's parser, with its errors (a wrong config key or type) turned into one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        if "Traceback" in str(err):  # a config file's get_config raised: its own message is the last line
            flag = lines[0].split(":")[0].removeprefix("flag ")
            lines = [f"{flag}: {lines[-1].split(': ', 1)[-1]}"]
        print(f"gptjax: error: {' '.join(lines)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
