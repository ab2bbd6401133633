"""Unified diffs of what a deploy would change, masked (engine/redact.py); secret files never shown."""

from __future__ import annotations

import base64
import difflib
from collections.abc import Mapping
from typing import Any

from miab_remote.engine.planner import Plan
from miab_remote.engine.redact import SecretMask


def plan_diff(plan: Plan, facts: Mapping[str, Any], rendered: Mapping[str, bytes], mask: SecretMask) -> str:
    chunks: list[str] = []
    for action in plan.actions:
        item = action.wire
        if item["op"] != "file" or not item["content"]:
            continue
        path = item["path"]
        if item["secret"]:
            chunks.append(f"--- {path}\n+++ {path}\n(secret file: content differs, not shown)\n")
            continue
        fact = facts.get("files", {}).get(path, {})
        if fact.get("exists") and "content" not in fact:
            chunks.append(f"--- {path}\n+++ {path}\n(content differs; too large or binary to show)\n")
            continue
        old = base64.b64decode(fact["content"]) if fact.get("exists") else b""
        new = rendered[path]
        if b"\0" in old or b"\0" in new:
            chunks.append(f"--- {path}\n+++ {path}\n(binary content differs)\n")
            continue
        lines = difflib.unified_diff(
            old.decode(errors="replace").splitlines(keepends=True),
            new.decode(errors="replace").splitlines(keepends=True),
            fromfile=path if fact.get("exists") else "/dev/null",
            tofile=path,
        )
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        chunks.append(mask(text))
    return "".join(chunks)
