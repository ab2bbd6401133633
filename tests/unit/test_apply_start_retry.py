"""apply.py starts a service once more when systemd itself could not spawn it (Result=resources, systemd 257's
"Failed to spawn executor" in a container right after a stop), and only then: any other failure is the
deploy's failure at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from miab_remote.remote import script


def apply_namespace() -> dict[str, Any]:
    """remote/apply.py as shipped, its functions without its final call of main()."""
    source = script("apply").decode()
    assert source.rstrip().endswith("main()")
    namespace: dict[str, Any] = {"__name__": "apply"}
    exec(compile(source.rstrip()[: -len("main()")], "apply.py", "exec"), namespace)
    return namespace


def fake_systemctl(folder: Path, fail_first_with: str) -> Path:
    """A systemctl that fails the first start/restart, answers `show -p Result` with `fail_first_with`, and
    logs every call."""
    log = folder / "calls"
    tool = folder / "systemctl"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$1" in\n'
        f'  start|restart) if [ ! -e {folder}/failed ]; then touch {folder}/failed; '
        'echo "Job failed because of unavailable resources"; exit 1; fi ;;\n'
        f'  show) echo {fail_first_with} ;;\n'
        "esac\n"
        "exit 0\n"
    )
    tool.chmod(0o755)
    return log


@pytest.mark.parametrize(("result", "retried"), [("resources", True), ("exit-code", False)])
def test_a_start_systemd_could_not_spawn_is_tried_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: str, retried: bool
) -> None:
    log = fake_systemctl(tmp_path, result)
    ns = apply_namespace()
    monkeypatch.setitem(ns["ENV"], "PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setitem(ns, "time", type("T", (), {"sleep": staticmethod(lambda _s: None)}))
    if retried:
        ns["start_unit"]("restart", "nginx.service")
        assert log.read_text().splitlines() == [
            "restart nginx.service",
            "show -p Result --value nginx.service",
            "reset-failed nginx.service",
            "start nginx.service",
        ]
    else:
        with pytest.raises(ns["Failed"], match=r"systemctl restart nginx\.service failed"):
            ns["start_unit"]("restart", "nginx.service")
        assert log.read_text().splitlines() == ["restart nginx.service", "show -p Result --value nginx.service"]
