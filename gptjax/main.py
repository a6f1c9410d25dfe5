"""The `gptjax` command: `gptjax train|sample|eval|inspect|plan|import-hf [flags]`. Thin: parses flags, starts
jax.distributed when asked, and calls the library.

Bad input (a `GptjaxError`, raised anywhere, or a flag or config key that cannot be parsed) ends with one line
`gptjax: error: ...` and exit status 2. Every other exception keeps its traceback: it is a bug. `main(argv)` runs a
command in this process and returns its exit status (the tests call it); each call parses into its own FlagValues.
"""

import errno
import os
import re
import sys

from absl import flags, logging

from gptjax.errors import ConfigError, GptjaxError

COMMANDS = ("train", "sample", "eval", "import-hf", "inspect", "plan")
USAGE = (
    "usage: gptjax train [--config=FILE[:ARG]] --workdir=DIR [--config.KEY=VALUE ...]\n"
    "       gptjax sample --workdir=DIR (--prompt=TEXT | --prompt_file=FILE) [--max_new_tokens --temperature "
    "--top_k --top_p --beam_size --length_penalty --num_samples --stop --truncate --seed --on_corrupt]\n"
    "       gptjax eval --workdir=DIR[,DIR...] [--config=FILE[:ARG]] [--config.tasks=...]\n"
    "       gptjax import-hf --hf_dir=DIR --workdir=DIR\n"
    "       gptjax inspect --workdir=DIR (--text=TEXT | --text_file=FILE) --out=DIR [--layers --heads --truncate "
    "--nohtml]\n"
    "       gptjax plan [--config=FILE[:ARG]] --topology=v5e-256|v4-128|v5p-512|v5e:4x4|cpu:8 [--num_slices=N] "
    "[--json] [--config.KEY=VALUE ...]"
)
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
# What a config file or an override can raise for bad input (ml_collections wraps them); anything else, such as
# a NameError in an experiment file, is a bug there and keeps its traceback.
_CONFIG_INPUT_ERRORS = (GptjaxError, ValueError, KeyError, AttributeError, TypeError, OSError)


def _define_common(fv):
    flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, metrics, samples.", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-process run.",
                         flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.", flag_values=fv)
    flags.DEFINE_bool("distributed", False,
                      "Join the other processes of a cluster that jax detects (Cloud TPU slice, SLURM, Open MPI, "
                      "Kubernetes); elsewhere use --coordinator_address, --num_processes and --process_id.",
                      flag_values=fv)


def _define_reader(fv):
    """What a command that reads a workdir's params does when its newest checkpoint cannot be read."""
    flags.DEFINE_enum("on_corrupt", "fallback", ["fallback", "refuse"],
                      "A newest checkpoint that cannot be read (truncated, missing files): use the newest step that "
                      "reads, saying so in one line, or refuse in one line naming it.", flag_values=fv)


