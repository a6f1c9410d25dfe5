"""Makes lm-evaluation-harness's own command line find gptjax: `lm_eval --model gptjax --model_args workdir=DIR`.

lm-eval 0.4.13 reads no entry points: its model table is `lm_eval.models.MODEL_MAPPING`, filled when lm-eval
imports `lm_eval.models`. The installed `gptjax-lm-eval.pth` imports this module when Python starts (it imports
nothing else and adds one import finder). When `lm_eval.models` is first imported, the finder lets it load and
then registers the lazy placeholder `gptjax.evals.harness:GptjaxLM` beside lm-eval's own entries. gptjax, jax and
the model load only when lm-eval asks for `gptjax`. Written by hand: no packaging tool adds a model to lm-eval.
"""

import importlib.abc
import importlib.machinery
import sys

WATCHED = "lm_eval.models"
NAME, TARGET = "gptjax", "gptjax.evals.harness:GptjaxLM"


def register(registry) -> None:
    """Adds `gptjax` to lm-eval's model registry (`lm_eval.api.registry.model_registry`) unless it is there. The
    harness module calls it too, so the name has one target however it was registered first (lm-eval 0.4.13 raises
    on a second registration of a different target)."""
    if NAME not in registry:
        registry.register(NAME, target=TARGET)


class _RegisterAfterLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            from lm_eval.api.registry import model_registry

            register(model_registry)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if "lm_eval.models" in sys.modules:  # already loaded: register now
        from lm_eval.api.registry import model_registry

        register(model_registry)
    elif not any(isinstance(f, _RegisterAfterLoad) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterLoad())


install()
