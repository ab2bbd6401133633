"""The registry of resource kinds: every kind of the recipes' API has its module, every wire op is yielded
by one kind (or is the planner's `forget`), and the box runs each op by the Runner method of that name."""

from __future__ import annotations

import ast
import typing
from importlib import resources as importlib_resources

from miab_remote import api
from miab_remote.engine import resources
from miab_remote.engine.kinds import KINDS, Resource, kind_of
from miab_remote.remote import wire

PLANNER_OPS = {"forget"}  # not a kind's: the planner drops journal entries nothing declared reacts to


def wire_ops() -> set[str]:
    ops: set[str] = set()
    for action in typing.get_args(wire.Action):
        ops.update(typing.get_args(typing.get_type_hints(action)["op"]))
    return ops


def runner_methods() -> set[str]:
    tree = ast.parse(importlib_resources.files("miab_remote.remote").joinpath("apply.py").read_text())
    runner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Runner")
    return {n.name for n in runner.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def test_each_resource_class_has_one_kind_and_is_the_one_recipes_import() -> None:
    classes = typing.get_args(Resource)
    assert all(kind_of(object.__new__(k.resource)) is k for k in KINDS)
    assert set(classes) == {k.resource for k in KINDS}
    for c in classes:
        assert getattr(resources, c.__name__) is c
        assert getattr(api, c.__name__) is c
    assert api.Resource == resources.Resource == Resource


def test_every_wire_op_belongs_to_one_kind_and_has_its_runner_method_on_the_box() -> None:
    by_kind = [op for k in KINDS for op in k.ops]
    assert len(by_kind) == len(set(by_kind)), "an op yielded by two kinds"
    assert set(by_kind) | PLANNER_OPS == wire_ops()
    # apply.py runs getattr(runner, action["op"]): the box side of a kind is found by its op name.
    assert wire_ops() <= runner_methods()
