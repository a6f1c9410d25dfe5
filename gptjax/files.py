"""Small file helpers shared by the data, tokenizer and checkpoint layers."""

import os
import pathlib
from collections.abc import Callable


def atomic_write(path: pathlib.Path, write: Callable) -> None:
    """write(file) into a temporary file renamed to `path`: processes sharing a workdir never see partial files."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
