"""The wire format lives in ``couchbase_core/_engine/protocol.py`` only.

Outside it, code names a frame's fields (``frame[F_STATUS]``, never
``frame[2]``), builds extras, framing extras and bodies with protocol.py's
builders, and packs no header itself. This test reads the package source
(``ast``, nothing is imported) and fails on:

* a ``frame[<integer>]`` subscript (or an integer-bounded slice of a frame);
* the ``struct`` module used outside protocol.py (one module is allowed, for
  a reason that has nothing to do with the wire);
* ``HEADER`` / ``ALT_HEADER`` imported, or their ``pack``/``unpack``
  called, outside protocol.py, or a header's struct format spelt out;
* inside protocol.py, a header packed by anything but the one packer of
  each layout (``pack_header`` / ``pack_alt_header``).

The cluster emulator (``couchbase_core/mock/``) is not scanned: it has its
own codec on purpose and imports no client code.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("couchbase_core", "gcouchbase")
PROTOCOL = "couchbase_core/_engine/protocol.py"
#: Not scanned: the emulator keeps its own codec, on purpose.
SKIPPED_DIRS = ("couchbase_core/mock/",)

#: Functions (file, qualified name; a class name covers its methods)
#: allowed to read frame fields by number. None: the hot path names its
#: fields too (``frame[F_STATUS]``...). Keep it empty.
HOT_PATH_ALLOWED: Set[Tuple[str, str]] = set()

#: Modules that may use ``struct`` for something other than the wire.
STRUCT_ALLOWED: Dict[str, str] = {
    "couchbase_core/_engine/config.py": "ketama: little-endian words of MD5 digests",
    "couchbase_core/_engine/dns.py": "DNS messages (RFC 1035): another protocol's sans-I/O codec",
}

#: The header layouts (protocol.HEADER, protocol.ALT_HEADER) and their
#: network-order spellings.
HEADER_FORMATS = {fmt % layout for fmt in (">%s", "!%s") for layout in ("BBHBBHIIQ", "BBBBBBHIIQ")}
HEADER_NAMES = ("HEADER", "ALT_HEADER")
STRUCT_METHODS = ("pack", "pack_into", "unpack", "unpack_from", "iter_unpack")


def _sources() -> Iterator[Tuple[str, str]]:
    """(path relative to the repository, source) of every package module."""
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
                if rel.startswith(SKIPPED_DIRS):
                    continue
                with open(path, encoding="utf-8") as fh:
                    yield rel, fh.read()


def _is_int(node: Optional[ast.expr]) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def _is_frame(node: ast.expr) -> bool:
    """``frame``, ``*_frame``, or an element of ``frames`` / ``*_frames``."""
    if isinstance(node, ast.Name):
        return node.id == "frame" or node.id.endswith("_frame")
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        name = node.value.id
        return name == "frames" or name.endswith("_frames")
    return False


def _numbered_field(node: ast.Subscript) -> bool:
    """``frame[2]``, ``frame[-1]``, ``frame[:3]``, ``frame[4:8]``..."""
    index = node.slice
    if isinstance(index, ast.Slice):
        return any(_is_int(bound) for bound in (index.lower, index.upper))
    return _is_int(index)


class _Scanner(ast.NodeVisitor):
    """Collects (qualified name of the enclosing function, line, text) of
    numbered frame fields."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.scope: List[str] = []
        self.found: List[Tuple[str, int, str]] = []

    def _enter(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node, node.name)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node, node.name)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_frame(node.value) and _numbered_field(node):
            text = ast.get_source_segment(self.source, node) or "?"
            self.found.append((".".join(self.scope) or "<module>", node.lineno, text))
        self.generic_visit(node)


def numbered_frame_fields(source: str) -> List[Tuple[str, int, str]]:
    """Every numbered frame field in ``source``: (function, line, text)."""
    scanner = _Scanner(source)
    scanner.visit(ast.parse(source))
    return scanner.found


def _allowed(path: str, qualname: str) -> bool:
    return any(path == allowed_path and (qualname == name or qualname.startswith(name + "."))
               for allowed_path, name in HOT_PATH_ALLOWED)


