# The wire between the laptop and the scripts on the box: the typed actions apply.py carries out, the
# framing of its input (the spec as one JSON line, then the changed files' bytes), its exit codes, and the
# box's lock and journal paths. One copy for both sides: the engine imports it as miab_remote.remote.wire,
# and remote.script() ships it ahead of apply.py and probe.py, which import it as the module `wire`.
# stdlib only, Python >= 3.8: no `from __future__`, no builtin generics in annotations (they are evaluated).
import json
from typing import IO, Dict, List, Literal, Mapping, Optional, TypedDict, Union

# Exit codes of apply.py (anything else non-zero: an action failed, its `fail` event says which).
FAILED = 1
LOCK_TIMEOUT = 3  # another deploy held the box's lock too long: nothing was changed
STALE = 75  # a file to replace is no longer what the plan saw: nothing was changed; probe and plan again

# Where the box keeps its deploy lock and its journal of notifications owed (the tests point them elsewhere).
LOCK_PATH = "/run/lock/miab-remote.lock"
JOURNAL_PATH = "/var/lib/miab-remote/pending.json"
# Where a run stages the files it carries: tmpfs, a folder of its own readable by root only, removed at the end.
STAGE_ROOT = "/run/miab-remote"
# A push's `expect`: whatever is there; the box compares under its lock and leaves an identical file alone.
ANY = "*"
# A command's stdout line that starts so is a note for the operator: apply.py passes it on as a `note`
# event (its text without the prefix) and the deploy lists it (any Command may say notes, e.g. acme's order).
NOTE_PREFIX = "miab-note: "


class _Step(TypedDict):
    resource: str  # the resource id, e.g. "file:/etc/postfix/main.cf"
    why: str  # what an operator reads


class AptUpdate(_Step):
    op: Literal["apt_update"]


class AptPackages(_Step):
    op: Literal["apt_install", "apt_remove"]
    packages: List[str]


class GroupAction(_Step):
    op: Literal["group"]
    name: str
    system: bool


class UserAction(_Step):
    op: Literal["user"]
    name: str
    system: bool
    home: Optional[str]
    shell: str
    group: Optional[str]
    groups: List[str]
    create: bool


class DirectoryAction(_Step):
    op: Literal["directory"]
    path: str
    mode: int
    owner: str
    group: str


class FileAction(_Step):
    op: Literal["file"]
    path: str
    mode: int
    owner: str
    group: str
    sha256: str  # of the new content
    secret: bool
    # True: `size` bytes of new content follow the spec on stdin (see encode_apply); False: metadata only.
    content: bool
    size: int
    # The sha256 the plan saw (None: absent), or ANY; anything else on the box means STALE.
    expect: Optional[str]
    notify: List[str]  # journaled before the file changes


class Guard(TypedDict, total=False):
    creates: str
    unless: str


class _Reaction(_Step, total=False):
    # A push only: run when an earlier action (by index) changed, when journaled, or when `guard` says so.
    if_changed: List[int]
    guard: Guard


class ServiceAction(_Reaction):
    op: Literal["service"]
    name: str
    running: bool
    enabled: bool
    restart: Optional[Literal["reload", "restart"]]
    validator: Optional[str]  # runs before the restart; on failure the `rollback` files are put back
    rollback: List[str]
    unmask: bool
    carries_access: bool  # sshd: the laptop proves a fresh login before and after
    settles: List[str]  # journal entries cleared once it ran


class CommandAction(_Reaction):
    op: Literal["command"]
    run: str
    creates: Optional[str]  # checked again on the box just before running
    unless: Optional[str]
    notify: List[str]
    settles: List[str]


class ForgetAction(_Step):
    op: Literal["forget"]
    settles: List[str]


# One step of an apply, told apart by its "op" (apply.py runs the Runner method of that name).
Action = Union[
    AptUpdate,
    AptPackages,
    GroupAction,
    UserAction,
    DirectoryAction,
    FileAction,
    ServiceAction,
    CommandAction,
    ForgetAction,
]


class ApplySpec(TypedDict):
    stage: str  # a fresh folder under STAGE_ROOT
    lock_timeout: float
    actions: List[Action]


class ProbeSpec(TypedDict):
    files: List[str]
    want_content: Dict[str, str]  # path -> desired sha256: send the old content back when it differs
    packages: List[str]
    services: List[str]
    users: List[str]
    groups: List[str]
    guards: Dict[str, Guard]


class Event(TypedDict, total=False):
    """One JSON line apply.py writes: hb, lock, stale, pending, start, note, done, fail, end."""

    event: str
    index: int
    changed: bool
    error: str
    path: str
    ids: List[str]
    state: str  # lock: waiting | acquired | timeout
    seconds: float
    text: str  # note: a line a command said for the operator


def carried(actions: List[Action]) -> List[FileAction]:
    """The file actions whose content follows the spec on stdin, in that order."""
    return [a for a in actions if a["op"] == "file" and a["content"]]


def encode_apply(spec: ApplySpec, content: Mapping[str, bytes]) -> bytes:
    """apply.py's stdin: the spec on one line, then each carried file's bytes (`content` maps path to them)."""
    blobs = []
    for a in carried(spec["actions"]):
        data = content[a["path"]]
        if len(data) != a["size"]:
            raise ValueError(f"{a['path']}: {len(data)} bytes to send, the action says {a['size']}")
        blobs.append(data)
    return json.dumps(spec).encode() + b"\n" + b"".join(blobs)


def read_spec(stream: IO[bytes]) -> ApplySpec:
    """The spec line of apply.py's stdin; the carried files' bytes are left in `stream`."""
    spec: ApplySpec = json.loads(stream.readline().decode("utf-8"))
    return spec


def read_journal(path: str) -> Dict[str, Dict[str, List[str]]]:
    """The notifications owed, {resource id: {"by": [what changed]}}; none when missing or unreadable (an
    unreadable journal is replaced at the next change, and the guards of postmap and the like catch up)."""
    try:
        with open(path, encoding="utf-8") as f:
            pending = json.load(f).get("pending", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return pending if isinstance(pending, dict) else {}
