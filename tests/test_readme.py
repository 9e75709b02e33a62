"""The README runs as written: its console sessions and its Python examples.

Each ``console`` block is replayed command by command in a fresh directory,
against a fresh ``kvpio serve`` (options from a ``<!-- serve: ... -->``
comment right before the block), on a pseudo-terminal so that what a
terminal shows is what is compared. Each ``python`` block with ``>>>``
prompts runs as a doctest against a real server; the address
``http://127.0.0.1:8000`` and the key ``my-api-key`` in the README stand for
the test server's. Other ``python`` blocks must at least compile.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from terminal_session import run_on_terminal

from kvpio_mapping.testing import run_server

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "http://127.0.0.1:8000"
README_KEY = "my-api-key"

_BLOCK = re.compile(
    r"(?:<!-- serve:(?P<serve>[^>]*)-->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    serve: tuple[str, ...]

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def _blocks(lang: str) -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(
            match["lang"],
            match["body"],
            text.count("\n", 0, match.start("body")) + 1,
            tuple(shlex.split(match["serve"] or "")),
        )
        for match in _BLOCK.finditer(text)
        if match["lang"] == lang
    ]


def _steps(body: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console session."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before the first command: {line!r}"
            steps[-1][1].append(line)
    return [(command, "\n".join(out)) for command, out in steps]


def _on_terminal(command: str, cwd: Path, env: dict[str, str]) -> str:
    """Run ``command`` with bash on a pseudo-terminal; what it showed, as a terminal shows it."""
    text = run_on_terminal(["bash", "-c", command], env=env, cwd=cwd)[1]
    # A line redrawn with carriage returns (a progress bar) shows its last state.
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n")).rstrip("\n")


@pytest.mark.slow
@pytest.mark.parametrize("block", _blocks("console"), ids=str)
def test_console_session_runs_as_written(block: Block, tmp_path: Path) -> None:
    serve = list(block.serve)
    options = {"max_body": int(serve[serve.index("--max-body") + 1])} if serve else {}
    home = tmp_path / "home"
    home.mkdir()
    with run_server(**options) as server:
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "KVPIO_URL": server.url,
            "KVPIO_APIKEY": server.api_key,
            "KVPIO_DB": server.db,
        }
        for command, expected in _steps(block.body):
            shown = _on_terminal(command, tmp_path, env)
            assert shown == expected, f"{block}: $ {command}"


def test_python_examples_run_as_written() -> None:
    """Every ``>>>`` example, in order, sharing names as ``python -m doctest README.md`` does."""
    lines = README.read_text(encoding="utf-8").splitlines()
    kept = [""] * len(lines)
    for block in _blocks("python"):
        if ">>> " in block.body:
            span = slice(block.line - 1, block.line - 1 + block.body.count("\n"))
            kept[span] = lines[span]
    examples = "\n".join(kept)  # blanks elsewhere keep failures at their README line
    with run_server() as server:
        source = examples.replace(README_URL, server.url).replace(README_KEY, server.api_key)
        test = doctest.DocTestParser().get_doctest(source, {}, "README", str(README), 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        output: list[str] = []
        runner.run(test, out=output.append)
        assert runner.failures == 0, "".join(output)


@pytest.mark.parametrize("block", [b for b in _blocks("python") if ">>> " not in b.body], ids=str)
def test_python_illustration_compiles(block: Block) -> None:
    compile(block.body, str(block), "exec")