def define_config(fv, argv, default=DEFAULT_CONFIG):
    """The --config flag (FILE[:ARG], overridable as --config.KEY=VALUE), read from `argv`."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", default, "Experiment config file, FILE[:ARG].", lock_config=True,
                                    flag_values=fv, sys_argv=argv)


def _define_train(fv, argv):
    _define_common(fv)
    define_config(fv, argv)


def _define_sample(fv, argv):
    _define_common(fv)
    _define_reader(fv)
    flags.DEFINE_string("prompt", None, "Text to continue.", flag_values=fv)
    flags.DEFINE_string("prompt_file", None, "File whose text to continue.", flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate (past the context, the window slides).",
                         flag_values=fv)
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.", flag_values=fv)
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).", flag_values=fv)
    flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens with this much probability.",
                       flag_values=fv)
    flags.DEFINE_integer("beam_size", 1, "Beam search with this many beams (GPT-3: 4); 1 samples.", flag_values=fv)
    flags.DEFINE_float("length_penalty", 0.6, "Beam search's alpha in ((5 + length) / 6) ** alpha.", flag_values=fv)
    flags.DEFINE_integer("num_samples", 1, "Continuations to draw (with beam search: the best beams).",
                         flag_values=fv)
    flags.DEFINE_multi_string("stop", [], "End a continuation before this text (repeatable; \\n is a newline).",
                              flag_values=fv)
    flags.DEFINE_enum("truncate", "error", ["error", "left"],
                      "A prompt too long for the context: fail, or keep its end.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same text.", flag_values=fv)
    flags.DEFINE_boolean("template", False, "Put the prompt in the instruction template of the workdir's "
                         "fine-tuning run (finetune.template), as it was trained.", flag_values=fv)


def _define_eval(fv, argv):
    from gptjax.evals import cli

    _define_common(fv)
    _define_reader(fv)
    cli.define_flags(fv, argv)


def _define_import_hf(fv, argv):
    _define_common(fv)
    flags.DEFINE_string("hf_dir", None, "A transformers GPT-2 directory (config.json + *.safetensors).",
                        flag_values=fv)


def _define_inspect(fv, argv):
    from gptjax.analysis import inspect_cli

    _define_common(fv)
    _define_reader(fv)
    inspect_cli.define_flags(fv, argv)


def _define_plan(fv, argv):
    from gptjax import plan

    define_config(fv, argv)
    flags.DEFINE_string("topology", None, f"Target to compile for: {plan.TOPOLOGY_HELP}.", flag_values=fv)
    flags.DEFINE_integer("num_slices", 1, "TPU slices of --topology, joined over the data axis (multislice).",
                         flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the report as JSON.", flag_values=fv)


# The start of what jax.distributed.initialize() raises, before it connects to anything, when it has neither flags
# nor a cluster environment to take the coordinator, the process count or this process's id from.
_NO_CLUSTER = ("coordinator_address should be defined", "Number of processes must be defined",
               "The process id of the current process must be defined")
_EXPLICIT = "--coordinator_address=HOST:PORT --num_processes=N --process_id=I"


def _init_distributed(f):
    """Joins the other processes: explicitly with --num_processes > 1 (and --coordinator_address, --process_id), or
    with --distributed from what jax detects (Cloud TPU slice metadata, SLURM, Open MPI, Kubernetes; any of the
    three flags given is used as it is). Flags that cannot start a run are one GptjaxError line."""
    import jax

    n, pid = f.num_processes, f.process_id
    if n is not None and n > 1:
        missing = [name for name in ("coordinator_address", "process_id") if f[name].value is None]
        if missing:
            raise GptjaxError(f"--num_processes={n}: every process also needs "
                              f"{' and '.join('--' + m for m in missing)} ({_EXPLICIT}, the same address for all)")
        if not 0 <= pid < n:
            raise GptjaxError(f"--process_id={pid}: must be 0 to {n - 1} with --num_processes={n}")
        jax.distributed.initialize(f.coordinator_address, num_processes=n, process_id=pid)
    elif f.distributed:
        try:
            jax.distributed.initialize(f.coordinator_address, num_processes=n, process_id=pid)
        except ValueError as err:
            if not str(err).startswith(_NO_CLUSTER):
                raise
            raise GptjaxError(
                "--distributed: jax found no cluster to join here; it reads the processes from a Cloud TPU slice "
                "(its metadata), a SLURM job (srun), Open MPI (mpirun) or a Kubernetes job. On other machines start "
                f"every process with {_EXPLICIT} instead of --distributed (launch/local_multiprocess.sh does that "
                "for N processes on one machine)") from None


def _config(f):
    try:
        config = f.config
        config.unlocked  # config_flags defers a file that failed to load to the first attribute read
    except OSError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ConfigError(f"--config: {lines[-1]}") from None
    return config


def _final_config(f, plan: bool = False):
    """The --config file with its --config.* overrides, preset applied (keeping the overridden fields), checked."""
    from ml_collections import config_flags

    from gptjax import configs

    return configs.finalize(_config(f), overridden=config_flags.get_override_values(f["config"]), plan=plan)


# Refusals that only a write meets: one that escapes the writers' own checks (which name their file) is still one
# line naming the workdir, not a traceback. EACCES and EPERM are left out: a read can meet them too.
_WRITE_ONLY_REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _train(f):
    from gptjax import files, runs, workdirs

    try:
        runs.train(_final_config(f), f.workdir)
    except OSError as err:
        if isinstance(err, GptjaxError) or err.errno not in _WRITE_ONLY_REFUSALS:
            raise
        raise files.write_error(err, err.filename or f"--workdir={f.workdir}", "") from err
    finally:
        workdirs.unlock()  # the process ends next, which releases it too; main() in a test process goes on


def _sample(f):
    from gptjax import workdirs
    from gptjax.configs import smoke

    if (f.prompt is None) == (f.prompt_file is None):
        raise GptjaxError("give exactly one of --prompt and --prompt_file")
    if f.prompt_file is not None and not os.path.isfile(f.prompt_file):
        raise GptjaxError(f"--prompt_file: no such file: {f.prompt_file}")
    prompt = f.prompt if f.prompt is not None else open(f.prompt_file, encoding="utf-8").read()
    if f.template:
        from gptjax.finetune import data as finetune_data

        prompt = finetune_data.render(finetune_data.saved_template(f.workdir), prompt)
    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in f.stop]
    max_new_tokens, num_samples = f.max_new_tokens, f.num_samples
    if smoke.enabled():
        max_new_tokens, num_samples = min(max_new_tokens, smoke.NEW_TOKENS), min(num_samples, 2)
        smoke.announce(f"sampling {max_new_tokens} tokens, {num_samples} sample(s)")
    workdirs.sample_from_workdir(
        f.workdir, prompt, max_new_tokens=max_new_tokens, temperature=f.temperature, top_k=f.top_k,
        top_p=f.top_p, beam_size=f.beam_size, length_penalty=f.length_penalty, num_samples=num_samples,
        stop_strings=stops, truncate=f.truncate, seed=f.seed,
    )


def _eval(f):
    from gptjax.evals import cli

    cli.main(f)


def _import_hf(f):
    from gptjax import workdirs

    if not f.hf_dir:
        raise GptjaxError("--hf_dir: required (a transformers GPT-2 directory)")
    workdirs.import_hf(f.hf_dir, f.workdir)


def _inspect(f):
    from gptjax.analysis import inspect_cli

    inspect_cli.run(f)


def _plan(f):
    from gptjax import plan

    if not f.topology:
        raise GptjaxError(f"--topology: required ({plan.TOPOLOGY_HELP})")
    config = _final_config(f, plan=True)
    name = os.path.relpath(f["config"].config_filename) if f["config"].config_filename else ""
    plan.run(config, f.topology, f.num_slices, as_json=f.json, config_name=name)


_DISPATCH = {
    "train": (_define_train, _train),
    "sample": (_define_sample, _sample),
    "eval": (_define_eval, _eval),
    "import-hf": (_define_import_hf, _import_hf),
    "inspect": (_define_inspect, _inspect),
    "plan": (_define_plan, _plan),
}


def _config_error(err: BaseException, argv) -> ConfigError | None:
    """One line for a config that cannot be loaded or overridden, or None when `err` is not bad input."""
    chain, x = [], err
    while x is not None:
        chain.append(x)
        x = x.__cause__ or x.__context__
    if not any(isinstance(x, _CONFIG_INPUT_ERRORS) for x in chain) and not isinstance(err, flags.Error):
        return None
    inner = chain[-1]
    text = str(inner).encode().decode("unicode_escape")
    if isinstance(inner, KeyError):  # a locked ConfigDict: 'key'\nDid you mean "other" instead of "key"?
        key = re.search(r"'([^'\\]+)'", text)
        hint = re.search(r'Did you mean "([^"]+)"', " ".join(str(x).encode().decode("unicode_escape") for x in chain))
        for arg in argv:
            name = arg.split("=")[0]
            if key and name.startswith("--config.") and f".{key.group(1)}." in name + ".":
                return ConfigError(f"{name}: no such key in the config"
                                   + (f" (did you mean {hint.group(1)}?)" if hint else ""))
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if "Traceback" in str(err):  # get_config raised: its own message is the last line of the traceback text
        flag = lines[0].split(":")[0].removeprefix("flag ")
        return ConfigError(f"{flag}: {lines[-1].split(': ', 1)[-1]}")
    if isinstance(err, flags.Error):
        return ConfigError(" ".join(lines))
    return ConfigError(f"--config: {[ln.strip() for ln in text.splitlines() if ln.strip()][-1]}")


def main(argv) -> int:
    """Runs `argv` (argv[0] is the program, argv[1] the command) in this process; returns the exit status."""
    argv = list(argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    command = argv.pop(1)
    argv[0] = f"gptjax {command}"
    define, fn = _DISPATCH[command]
    fv = flags.FlagValues()
    try:
        if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
            define(fv, [argv[0]])
            print(f"{USAGE}\n\nflags of gptjax {command}:\n{fv.get_help()}")
            return 0
        try:
            define(fv, argv)  # the config flag loads its default file here
            fv(argv)  # ... or the --config file, and applies the --config.* overrides
        except Exception as err:  # noqa: BLE001  (only bad input is turned into one line; the rest re-raised)
            config_err = _config_error(err, argv)
            if config_err is None:
                raise
            raise config_err from None
        # plan has no workdir; eval may take its workdirs from the config (an evaluation sweep from one file)
        if "workdir" in fv and fv["workdir"].value is None and command != "eval":
            raise GptjaxError("--workdir: required")
        logging.set_verbosity(logging.WARNING)  # absl/orbax INFO lines would drown the progress lines
        if "distributed" in fv:
            _init_distributed(fv)
        if "on_corrupt" in fv:
            from gptjax import checkpoint

            with checkpoint.corrupt_policy(fv.on_corrupt):
                fn(fv)
        else:
            fn(fv)
    except GptjaxError as err:
        print(f"gptjax: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a gs:// workdir with no network is one line; every other OSError keeps its traceback
        from gptjax import files

        message = files.unreachable(err)
        if message is None:
            raise
        print(f"gptjax: error: {message}", file=sys.stderr)
        return 2
    return 0


def run():
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
