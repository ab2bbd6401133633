"""Scripts that run ON the box (stdlib-only python3), shipped over SSH on each run: nothing is installed.

The box runs `python3 -c BOOTSTRAP` and gets on stdin the script's length, its source text, then its input
(`script_input`). A script that imports the module `wire` (the typed wire shared with the engine,
remote/wire.py) is shipped with it: `script()` puts one line before the script's text that makes wire.py's
source the module `wire`, so both sides read the same definitions and the box still gets one source text.
"""

from __future__ import annotations

from importlib import resources

# The remote side reads the script (its length first), then leaves the rest of stdin to it as its input.
BOOTSTRAP = (
    "import sys;b=sys.stdin.buffer;n=int(b.readline());"
    "exec(compile(b.read(n),'miab-remote','exec'),{'__name__':'__main__'})"
)
WIRE_IMPORT = b"\nfrom wire import "


def _source(name: str) -> bytes:
    return resources.files(__package__).joinpath(f"{name}.py").read_bytes()


def script(name: str) -> bytes:
    """The source text to run on the box for `remote/NAME.py`, with the wire module when it imports it."""
    code = _source(name)
    if WIRE_IMPORT not in code:
        return code
    wire = _source("wire").decode("utf-8")
    prelude = (
        "import sys as _sys, types as _types; _wire = _sys.modules['wire'] = _types.ModuleType('wire'); "
        f"exec(compile({wire!r}, 'wire.py', 'exec'), _wire.__dict__); del _sys, _types, _wire\n"
    )
    return prelude.encode("utf-8") + code


def script_head(name: str) -> bytes:
    """What `python3 -c BOOTSTRAP` reads on stdin first to run script `name`; the script's input follows."""
    code = script(name)
    return str(len(code)).encode() + b"\n" + code


def script_input(name: str, body: bytes) -> bytes:
    """All that `python3 -c BOOTSTRAP` reads on stdin to run script `name` with `body` as its input."""
    return script_head(name) + body
