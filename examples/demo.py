"""Start a local `kvpio serve` on SQLite, use it as a dict and a template store, stop it.

make demo        # or: .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from kvpio_mapping import connect


def main() -> int:
    api_key = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvpio_mapping",
                "serve",
                "--port",
                "0",
                "--db",
                str(Path(tmp) / "kvpio.sqlite3"),
                f"--api-key={api_key}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline().strip()
            print(line)
            # "kvpio serving on URL (database PATH)"
            url = line.removeprefix("kvpio serving on ").split()[0]
            with connect(url, api_key) as kv:
                bucket, templates = kv.bucket, kv.templates
                bucket["my_key"] = {"foo": 123, "bar": True, "baz": {"boo": 321, "faz": [1, 2, 3]}}
                print("bucket['my_key/baz/faz'] ->", bucket["my_key/baz/faz"])
                print("bucket['my_key/baz/faz/2'] ->", bucket["my_key/baz/faz/2"], "(1-based)")
                bucket["my_key/baz/new"] = "nested write"
                print("'my_key/baz/new' in bucket ->", "my_key/baz/new" in bucket)
                cfg = bucket.view("config")
                cfg.update(debug=False, workers=2)
                print("dict(bucket) ->", dict(bucket))
                templates["greeting"] = "workers={{ config.workers }}, faz={{ my_key.baz.faz }}"
                print("templates['greeting'] ->", templates["greeting"])
                override = {"config": {"workers": 8}}
                print("render with data ->", templates.render("greeting", override))
                del bucket["my_key"]
                print("bucket.get('my_key') ->", bucket.get("my_key"))
                print("account ->", kv.account())
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
