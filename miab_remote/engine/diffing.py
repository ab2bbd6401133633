"""Unified diffs of what a deploy would change, with secrets masked."""

from __future__ import annotations

import base64
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from miab_remote.engine.planner import Plan

MASK = "********"


class Masker:
    """Replaces every known secret value in text shown to the operator."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, MASK)
        return text


def plan_diff(plan: Plan, facts: Mapping[str, Any], rendered: Mapping[str, bytes], mask: Masker) -> str:
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
