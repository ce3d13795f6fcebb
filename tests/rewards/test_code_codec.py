"""Plain data across the sandbox boundary: exact round trips, and a decoder that accepts nothing else."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sspo.rewards.code import codec

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.sets(hashables, max_size=4)
    | st.frozensets(hashables, max_size=4)
    | st.dictionaries(hashables, inner, max_size=4),
    max_leaves=20,
)


def roundtrip(value, **classes):
    return codec.decode(codec.loads(codec.dumps(codec.encode(value))), **classes)


def same(a, b) -> bool:
    """Equal with the same types all the way down (1 == 1.0 == True would hide a lost type)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


@settings(max_examples=150, deadline=None)
@given(values)
def test_plain_data_roundtrips_with_types(value):
    assert same(roundtrip(value), value)


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), -0.0, 10**400, "\ud800", "ü€😀", b"\x00\xff"])
def test_edge_values(value):
    assert same(roundtrip(value), value)


def test_nan_roundtrips():
    assert math.isnan(roundtrip(float("nan")))


def test_linked_list_and_tree_rebuild_with_the_receivers_classes():
    class ListNode:
        def __init__(self, val=0, next=None):
            self.val, self.next = val, next

    class TreeNode:
        def __init__(self, val=0, left=None, right=None):
            self.val, self.left, self.right = val, left, right

    head = ListNode(1, ListNode(2, ListNode(3)))
    assert codec.encode(head) == {"ListNode": [1, 2, 3]}
    back = roundtrip(head, list_node=ListNode)
    assert type(back) is ListNode and [back.val, back.next.val, back.next.next.val] == [1, 2, 3]
    assert back.next.next.next is None

    root = TreeNode(1, None, TreeNode(2, TreeNode(3)))
    assert codec.encode(root) == {"TreeNode": [1, None, 2, 3]}
    back = roundtrip(root, tree_node=TreeNode)
    assert type(back) is TreeNode and back.left is None and back.right.val == 2 and back.right.left.val == 3
    assert roundtrip([root, None], tree_node=TreeNode)[1] is None
    fallback = roundtrip(head)
    assert type(fallback) is codec.ListNode and fallback.next.val == 2


def test_cycles_and_shared_nodes_are_refused():
    class ListNode:
        def __init__(self, val):
            self.val, self.next = val, None

    class TreeNode:
        def __init__(self, val):
            self.val, self.left, self.right = val, None, None

    a = ListNode(1)
    a.next = ListNode(2)
    a.next.next = a
    with pytest.raises(codec.CodecError, match="cyclic"):
        codec.encode(a)
    root = TreeNode(1)
    root.left = root.right = TreeNode(2)
    with pytest.raises(codec.CodecError, match="twice"):
        codec.encode(root)


def test_other_objects_are_refused_strictly_and_converted_leniently():
    class Always:
        def __eq__(self, other):
            return True

    class SneakyInt(int):
        def __eq__(self, other):
            return True

    with pytest.raises(codec.CodecError):
        codec.encode(Always())
    with pytest.raises(codec.CodecError):
        codec.encode(SneakyInt(3))
    with pytest.raises(codec.CodecError):
        codec.encode(Always(), lenient=True)
    plain = codec.encode(SneakyInt(3), lenient=True)
    assert type(plain) is int and plain == 3
    np = pytest.importorskip("numpy")
    assert codec.encode(np.int64(7), lenient=True) == 7
    assert codec.encode(np.arange(3), lenient=True) == [0, 1, 2]


@pytest.mark.parametrize(
    "raw",
    [
        {"tuple": [1], "set": [2]},  # two tags
        {"object": []},  # unknown tag
        {"__class__": "os.system"},
        {"dict": [[1]]},  # not a pair
        {"dict": [[[1], 2]]},  # unhashable key
        {"set": [[1]]},  # unhashable element
        {"bytes": "not base64!"},
        {"bytes": 12},
        {"tuple": "abc"},
        {"ListNode": 5},
    ],
)
def test_decoder_refuses_malformed_shapes(raw):
    with pytest.raises(codec.CodecError):
        codec.decode(raw)


def test_depth_and_size_limits():
    deep = []
    for _ in range(codec.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(codec.CodecError, match="deeper"):
        codec.encode(deep)
    with pytest.raises(codec.CodecError, match="deeper"):
        codec.decode(json.loads(json.dumps(deep)))
    with pytest.raises(codec.CodecError):
        codec.loads(b"[" * 100_000 + b"]" * 100_000)  # the JSON parser's own recursion limit
    with pytest.raises(codec.CodecError, match="larger"):
        codec.loads(b" " * (codec.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(codec.CodecError, match="malformed"):
        codec.loads(b"\xff\xfe not json")
    with pytest.raises(codec.CodecError):
        codec.loads(b"1" * 5000)  # an integer too long to parse quickly


def test_loads_builds_only_json_types():
    data = codec.loads(b'{"dict": [["a", {"tuple": [1, 2.5, null, true]}]]}')
    assert codec.decode(data) == {"a": (1, 2.5, None, True)}
