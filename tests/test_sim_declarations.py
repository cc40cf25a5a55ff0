"""Each compiled class of the simulator is declared twice: its fields in the ``.py`` (``__slots__``, or the
attributes its methods set, with the annotations of the parameters they are set from) and their C types in the
``.pxd`` beside it. Cython cannot share a class between compiled modules without a ``.pxd`` (other modules
``cimport`` it), and the ``.py`` must run as it is without Cython, so both stay; this test fails when the two
disagree: a field missing on either side, or a C type that does not hold what the ``.py`` says the field is."""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

SIM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tracesim", "sim")

# C type in a .pxd -> the annotations in the .py it may hold (object holds anything: not checked)
COMPATIBLE = {
    "long long": {"int"}, "Py_ssize_t": {"int"}, "int": {"int"}, "bint": {"bool"}, "double": {"float"},
    "str": {"str", "str | None"}, "list": {"list"}, "dict": {"dict"}, "tuple": {"tuple"},
}
CDEF_CLASS = re.compile(r"^cdef class (\w+)(?:\(.*\))?:\s*$")
# a field: "cdef [public|readonly] <C type> <name>", the type possibly a typed memoryview ("long long[::1]"),
# a comment after it allowed
ATTRIBUTE = re.compile(r"^\s+cdef (?:public |readonly )?([\w ]+?(?:\[[:\d, ]*\])?) (\w+)\s*(?:#.*)?$")


def _pxd_classes(path: str) -> dict:
    """class name -> {field: C type} of every ``cdef class`` in a .pxd."""
    classes, current = {}, None
    for line in open(path).read().splitlines():
        m = CDEF_CLASS.match(line)
        if m:
            current = classes[m.group(1)] = {}
            continue
        if current is None or not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            current = None
            continue
        m = ATTRIBUTE.match(line)
        if m and "(" not in line:
            current[m.group(2)] = m.group(1)
    return classes


def _self_targets(node) -> list:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    out = []
    for t in targets:
        for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
            if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                out.append(e.attr)
    return out


def _py_class(path: str, name: str):
    """(fields, {field: annotation}) of class ``name`` in a .py, or None when it has no such class."""
    tree = ast.parse(open(path).read())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        return None
    fields, annotations = [], {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            fields = [ast.literal_eval(e) for e in node.value.elts]
    assigned = []
    for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        params = {a.arg: ast.unparse(a.annotation) for a in method.args.args if a.annotation is not None}
        for node in ast.walk(method):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                assigned += _self_targets(node)
                if isinstance(node, ast.AnnAssign) and _self_targets(node):
                    annotations[_self_targets(node)[0]] = ast.unparse(node.annotation)
                value = node.value
                if isinstance(node, ast.Assign) and isinstance(value, ast.Name) and value.id in params:
                    for target in _self_targets(node):
                        annotations.setdefault(target, params[value.id])
    if not fields:
        fields = assigned
    return list(dict.fromkeys(fields)), annotations


def _pairs():
    for pxd in sorted(glob.glob(os.path.join(SIM, "*.pxd"))):
        py = pxd[:-len(".pxd")] + ".py"
        for name, attrs in _pxd_classes(pxd).items():
            yield pytest.param(py, name, attrs, id=f"{os.path.basename(py)}:{name}")


PAIRS = list(_pairs())


def test_the_shared_classes_are_found():
    found = {p.id for p in PAIRS}
    for expected in ("scheduler.py:SimReq", "scheduler.py:Planned", "engine.py:Frame", "engine.py:InFlight",
                     "rollout.py:Sample"):
        assert expected in found


@pytest.mark.parametrize("py,name,attrs", PAIRS)
def test_py_and_pxd_declare_the_same_fields(py, name, attrs):
    found = _py_class(py, name)
    assert found is not None, f"{name} is declared in the .pxd but not defined in {os.path.basename(py)}"
    fields, annotations = found
    assert set(fields) == set(attrs), (f"{name}: only in the .py: {sorted(set(fields) - set(attrs))}; "
                                       f"only in the .pxd: {sorted(set(attrs) - set(fields))}")
    for field, ctype in attrs.items():
        if ctype in COMPATIBLE and field in annotations:
            assert annotations[field] in COMPATIBLE[ctype], \
                f"{name}.{field}: annotated {annotations[field]!r} in the .py, C type {ctype!r} in the .pxd"


def test_a_disagreement_is_caught(tmp_path):
    py, pxd = tmp_path / "m.py", tmp_path / "m.pxd"
    py.write_text("class C:\n    def __init__(self, a: int, b: bool):\n        self.a, self.b = a, 0\n"
                  "        self.b = b\n")
    pxd.write_text("cdef class C:\n    cdef public long long a\n    cdef public long long b\n    cdef public list c\n"
                   "    cdef long long[::1] d  # a C array\n")
    attrs = _pxd_classes(str(pxd))["C"]
    assert attrs["d"] == "long long[::1]"
    attrs.pop("d")
    fields, annotations = _py_class(str(py), "C")
    assert set(attrs) - set(fields) == {"c"}
    assert annotations["b"] == "bool" and "bool" not in COMPATIBLE[attrs["b"]]
