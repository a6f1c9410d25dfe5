"""Task registry: `get("name")` or `get("name:key=value,key=value")` builds a Task.

Shipped offline: GPT-3's synthetic probes (arithmetic_2da ... arithmetic_5ds, arithmetic_2dm, cycle_letters,
anagrams1, anagrams2, random_insertion, reversed_words), three held-out-Shakespeare tasks (shakespeare_last_word,
shakespeare_next_line, shakespeare_genre) and the in-context learning probe (icl_mapping, option items=2). The
standard benchmarks (lambada, hellaswag, piqa, arc_easy, arc_challenge, winogrande, storycloze, boolq, copa,
triviaqa) read local files (`path=`) or an already prepared TFDS dataset; nothing is downloaded
(`gptjax/evals/tasks/benchmarks.py`).
"""

import functools

from gptjax.errors import DataError
from gptjax.evals.tasks import benchmarks, shakespeare, synthetic
from gptjax.evals.tasks.base import Example, Task  # noqa: F401

_BUILDERS = {
    **{n: functools.partial(synthetic.arithmetic, n) for n in synthetic.ARITHMETIC},
    **{n: functools.partial(synthetic.scramble, n) for n in synthetic.SCRAMBLES},
    "shakespeare_last_word": shakespeare.last_word,
    "shakespeare_next_line": shakespeare.next_line,
    "shakespeare_genre": shakespeare.genre,
}
_OPTIONS = {"icl_mapping": ("items", "n")}
_BENCHMARK_OPTIONS = ("path", "demos", "labels", "demo_labels", "tfds", "split", "demo_split", "data_dir")
OFFLINE = tuple(_BUILDERS) + ("icl_mapping",)
NAMES = OFFLINE + tuple(benchmarks.BENCHMARKS)


def parse(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.strip().partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"task {spec!r}: option {item!r} is not key=value")
        opts[key.strip()] = value.strip()
    return name, opts


@functools.cache
def get(spec: str) -> Task:
    """The task named by `spec`; a DataError names an unknown task, option or a bad task file."""
    name, opts = parse(spec)
    if name not in NAMES:
        raise DataError(f"unknown task {name!r}; choose from {', '.join(NAMES)}")
    allowed = _OPTIONS.get(name, _BENCHMARK_OPTIONS if name in benchmarks.BENCHMARKS else ())
    for key in opts:
        if key not in allowed:
            raise DataError(f"task {name}: unknown option {key!r}; it takes {', '.join(allowed) or 'none'}")
    if name in benchmarks.BENCHMARKS:
        try:
            task = benchmarks.benchmark(name, **opts)
        except DataError as e:
            raise DataError(f"task {name}: {e}") if not str(e).startswith(f"task {name}") else e from e
    elif name == "icl_mapping":
        try:
            task = synthetic.icl_mapping(spec, int(opts.get("items", 2)), n=int(opts.get("n", 400)))
        except ValueError as e:
            raise DataError(f"task {spec}: options items and n take integers ({e})") from e
    else:
        task = _BUILDERS[name]()
    task.name = spec.strip()
    return task
