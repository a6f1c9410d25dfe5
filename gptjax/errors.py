"""The one error type for the user's mistakes.

`gptjax` (the CLI) turns a `GptjaxError` into one line, `gptjax: error: <message>`, and exit status 2. Every other
exception keeps its traceback: a shape bug in someone's ablation is a bug, not bad input. Raise a `GptjaxError`
(or one of the subclasses below) only for input the user can fix, with a message that names the key, flag or file.
"""


class GptjaxError(Exception):
    """Bad input: a config key, flag, file or workdir that cannot work. The message says which and why."""


class ConfigError(GptjaxError, ValueError):
    """A config that cannot work; the message names the key."""


class DataError(GptjaxError, ValueError):
    """Training or evaluation data that cannot be read or used; the message names the file or key."""


class CheckpointError(GptjaxError, ValueError):
    """A workdir or checkpoint that cannot be used with this config; the message says why in one line."""


class PromptError(GptjaxError, ValueError):
    """A prompt or generation option the model cannot take (empty, longer than its context, a bad sampler)."""


class TrainingError(GptjaxError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message says where and what to try."""
