"""The house's shape, checked: imports inside gptjax/ point down the layers (a config's way from the command line to
the train step never climbs back), there is no import circle, and loading a config imports no jax."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "gptjax"

# Lowest first. A module may import from its own layer or any lower one, never from a higher one.
LAYERS = [
    ("foundation", ["errors", "files", "configs", "datasets", "sweep_stats"]),
    ("libraries", ["kernels", "model", "sharding", "tokenizer", "data", "optimizer", "metrics", "checkpoint",
                   "objectives", "decoding", "sampling", "beam_search", "convert", "finetune", "rl.losses",
                   "rl.models", "rl.objectives", "rl.data", "plan_cost", "scaling"]),
    ("core", ["loop", "trainer", "batching", "workdirs"]),
    ("capabilities", ["rl", "evals", "analysis"]),
    ("kinds of training", ["runs", "plan"]),
    ("command", ["main"]),
]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _layer(module: str) -> int:
    """The layer of gptjax.X.Y: the longest listed prefix of X.Y decides."""
    name = module.removeprefix("gptjax.")
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py::LAYERS"
    return best


def _imports(path: pathlib.Path) -> set[str]:
    """Every gptjax module `path` imports, at the top or inside a function."""
    module = _module_name(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gptjax")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            if base.startswith("gptjax"):
                for a in node.names:
                    full = f"{base}.{a.name}"
                    out.add(full if (PKG.parent / (full.replace(".", "/") + ".py")).exists()
                            or (PKG.parent / full.replace(".", "/")).is_dir() else base)
    return {m for m in out if m != module and m != "gptjax"}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py") if "vendor" not in p.parts}


def test_imports_point_down_the_layers():
    wrong = []
    for module, imports in _graph().items():
        for imp in imports:
            if _layer(imp) > _layer(module):
                wrong.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {imp} ({LAYERS[_layer(imp)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = _graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if n not in graph:
                continue
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_check_can_fail():
    """A module of a lower layer importing a higher one is caught (the layer table is not vacuous)."""
    assert _layer("gptjax.trainer") > _layer("gptjax.model")
    assert _layer("gptjax.runs.ppo") > _layer("gptjax.rl.rollouts") > _layer("gptjax.rl.losses")


def test_loading_a_config_imports_no_jax():
    code = ("import sys; from gptjax import configs; from gptjax.configs import finetune, rl; "
            "import importlib.util as u; s = u.spec_from_file_location('e', 'experiments/rlhf/genre_ppo.py'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); c = configs.finalize(m.get_config()); "
            "print(sorted(k for k in ('jax', 'flax', 'optax', 'orbax') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
