"""The ``kvpio`` command line against a real server.

Most cases call :func:`kvpio_mapping.cli.main` in-process (fast); a handful
run ``python -m kvpio_mapping`` as a subprocess to check exit statuses, the
``~/.kvpio`` key file, ``--help`` and terminal output.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from terminal_session import on_terminal

from kvpio_mapping import cli
from kvpio_mapping.testing import new_account, run_server

Result = tuple[int, str, str]


@pytest.fixture
def account(kvpio_account: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A fresh account that ``kvpio`` finds through the environment."""
    monkeypatch.setenv("KVPIO_URL", kvpio_account.url)
    monkeypatch.setenv("KVPIO_APIKEY", kvpio_account.api_key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return kvpio_account


@pytest.fixture
def run(account: Any, capsys: pytest.CaptureFixture[str]) -> Any:
    """``run(*argv) -> (exit status, stdout, stderr)`` of ``main`` in this process."""

    def call(*argv: str) -> Result:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def subprocess_env(home: Path, **variables: str) -> dict[str, str]:
    """A clean environment for ``python -m kvpio_mapping``: no key unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVPIO_")}
    env["HOME"] = str(home)
    env.update(variables)
    return env


def kvpio(*argv: str, env: dict[str, str]) -> Result:
    """Run ``python -m kvpio_mapping`` in ``$HOME`` and return (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "kvpio_mapping", *argv],
        env=env,
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


# ---------------------------------------------------------------- account and bucket


def test_account(run: Any, account: Any) -> None:
    code, out, err = run("account")
    assert (code, err) == (0, "")
    info = json.loads(out)
    assert set(info) == {"id", "email", "reads", "size"}
    assert account.api_key not in out
    assert out.count("\n") == 1  # one line when piped


def test_set_get_list_del(run: Any) -> None:
    assert run("bucket", "set", "foo", '{"bar": {"baz": 123}}') == (0, "", "")
    assert run("bucket", "get", "foo/bar/baz") == (0, "123\n", "")
    assert run("bucket", "get", "foo") == (0, '{"bar": {"baz": 123}}\n', "")
    assert run("bucket", "set", "list", "[1, 2, 3]")[0] == 0
    assert run("bucket", "get", "list/2") == (0, "2\n", "")
    assert run("bucket", "list") == (0, '["foo", "list"]\n', "")
    assert run("bucket", "del", "foo/bar") == (0, "", "")
    assert run("bucket", "get", "foo") == (0, "{}\n", "")
    assert run("bucket", "del", "foo") == (0, "", "")
    assert run("bucket", "del", "foo") == (0, "", "")  # deleting what is missing is fine
    assert run("bucket", "list") == (0, '["list"]\n', "")


def test_bucket_list_at_a_path(run: Any) -> None:
    assert run("bucket", "set", "users", '{"ada": {"born": 1815}, "a b": [1, 2]}')[0] == 0
    assert run("bucket", "list", "users") == (0, '["ada", "a b"]\n', "")
    assert run("bucket", "list", "users/a b") == (0, '["1", "2"]\n', "")
    assert run("bucket", "list", "users/ada/born") == (0, "[]\n", "")  # a scalar has none
    assert run("bucket", "list", "nobody") == (0, "[]\n", "")
    assert run("bucket", "list") == (0, '["users"]\n', "")


def test_bucket_clear_in_a_script_needs_yes(run: Any) -> None:
    assert run("bucket", "set", "a", "1")[0] == 0
    assert run("template", "set", "t", "{{ a }}")[0] == 0
    assert run("bucket", "clear") == (
        2,
        "",
        "kvpio: not on a terminal, so nobody can confirm: pass --yes\n",
    )
    assert run("bucket", "list") == (0, '["a"]\n', "")
    assert run("bucket", "clear", "--yes") == (0, "", "")
    assert run("bucket", "list") == (0, "[]\n", "")
    assert run("template", "list")[1] == '["t"]\n'  # templates stay


def test_bucket_clear_on_a_terminal_asks_first(kvpio_account: Any, tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, KVPIO_URL=kvpio_account.url, KVPIO_APIKEY=kvpio_account.api_key)
    assert kvpio("bucket", "set", "k", "1", env=env)[0] == 0
    code, shown = on_terminal("bucket", "clear", answer="no", env=env)
    assert code == 2
    assert f"Delete every key in the bucket at {kvpio_account.url}? [y/N] " in shown
    assert shown.endswith("kvpio: not confirmed; nothing changed\n")
    assert kvpio("bucket", "list", env=env)[1] == '["k"]\n'
    assert on_terminal("bucket", "clear", answer="y", env=env)[0] == 0
    assert kvpio("bucket", "list", env=env)[1] == "[]\n"


def test_set_value_that_is_not_json_is_a_string(run: Any) -> None:
    assert run("bucket", "set", "greeting", "hello world")[0] == 0
    assert run("bucket", "get", "greeting") == (0, '"hello world"\n', "")
    assert run("bucket", "set", "n", "NaN")[0] == 0  # not JSON either
    assert run("bucket", "get", "n") == (0, '"NaN"\n', "")
    assert run("bucket", "set", "n", "1e999")[0] == 0  # beyond a float: not storable JSON
    assert run("bucket", "get", "n") == (0, '"1e999"\n', "")
    assert run("bucket", "set", "t", "true")[0] == 0
    assert run("bucket", "get", "t") == (0, "true\n", "")


def test_non_ascii_prints_as_is(run: Any) -> None:
    assert run("bucket", "set", "ü", '"grüße ✓"')[0] == 0
    assert run("bucket", "get", "ü") == (0, '"grüße ✓"\n', "")


def test_output_that_the_terminal_cannot_encode(
    run: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run("bucket", "set", "k", '"✓"')
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert cli.main(["bucket", "get", "k"]) == 1
    assert capsys.readouterr().err == (
        "kvpio: the output does not fit this terminal's ascii encoding"
        " (set PYTHONIOENCODING=utf-8)\n"
    )


def test_get_missing_key(run: Any) -> None:
    assert run("bucket", "get", "foo") == (1, "", "kvpio: no such key: foo\n")
    run("bucket", "set", "foo", "[1]")
    assert run("bucket", "get", "foo/2") == (1, "", "kvpio: no such key: foo/2\n")


@pytest.mark.parametrize(
    "key", ["with space", "what?", "hash#tag", "100%", "a+b", "naïve/日本", "a&b=c"]
)
def test_keys_with_special_characters(run: Any, key: str) -> None:
    assert run("bucket", "set", key, "1") == (0, "", "")
    assert run("bucket", "get", key) == (0, "1\n", "")
    top = key.split("/")[0]
    assert json.loads(run("bucket", "list")[1]) == [top]
    assert run("bucket", "del", key) == (0, "", "")
    assert run("bucket", "get", key)[0] == 1


def test_invalid_path_fails_before_sending(
    run: Any, closed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVPIO_URL", closed_url)  # anything sent would fail with exit 4
    code, out, err = run("bucket", "get", "a//b")
    assert (code, out) == (1, "")
    assert err == "kvpio: key path 'a//b' has an empty segment\n"
    assert run("bucket", "set", "../x", "1")[0] == 1


def test_set_from_file(run: Any, tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text('{"name": "Grace", "langs": ["COBOL"]}')
    assert run("bucket", "set", "user", "--file", "data.json") == (0, "", "")
    assert run("bucket", "get", "user/langs/1") == (0, '"COBOL"\n', "")


def test_set_and_import_from_stdin(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"a": ["\xc3\xbc"]}')))
    assert run("bucket", "set", "k", "--file", "-") == (0, "", "")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"b": 2}')))
    assert run("bucket", "import", "-")[0] == 0
    assert run("bucket", "export") == (0, '{"k": {"a": ["ü"]}, "b": 2}\n', "")


def test_a_file_with_a_number_beyond_a_float_is_not_valid_json(run: Any, tmp_path: Path) -> None:
    (tmp_path / "big.json").write_text('{"a": 1e999}')
    for command in (["set", "user", "--file"], ["import"]):
        code, out, err = run("bucket", *command, "big.json")
        assert (code, out) == (1, "")
        assert err == (
            "kvpio: big.json is not valid JSON: the number 1e999 is beyond the range of a float\n"
        )
    assert run("bucket", "list") == (0, "[]\n", "")  # nothing was sent


def test_set_from_file_with_invalid_json(run: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"name": ')
    code, out, err = run("bucket", "set", "user", "--file", "bad.json")
    assert (code, out) == (1, "")
    assert err.startswith("kvpio: bad.json is not valid JSON: ")
    assert err.count("\n") == 1
    assert run("bucket", "list") == (0, "[]\n", "")  # nothing was sent


def test_set_from_missing_file(run: Any) -> None:
    code, _, err = run("bucket", "set", "user", "--file", "nope.json")
    assert code == 1
    assert err == "kvpio: cannot read nope.json: No such file or directory\n"


def test_set_needs_exactly_one_value(run: Any, tmp_path: Path) -> None:
    (tmp_path / "v.json").write_text("1")
    assert run("bucket", "set", "k") == (2, "", "kvpio: give VALUE or --file\n")
    code, _, err = run("bucket", "set", "k", "1", "--file", "v.json")
    assert (code, err) == (2, "kvpio: give VALUE or --file, not both\n")


def test_server_refusal_shows_its_message(run: Any) -> None:
    run("bucket", "set", "list", "[1, 2]")
    code, out, err = run("bucket", "set", "list/x", "1")
    assert (code, out) == (1, "")
    assert err.startswith("kvpio: ") and "list" in err
    assert err.count("\n") == 1


def test_options_after_the_command(
    account: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KVPIO_URL")
    monkeypatch.delenv("KVPIO_APIKEY")
    base = ["--url", account.url, f"--api-key={account.api_key}"]
    assert cli.main(["bucket", "set", "k", "1", *base]) == 0
    assert cli.main([*base, "bucket", "get", "k"]) == 0
    assert capsys.readouterr().out == "1\n"


# ---------------------------------------------------------------- templates


def test_templates(run: Any) -> None:
    run("bucket", "set", "foo", '{"bar": {"baz": 123}}')
    source = "baz is equal to {{ foo.bar.baz }}"
    assert run("template", "set", "foo", source) == (0, "", "")
    assert run("template", "get", "foo") == (0, "baz is equal to 123\n", "")
    assert run("template", "get", "foo", "--raw") == (0, source + "\n", "")
    data = '{"foo": {"bar": {"baz": "X"}}}'
    assert run("template", "get", "foo", "--data", data) == (0, "baz is equal to X\n", "")
    assert run("template", "list") == (0, '["foo"]\n', "")
    assert run("template", "del", "foo") == (0, "", "")
    assert run("template", "list") == (0, "[]\n", "")


def test_template_original_rows(run: Any) -> None:
    nested = '[1, {"10": "Ten", "20": [46], "2": "two"}, 3]'
    run("bucket", "set", "foo", nested)
    source = 'What is {{ foo[1]["20"][0] }} and {{ foo[1]["2"] }} about anyway...'
    run("template", "set", "t", source)
    assert run("template", "get", "t") == (0, "What is 46 and two about anyway...\n", "")


def test_template_text_keeps_its_own_newline(run: Any) -> None:
    run("template", "set", "lines", "a\nb\n")
    assert run("template", "get", "lines") == (0, "a\nb\n", "")


def test_missing_template(run: Any) -> None:
    assert run("template", "get", "nope") == (1, "", "kvpio: no such template: nope\n")


def test_template_data_must_be_a_json_object(run: Any) -> None:
    run("template", "set", "t", "x")
    code, _, err = run("template", "get", "t", "--data", "{oops")
    assert code == 1 and err.startswith("kvpio: --data is not valid JSON")
    code, _, err = run("template", "get", "t", "--data", "[1]")
    assert (code, err) == (1, "kvpio: --data must be a JSON object of names to values\n")


def test_template_that_cannot_render(run: Any) -> None:
    run("template", "set", "broken", "{% if %}")
    code, out, err = run("template", "get", "broken")
    assert (code, out) == (1, "")
    assert err.startswith("kvpio: ") and err.count("\n") == 1


# ---------------------------------------------------------------- export and import


def test_export_whole_bucket_and_subtree(run: Any, tmp_path: Path) -> None:
    assert run("bucket", "export") == (0, "{}\n", "")
    run("bucket", "set", "users", '{"ada": {"born": 1815}, "grace": {"born": 1906}}')
    run("bucket", "set", "count", "2")
    code, out, _ = run("bucket", "export")
    assert code == 0
    assert json.loads(out) == {
        "users": {"ada": {"born": 1815}, "grace": {"born": 1906}},
        "count": 2,
    }
    assert run("bucket", "export", "users/ada") == (0, '{"born": 1815}\n', "")
    assert run("bucket", "export", "--output", "all.json") == (0, "", "")
    assert json.loads((tmp_path / "all.json").read_text())["count"] == 2
    assert run("bucket", "export", "nope") == (1, "", "kvpio: no such key: nope\n")


def test_import_round_trip(
    run: Any, account: Any, kvpio_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {f"key {i}": {"i": i, "tags": ["x", "ü"]} for i in range(25)}
    data["nested"] = {"a": {"b": [1, 2, {"c": None}]}}
    (tmp_path / "in.json").write_text(json.dumps(data))
    code, out, err = run("bucket", "import", "in.json", "--batch-size", "7")
    assert (code, out) == (0, "")
    assert err == "imported 26 keys in 4 batches\n"  # no progress bar: not a terminal
    assert run("bucket", "export", "--output", "out.json")[0] == 0
    exported = json.loads((tmp_path / "out.json").read_text())
    assert exported == data
    assert list(exported) == list(data)

    other = new_account(kvpio_server)
    monkeypatch.setenv("KVPIO_APIKEY", other.api_key)
    assert run("bucket", "import", "out.json")[0] == 0
    assert json.loads(run("bucket", "export")[1]) == data


def test_import_subtree(run: Any, tmp_path: Path) -> None:
    run("bucket", "set", "users", '{"ada": {"born": 1815, "langs": ["analytical"]}}')
    run("bucket", "set", "keep", "true")
    assert run("bucket", "export", "users", "--output", "users.json")[0] == 0
    assert run("bucket", "import", "users.json", "backup/users")[0] == 0
    assert run("bucket", "get", "backup/users/ada/langs/1") == (0, '"analytical"\n', "")
    assert json.loads(run("bucket", "export")[1]) == {
        "users": {"ada": {"born": 1815, "langs": ["analytical"]}},
        "keep": True,
        "backup": {"users": {"ada": {"born": 1815, "langs": ["analytical"]}}},
    }


def test_import_needs_an_object(run: Any, tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    assert run("bucket", "import", "list.json") == (
        1,
        "",
        "kvpio: list.json must hold a JSON object, not list\n",
    )
    (tmp_path / "bad.json").write_text("{")
    assert run("bucket", "import", "bad.json")[0] == 1


def test_import_refuses_an_unaddressable_key_before_writing(run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps({"fine": 1, "a/b": 2}))
    code, _, err = run("bucket", "import", "in.json", "--batch-size", "1")
    assert code == 1
    assert err.startswith("kvpio: cannot import key 'a/b': ")
    assert err.endswith("nothing was written\n")
    assert run("bucket", "list") == (0, "[]\n", "")


def test_import_failure_reports_what_was_written(tmp_path: Path) -> None:
    """A batch over the server's body limit fails; earlier batches stay, later ones are not sent."""
    data = {"a": 1, "b": 2, "c": "x" * 4000, "d": 4, "e": 5}
    (tmp_path / "in.json").write_text(json.dumps(data))
    with run_server(max_body=1024) as server:
        env = subprocess_env(tmp_path, KVPIO_URL=server.url, KVPIO_APIKEY=server.api_key)
        code, out, err = kvpio("bucket", "import", "in.json", "--batch-size", "2", env=env)
        exported = json.loads(kvpio("bucket", "export", env=env)[1])
    assert (code, out) == (1, "")
    assert err.startswith("kvpio: import failed at batch 2 of 3: ")
    assert err.endswith("; batch 1 (2 of 5 keys) written, nothing after\n")
    assert err.count("\n") == 1
    assert exported == {"a": 1, "b": 2}


def test_import_to_a_server_that_is_down(
    run: Any, closed_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.json").write_text('{"a": 1}')
    monkeypatch.setenv("KVPIO_URL", closed_url)
    code, _, err = run("bucket", "import", "in.json", "--timeout", "0.5")
    assert code == 4
    assert err == (
        f"kvpio: import failed at batch 1 of 1: cannot reach the server at {closed_url}; "
        "nothing was written (0 of 1 keys)\n"
    )


@pytest.mark.slow
def test_import_when_the_server_goes_away(tmp_path: Path) -> None:
    """Stopped mid-import: the report matches what the database holds afterwards."""
    data = {f"k{i:04}": i for i in range(3000)}
    (tmp_path / "in.json").write_text(json.dumps(data))
    with run_server(db=tmp_path / "kv.sqlite3") as server:
        env = subprocess_env(tmp_path, KVPIO_URL=server.url, KVPIO_APIKEY=server.api_key)
        importer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvpio_mapping",
                "bucket",
                "import",
                "in.json",
                "--batch-size",
                "1",
                "--timeout",
                "1",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code, out, _ = kvpio("bucket", "list", env=env)
            if code == 0 and len(json.loads(out)) >= 10:
                break
        server.stop()
        out, err = importer.communicate(timeout=60)
    assert (importer.returncode, out) == (4, "")
    match = re.fullmatch(
        r"kvpio: import failed at batch (\d+) of 3000: cannot reach the server at \S+; "
        r"batches 1-(\d+) \((\d+) of 3000 keys\) written, "
        r"(nothing after|and perhaps batch \d+ in full)\n",
        err,
    )
    assert match, err
    failed, before = int(match[1]), int(match[2])
    assert before == failed - 1 == int(match[3])
    with run_server(db=server.db, api_key=server.api_key) as again:
        env = subprocess_env(tmp_path, KVPIO_URL=again.url, KVPIO_APIKEY=again.api_key)
        stored = json.loads(kvpio("bucket", "export", env=env)[1])
    expected = dict(list(data.items())[:before])
    if match[4] == "nothing after":
        assert stored == expected
    else:
        assert stored in (expected, dict(list(data.items())[:failed]))


def test_written_report() -> None:
    assert cli._written(0, 5, 1, False) == "nothing was written (0 of 5 keys)"
    assert cli._written(0, 5, 1, True) == (
        "nothing was written except perhaps batch 1 in full (0 of 5 keys)"
    )
    assert cli._written(2, 5, 2, False) == "batch 1 (2 of 5 keys) written, nothing after"
    assert cli._written(4, 5, 3, True) == (
        "batches 1-2 (4 of 5 keys) written, and perhaps batch 3 in full"
    )


def test_import_under_an_invalid_path(run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"a": 1}')
    assert run("bucket", "import", "in.json", "x//y") == (
        1,
        "",
        "kvpio: key path 'x//y' has an empty segment\n",
    )


def test_import_batch_size_must_be_positive(run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"a": 1}')
    code, _, err = run("bucket", "import", "in.json", "--batch-size", "0")
    assert (code, err) == (2, "kvpio: --batch-size must be at least 1\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    terminal = _Terminal()
    bar = cli.Progress(10, terminal, "importing", "keys")
    bar.update(0, "batch 1/2")
    bar.update(5, "batch 2/2")
    bar.finish()
    assert terminal.getvalue() == (
        "\rimporting [------------------------------] 0/10 keys, batch 1/2"
        "\rimporting [###############---------------] 5/10 keys, batch 2/2\n"
    )
    pipe = io.StringIO()
    quiet = cli.Progress(10, pipe, "importing", "keys")
    quiet.update(5, "batch 1/1")
    quiet.finish()
    assert pipe.getvalue() == ""


# ---------------------------------------------------------------- output format


def test_format_json() -> None:
    value = {"a": [1, "ü"], "b": None}
    assert cli.format_json(value, pretty=False) == '{"a": [1, "ü"], "b": null}'
    assert cli.format_json(value, pretty=True) == (
        '{\n  "a": [\n    1,\n    "ü"\n  ],\n  "b": null\n}'
    )


def test_pretty_on_a_terminal(kvpio_account: Any, tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, KVPIO_URL=kvpio_account.url, KVPIO_APIKEY=kvpio_account.api_key)
    assert kvpio("bucket", "set", "k", '{"a": [1]}', env=env)[0] == 0
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kvpio_mapping", "bucket", "get", "k"],
            env=env,
            stdout=secondary,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert b"".join(chunks).decode().replace("\r\n", "\n") == '{\n  "a": [\n    1\n  ]\n}\n'


# ---------------------------------------------------------------- keys, failures, exit statuses


def test_no_api_key_at_all(tmp_path: Path, kvpio_server: Any) -> None:
    env = subprocess_env(tmp_path, KVPIO_URL=kvpio_server.url)
    code, out, err = kvpio("account", env=env)
    assert (code, out) == (3, "")
    assert err == (
        "kvpio: no API key: pass --api-key, set KVPIO_APIKEY or put it on the first line"
        " of ~/.kvpio\n"
    )


def test_wrong_api_key(tmp_path: Path, kvpio_server: Any) -> None:
    env = subprocess_env(tmp_path, KVPIO_URL=kvpio_server.url, KVPIO_APIKEY="wrong")
    assert kvpio("bucket", "get", "foo", env=env) == (
        3,
        "",
        "kvpio: the server does not know this API key\n",
    )


def test_server_down(tmp_path: Path, closed_url: str) -> None:
    env = subprocess_env(tmp_path, KVPIO_URL=closed_url, KVPIO_APIKEY="k")
    assert kvpio("--timeout", "0.5", "bucket", "list", env=env) == (
        4,
        "",
        f"kvpio: cannot reach the server at {closed_url}\n",
    )


def test_key_from_home_file(tmp_path: Path, kvpio_account: Any) -> None:
    (tmp_path / ".kvpio").write_text(kvpio_account.api_key + "\nignored second line\n")
    env = subprocess_env(tmp_path, KVPIO_URL=kvpio_account.url)
    assert kvpio("bucket", "set", "from", '"home"', env=env) == (0, "", "")
    assert kvpio("bucket", "get", "from", env=env) == (0, '"home"\n', "")
    assert kvpio("--api-key", "wrong", "bucket", "get", "from", env=env)[0] == 3  # option wins


def test_missing_key_exit_status(tmp_path: Path, kvpio_account: Any) -> None:
    env = subprocess_env(tmp_path, KVPIO_URL=kvpio_account.url, KVPIO_APIKEY=kvpio_account.api_key)
    assert kvpio("bucket", "get", "foo", env=env) == (1, "", "kvpio: no such key: foo\n")


def test_help(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path)
    code, out, _ = kvpio("--help", env=env)
    assert code == 0
    for text in (
        "account",
        "bucket",
        "template",
        "serve",
        "accounts",
        "exit status:",
        "KVPIO_APIKEY",
        "~/.kvpio",
        "kvpio bucket get foo/bar/baz",
    ):
        assert text in out
    code, out, _ = kvpio("bucket", "import", "--help", env=env)
    assert code == 0
    assert "--batch-size" in out and "examples:" in out
    code, _, err = kvpio(env=env)
    assert code == 2 and "usage: kvpio" in err
    code, _, err = kvpio("bucket", "frobnicate", env=env)
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize(
    "command",
    [
        ["account"],
        ["bucket", "list"],
        ["bucket", "get"],
        ["bucket", "set"],
        ["bucket", "del"],
        ["bucket", "export"],
        ["bucket", "import"],
        ["template", "list"],
        ["template", "get"],
        ["template", "set"],
        ["template", "del"],
    ],
)
def test_every_command_explains_itself(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example" in out and "kvpio " + " ".join(command) in out


def test_server_commands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--help"]) == 0
    assert "--port" in capsys.readouterr().out
    assert cli.main(["accounts", "--help"]) == 0
    assert "create" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("kvpio ")