def _header_misuse(tree: ast.AST) -> List[Tuple[int, str]]:
    """Header structs imported or used, header formats spelt out."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in HEADER_NAMES:
                    out.append((node.lineno, "imports %s (use protocol.pack_header / encode_request)" % alias.name))
        elif isinstance(node, ast.Attribute):
            target = node.value
            name = target.id if isinstance(target, ast.Name) else (
                target.attr if isinstance(target, ast.Attribute) else None)
            if name in HEADER_NAMES and node.attr in STRUCT_METHODS:
                out.append((node.lineno, "%s.%s" % (name, node.attr)))
        elif isinstance(node, ast.Constant) and node.value in HEADER_FORMATS:
            out.append((node.lineno, "header struct format %r" % node.value))
    return out


def _uses_struct(tree: ast.AST) -> List[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "struct" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "struct":
            lines.append(node.lineno)
    return lines


# ------------------------------------------------------------------ the scan


def test_the_scan_sees_the_package():
    paths = [path for path, _source in _sources()]
    assert PROTOCOL in paths
    assert "couchbase_core/_kvops.py" in paths
    assert "gcouchbase/bucket.py" in paths
    assert not any(path.startswith(SKIPPED_DIRS) for path in paths)


def test_no_numbered_frame_fields_outside_protocol():
    offenders = []
    for path, source in _sources():
        if path == PROTOCOL:
            continue
        for qualname, line, text in numbered_frame_fields(source):
            if not _allowed(path, qualname):
                offenders.append("%s:%d in %s: %s" % (path, line, qualname, text))
    assert not offenders, ("frame fields read by number (use the F_* constants of protocol.py):\n"
                           + "\n".join(offenders))


def test_struct_only_in_protocol():
    offenders = []
    for path, source in _sources():
        if path == PROTOCOL or path in STRUCT_ALLOWED:
            continue
        offenders.extend("%s:%d imports struct" % (path, line) for line in _uses_struct(ast.parse(source)))
    assert not offenders, ("byte layouts belong in protocol.py (add a builder or a decoder there):\n"
                           + "\n".join(offenders))


def test_no_header_packing_outside_protocol():
    offenders = []
    for path, source in _sources():
        if path == PROTOCOL:
            continue
        offenders.extend("%s:%d %s" % (path, line, what) for line, what in _header_misuse(ast.parse(source)))
    assert not offenders, "headers are packed by protocol.py only:\n" + "\n".join(offenders)


def test_protocol_packs_headers_through_one_packer_per_layout():
    with open(os.path.join(ROOT, PROTOCOL), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    packs = [(node.value.id, node.lineno) for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "pack"
             and isinstance(node.value, ast.Name) and node.value.id in HEADER_NAMES]
    # the definitions of pack_header and pack_alt_header, nothing else
    assert sorted(name for name, _line in packs) == ["ALT_HEADER", "HEADER"], packs


# ----------------------------------------------------- the scanner itself


def test_scanner_flags_numbered_fields():
    source = (
        "def f(frame, frames):\n"
        "    a = frame[2]\n"
        "    b = frame[-1]\n"
        "    c = frame[:3] + frame[4:8]\n"
        "    d = frames[0][8]\n"
        "    e = first_frame[5]\n"
    )
    found = numbered_frame_fields(source)
    assert [text for _q, _l, text in found] == ["frame[2]", "frame[-1]", "frame[:3]", "frame[4:8]",
                                                 "frames[0][8]", "first_frame[5]"]
    assert {qualname for qualname, _l, _t in found} == {"f"}


def test_scanner_accepts_named_fields_and_other_subscripts():
    source = (
        "class Op:\n"
        "    def on_response(self, frame):\n"
        "        return frame[F_STATUS], frame[F_OPAQUE:F_VALUE], frames[0], entries[2], frame[i]\n"
    )
    assert numbered_frame_fields(source) == []


def test_scanner_names_the_enclosing_method():
    source = "class KeyBatch:\n    def on_part(self, frame):\n        return frame[4]\n"
    (qualname, line, _text), = numbered_frame_fields(source)
    assert (qualname, line) == ("KeyBatch.on_part", 3)
    assert not _allowed("couchbase_core/_kvops.py", qualname)
    assert not _allowed("couchbase_core/_engine/instance.py", qualname)


def test_header_checks_flag_direct_packing():
    tree = ast.parse(
        "from couchbase_core._engine.protocol import HEADER\n"
        "import struct\n"
        "x = HEADER.pack(0x80, 0, 0, 0, 0, 0, 0, 0, 0)\n"
        "y = protocol.ALT_HEADER.unpack_from(b'')\n"
        "z = struct.Struct('>BBHBBHIIQ')\n"
    )
    assert [line for line, _what in _header_misuse(tree)] == [1, 3, 4, 5]
    assert _uses_struct(tree) == [2]
