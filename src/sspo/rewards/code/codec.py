"""Plain data across the sandbox boundary: a tagged JSON encoding and a strict decoder.

Only these values cross between the judge and an untrusted program: ``None``, ``bool``, ``int``,
``float``, ``str``, ``bytes`` and ``list``/``tuple``/``dict``/``set``/``frozenset`` of them, plus
LeetCode's ``ListNode`` (a list of values) and ``TreeNode`` (level order with ``None`` holes), which
each side rebuilds with its own classes. JSON arrays are lists; every other container is a JSON
object with exactly one tag key::

    (1, 2)            -> {"tuple": [1, 2]}          {3}  -> {"set": [3]}
    {"a": 1}          -> {"dict": [["a", 1]]}       b"x" -> {"bytes": "eA=="}
    ListNode 1->2     -> {"ListNode": [1, 2]}       TreeNode -> {"TreeNode": [1, null, 2]}

:func:`loads` is what the trusted judge applies to the program's bytes: ``json.loads`` (which builds
nothing but dicts, lists, strings, numbers) on at most ``MAX_MESSAGE_BYTES``, then a walk that
accepts only the shapes above, at most ``MAX_DEPTH`` deep and ``MAX_NODES`` linked nodes long. No
pickle, marshal or eval of anything the program sends. This module is standard library only: the
sandbox and the judge load it as a plain file, without importing ``sspo``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest message accepted from either side."""
MAX_DEPTH = 64
"""Deepest container nesting accepted."""
MAX_NODES = 1_000_000
"""Longest linked list / largest tree accepted."""

_SCALARS = (type(None), bool, int, float, str)
_TAGS = ("tuple", "set", "frozenset", "dict", "bytes", "ListNode", "TreeNode")


class CodecError(ValueError):
    """A value outside the plain-data subset, or a malformed message."""


class ListNode:
    """Fallback singly linked list node (used when a side defines none)."""

    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    """Fallback binary tree node (used when a side defines none)."""

    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def _kind(value) -> str | None:
    """``"ListNode"``/``"TreeNode"`` for LeetCode-style nodes (recognised by class name), else None."""
    name = type(value).__name__
    return name if name in ("ListNode", "TreeNode") else None


def encode(value, *, lenient: bool = False, _depth: int = 0):
    """``value`` as a JSON-ready structure (see the module docstring); :class:`CodecError` otherwise.

    ``lenient`` (the sandbox side) also accepts subclasses of the plain types and numpy scalars and
    arrays, converted to the plain type; the judge side encodes its own (trusted) arguments strictly.
    """
    if _depth > MAX_DEPTH:
        raise CodecError(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [encode(v, lenient=lenient, _depth=_depth + 1) for v in value]
    if kind is tuple or kind is set or kind is frozenset:
        return {kind.__name__: [encode(v, lenient=lenient, _depth=_depth + 1) for v in value]}
    if kind is dict:
        return {
            "dict": [
                [encode(k, lenient=lenient, _depth=_depth + 1), encode(v, lenient=lenient, _depth=_depth + 1)]
                for k, v in value.items()
            ]
        }
    if kind is bytes or kind is bytearray:
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    node = _kind(value)
    if node == "ListNode":
        return {"ListNode": [encode(v, lenient=lenient, _depth=_depth + 1) for v in _list_values(value)]}
    if node == "TreeNode":
        return {"TreeNode": [encode(v, lenient=lenient, _depth=_depth + 1) for v in _tree_values(value)]}
    if lenient:
        return encode(_plain(value), lenient=False, _depth=_depth)
    raise CodecError(f"unsupported type {kind.__name__}")


def _plain(value):
    """A subclass of a plain type, or a numpy value, as the plain type (sandbox side only)."""
    for base in (bool, int, float, str, bytes, list, tuple, dict, set, frozenset):
        if isinstance(value, base):
            return base(value)
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise CodecError(f"unsupported type {type(value).__name__}")


def _list_values(head) -> list:
    values, seen = [], set()
    node = head
    while node is not None:
        if id(node) in seen:
            raise CodecError("cyclic ListNode")
        if len(values) >= MAX_NODES:
            raise CodecError(f"ListNode longer than {MAX_NODES}")
        seen.add(id(node))
        values.append(node.val)
        node = node.next
    return values


def _tree_values(root) -> list:
    """Level order with ``None`` for missing children, trailing ``None``s dropped (LeetCode's format)."""
    values, queue, seen = [], deque([root]), set()
    while queue:
        node = queue.popleft()
        if node is None:
            values.append(None)
            continue
        if id(node) in seen:
            raise CodecError("TreeNode is not a tree (a node is reached twice)")
        if len(seen) >= MAX_NODES:
            raise CodecError(f"TreeNode larger than {MAX_NODES}")
        seen.add(id(node))
        values.append(node.val)
        queue.append(node.left)
        queue.append(node.right)
    while values and values[-1] is None:
        values.pop()
    return values


def decode(data, *, list_node=None, tree_node=None, _depth: int = 0):
    """Rebuild a value from :func:`encode`'s structure; linked nodes use the given classes.

    Strict: anything but the documented shapes is a :class:`CodecError`.
    """
    if _depth > MAX_DEPTH:
        raise CodecError(f"nested deeper than {MAX_DEPTH}")
    kind = type(data)
    if kind in _SCALARS:
        return data
    if kind is list:
        return [decode(v, list_node=list_node, tree_node=tree_node, _depth=_depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise CodecError(f"malformed value of type {kind.__name__}")
    ((tag, body),) = data.items()
    if tag not in _TAGS:
        raise CodecError(f"unknown tag {tag[:40]!r}")
    if tag == "bytes":
        if type(body) is not str:
            raise CodecError("bytes must be base64 text")
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CodecError(f"bad base64: {exc}") from None
    if type(body) is not list:
        raise CodecError(f"{tag} must hold a list")
    items = [decode(v, list_node=list_node, tree_node=tree_node, _depth=_depth + 1) for v in body]
    try:
        if tag == "tuple":
            return tuple(items)
        if tag == "set":
            return set(items)
        if tag == "frozenset":
            return frozenset(items)
        if tag == "dict":
            if any(type(pair) is not list or len(pair) != 2 for pair in items):
                raise CodecError("dict must hold [key, value] pairs")
            return {k: v for k, v in items}
    except TypeError as exc:  # an unhashable element or key
        raise CodecError(str(exc)) from None
    if len(items) > MAX_NODES:
        raise CodecError(f"{tag} larger than {MAX_NODES}")
    if tag == "ListNode":
        return _build_list(items, list_node or ListNode)
    return _build_tree(items, tree_node or TreeNode)


def _build_list(values: list, cls):
    head = None
    for value in reversed(values):
        node = cls(value)
        node.next = head
        head = node
    return head


def _build_tree(values: list, cls):
    if not values or values[0] is None:
        return None
    root = cls(values[0])
    queue, i = deque([root]), 1
    while queue and i < len(values):
        node = queue.popleft()
        for side in ("left", "right"):
            if i < len(values) and values[i] is not None:
                child = cls(values[i])
                setattr(node, side, child)
                queue.append(child)
            i += 1
    return root


def dumps(message) -> bytes:
    """A message (already encoded with :func:`encode`) as compact UTF-8 JSON."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if len(data) > MAX_MESSAGE_BYTES:
        raise CodecError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    return data


def loads(data: bytes):
    """Parse one message's JSON (no decoding of tags yet); :class:`CodecError` on any problem."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise CodecError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError, MemoryError) as exc:  # bad JSON, too deep, huge
        raise CodecError(f"malformed JSON: {type(exc).__name__}") from None
