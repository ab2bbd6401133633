"""apply.py starts a service once more when its start failed, whether systemd could not spawn it (Result=
resources, systemd 257's "Failed to spawn executor" in a container right after a stop) or its process failed
(a daemon's start racing something on a busy machine); a second failure is the deploy's, with the unit's
journal."""

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


@pytest.mark.parametrize("result", ["resources", "exit-code"])
def test_a_start_that_failed_is_tried_once_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: str) -> None:
    """Whether systemd could not spawn the service or its process failed: once more, then it runs."""
    log = fake_systemctl(tmp_path, result)
    ns = apply_namespace()
    monkeypatch.setitem(ns["ENV"], "PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setitem(ns, "time", type("T", (), {"sleep": staticmethod(lambda _s: None)}))
    out = ns["start_unit"]("restart", "nginx.service")
    assert log.read_text().splitlines() == [
        "restart nginx.service",
        "show -p Result --value nginx.service",
        "reset-failed nginx.service",
        "start nginx.service",
    ]
    assert "(tried again once: " in out


def test_a_second_failure_is_the_deploys_with_the_units_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fake_systemctl(tmp_path, "exit-code")
    (tmp_path / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$1" in start|restart) echo "Job failed"; exit 1 ;; esac\nexit 0\n'
    )
    (tmp_path / "journalctl").write_text("#!/bin/sh\necho \"mta-sts-daemon[7]: why it stopped\"\n")
    (tmp_path / "journalctl").chmod(0o755)
    ns = apply_namespace()
    monkeypatch.setitem(ns["ENV"], "PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setitem(ns, "time", type("T", (), {"sleep": staticmethod(lambda _s: None)}))
    with pytest.raises(ns["Failed"]) as e:
        ns["start_unit"]("restart", "x.service")
    assert str(e.value).startswith("systemctl restart x.service failed (exit 1):")
    assert "its journal:\nmta-sts-daemon[7]: why it stopped" in str(e.value)
    assert log.read_text().splitlines() == [
        "restart x.service", "show -p Result --value x.service", "reset-failed x.service", "start x.service"
    ]
