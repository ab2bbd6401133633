"""What a box with [acme] gets for MTA-STS and its zones, rendered on the laptop: the policy file and the nginx
server that serves only it, and zones-rebuild (the ACME deploy hook's way to build every zone again)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from miab_remote.engine.recipes import RecipeContext, load_resources, render_files
from miab_remote.engine.resources import Command, File, Resource
from miab_remote.engine.templates import TemplateSet
from miab_remote.fleet.model import Acme, Host
from miab_remote.fleet.options import OPTION_SPECS
from miab_remote.mail import layout, mtasts
from miab_remote.profiles import PROFILES

NAME = "mx.a.test"
CA = "https://ca.test/dir"
ACME = Acme(CA)


def host(acme: Acme | None = ACME, recipes: tuple[str, ...] = ("webmail",), dns: str = "nsd") -> Host:
    options = {name: spec.default for name, spec in OPTION_SPECS.items()} | {"dns": dns}
    return Host(
        name=NAME,
        path=Path(f"hosts/{NAME}.toml"),
        hostname=NAME,
        address="10.0.0.1",
        domains=("a.test", "b.test"),
        recipes=recipes,
        options=options,
        acme=acme,
    )


def build(h: Host, tmp_path: Path, profile: str = "debian-12") -> tuple[list[Resource], dict[str, bytes]]:
    p = PROFILES[profile]
    resources = load_resources(h, p, tmp_path)
    files = render_files(resources, RecipeContext(h, p).template_vars(), TemplateSet(None, p.template_variants))
    return resources, files


def servers(site: str) -> list[str]:
    """The top-level server blocks of an nginx file, in order."""
    out, depth, start = [], 0, None
    for m in re.finditer(r"^server \{|\{|\}", site, re.M):
        if m.group() == "server {" and depth == 0:
            start = m.start()
        if m.group().endswith("{"):
            depth += 1
        else:
            depth -= 1
            if depth == 0 and start is not None:
                out.append(site[start : m.end()])
                start = None
    return out


@pytest.mark.parametrize("profile", ["debian-12", "debian-13"])
def test_the_policy_is_served_alone_by_the_last_https_server(tmp_path: Path, profile: str) -> None:
    h = host(Acme(CA, mta_sts="enforce"))
    resources, files = build(h, tmp_path, profile)
    assert files[mtasts.POLICY_FILE].decode() == mtasts.policy(h)
    assert "mode: enforce\r\n" in mtasts.policy(h)
    policy_file = next(r for r in resources if isinstance(r, File) and r.path == mtasts.POLICY_FILE)
    assert policy_file.mode == 0o644
    site = files["/etc/nginx/conf.d/miab-remote-webmail.conf"].decode()
    last = servers(site)[-1]
    assert site.rstrip().endswith(last)
    assert re.search(r"^\s+server_name mta-sts\.a\.test mta-sts\.b\.test;", last, re.M)
    assert re.search(r"^\s+listen 443 ssl", last, re.M) and re.search(r"^\s+listen \[::\]:443 ssl", last, re.M)
    assert f"ssl_certificate {layout.TLS_CERT};" in last and f"ssl_certificate_key {layout.TLS_KEY};" in last
    location = re.search(r"location = /\.well-known/mta-sts\.txt \{(.*?)\n    \}", last, re.S)
    assert location is not None
    assert f"root {mtasts.ROOT};" in location.group(1) and 'default_type "text/plain";' in location.group(1)
    assert "location / {\n        return 404;" in last
    assert ("http2 on;" in last) == (profile == "debian-13")
    assert sum("mta-sts" in s for s in servers(site)) == 1  # the other servers do not name them


@pytest.mark.parametrize("acme", [None, Acme(CA, mta_sts="none")], ids=["no acme", "mta_sts none"])
def test_no_policy_no_server(tmp_path: Path, acme: Acme | None) -> None:
    resources, files = build(host(acme), tmp_path)
    assert mtasts.POLICY_FILE not in files
    assert "mta-sts" not in files["/etc/nginx/conf.d/miab-remote-webmail.conf"].decode()
    assert not any(getattr(r, "path", "").startswith(mtasts.ROOT) for r in resources)


def test_zones_rebuild_builds_each_zone_as_the_deploy_does(tmp_path: Path) -> None:
    for acme in (Acme(CA), None):
        resources, files = build(host(acme, recipes=("nsd",)), tmp_path)
        commands = [r for r in resources if isinstance(r, Command) and r.name.startswith("zone-")]
        assert [c.name for c in commands] == ["zone-a.test", "zone-b.test"]
        for c in commands:
            assert c.run.endswith(f" {layout.TLS_CERT}") == (acme is not None)
            assert c.unless == c.run.replace("zone-build ", "zone-build --check ", 1)
        script = files["/usr/local/lib/miab-remote/zones-rebuild"].decode()
        rebuild = next(r for r in resources if isinstance(r, File) and r.path.endswith("/zones-rebuild"))
        assert rebuild.mode == 0o755 and script.startswith("#!/bin/sh\n")
        steps = [line for line in script.splitlines() if "zone-build" in line]
        assert steps == [f"{c.unless} || {{ {c.run} && changed=1 || failed=1; }}" for c in commands]
        assert "systemctl reload nsd" in script
        subprocess.run(["sh", "-n"], input=script.encode(), check=True)


def test_zones_rebuild_does_nothing_without_nsd(tmp_path: Path) -> None:
    _, files = build(host(recipes=("nsd",), dns="external"), tmp_path)
    script = tmp_path / "zones-rebuild"
    script.write_bytes(files["/usr/local/lib/miab-remote/zones-rebuild"])
    assert subprocess.run(["sh", str(script)], capture_output=True, check=False).returncode == 0
    assert "zone-build" not in script.read_text()
