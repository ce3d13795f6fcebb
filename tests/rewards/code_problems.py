"""Small coding problems for the code-reward tests, written for this repository.

Two styles, as in the public datasets the scorer targets: HumanEval (``prefix`` = signature and
docstring, the solution is a function body, ``check`` may call helpers defined in the prefix) and
LeetCodeDataset (``prefix`` = imports and ``ListNode``/``TreeNode`` helpers, entry point
``Solution().method``, keyword arguments). Each has a correct ``solution`` and a ``wrong`` one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    name: str
    prefix: str
    tests: str
    entry_point: str
    solution: str
    wrong: str


LEETCODE_PREFIX = '''from typing import *
from collections import deque


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


def make_list(values):
    head = None
    for value in reversed(values):
        head = ListNode(value, head)
    return head


def same_list(a, b):
    while a is not None and b is not None:
        if a.val != b.val:
            return False
        a, b = a.next, b.next
    return a is None and b is None


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def make_tree(values):
    if not values:
        return None
    nodes = [None if v is None else TreeNode(v) for v in values]
    kids = deque(nodes[1:])
    for node in nodes:
        if node is None:
            continue
        if kids:
            node.left = kids.popleft()
        if kids:
            node.right = kids.popleft()
    return nodes[0]


def same_tree(a, b):
    if a is None or b is None:
        return a is b
    return a.val == b.val and same_tree(a.left, b.left) and same_tree(a.right, b.right)
'''

HUMANEVAL_STYLE = [
    Problem(
        name="running_max",
        prefix='from typing import List\n\n\ndef running_max(xs: List[int]) -> List[int]:\n    """The maximum of each prefix.\n    >>> running_max([1, 3, 2])\n    [1, 3, 3]\n    """\n',
        tests=(
            "def check(candidate):\n"
            "    assert candidate([]) == []\n"
            "    assert candidate([1, 3, 2]) == [1, 3, 3]\n"
            "    assert candidate([-5, -7, 0, 4, 4, 1]) == [-5, -5, 0, 4, 4, 4]\n"
        ),
        entry_point="running_max",
        solution="    out, best = [], None\n    for x in xs:\n        best = x if best is None else max(best, x)\n        out.append(best)\n    return out\n",
        wrong="    return sorted(xs)\n",
    ),
    Problem(
        name="vowel_count",
        prefix='def vowel_count(text: str) -> dict:\n    """Count each vowel that occurs (lower case).\n    >>> vowel_count("Banana")\n    {\'a\': 3}\n    """\n',
        tests=(
            "def check(candidate):\n"
            "    assert candidate('Banana') == {'a': 3}\n"
            "    assert candidate('') == {}\n"
            "    assert candidate('IOU you') == {'i': 1, 'o': 2, 'u': 2}\n"
        ),
        entry_point="vowel_count",
        solution="    out = {}\n    for ch in text.lower():\n        if ch in 'aeiou':\n            out[ch] = out.get(ch, 0) + 1\n    return out\n",
        wrong="    return {ch: text.count(ch) for ch in 'aeiou' if ch in text}\n",
    ),
    Problem(
        name="cube_root",  # the check uses a helper defined in the prompt, as HumanEval/32 does
        prefix=(
            "def cube(x: float) -> float:\n    return x * x * x\n\n\n"
            'def cube_root(y: float) -> float:\n    """x with cube(x) close to y, for y >= 0."""\n'
        ),
        tests=(
            "def check(candidate):\n"
            "    for y in [0.0, 1.0, 8.0, 10.0, 12345.6]:\n"
            "        assert abs(cube(candidate(y)) - y) < 1e-6 * max(1.0, y)\n"
        ),
        entry_point="cube_root",
        solution="    lo, hi = 0.0, max(1.0, y)\n    for _ in range(200):\n        mid = (lo + hi) / 2\n        lo, hi = (mid, hi) if cube(mid) < y else (lo, mid)\n    return (lo + hi) / 2\n",
        wrong="    return y / 3\n",
    ),
    Problem(
        name="pair_sums",  # tuples, sets and bytes cross as their own types
        prefix='def pair_sums(xs: list) -> tuple:\n    """(set of pairwise sums, their count, the sums as bytes mod 256)."""\n',
        tests=(
            "def check(candidate):\n"
            "    sums, n, raw = candidate([1, 2, 3])\n"
            "    assert sums == {3, 4, 5} and n == 3 and raw == bytes([3, 4, 5])\n"
            "    assert candidate([]) == (set(), 0, b'')\n"
        ),
        entry_point="pair_sums",
        solution="    s = sorted({a + b for i, a in enumerate(xs) for b in xs[i + 1:]})\n    return set(s), len(s), bytes(v % 256 for v in s)\n",
        wrong="    s = [a + b for a in xs for b in xs]\n    return set(s), len(s), bytes(v % 256 for v in s)\n",
    ),
]

LEETCODE_STYLE = [
    Problem(
        name="reverse_list",
        prefix=LEETCODE_PREFIX,
        tests=(
            "def check(candidate):\n"
            "    assert same_list(candidate(head=make_list([1, 2, 3, 4])), make_list([4, 3, 2, 1]))\n"
            "    assert candidate(head=None) is None\n"
            "    assert same_list(candidate(head=make_list([7])), make_list([7]))\n"
        ),
        entry_point="Solution().reverseList",
        solution=(
            "class Solution:\n"
            "    def reverseList(self, head: Optional[ListNode]) -> Optional[ListNode]:\n"
            "        prev = None\n"
            "        while head:\n"
            "            head.next, prev, head = prev, head, head.next\n"
            "        return prev\n"
        ),
        wrong="class Solution:\n    def reverseList(self, head):\n        return head\n",
    ),
    Problem(
        name="invert_tree",
        prefix=LEETCODE_PREFIX,
        tests=(
            "def check(candidate):\n"
            "    assert same_tree(candidate(root=make_tree([4, 2, 7, 1, 3, 6, 9])), make_tree([4, 7, 2, 9, 6, 3, 1]))\n"
            "    assert same_tree(candidate(root=make_tree([1, None, 2])), make_tree([1, 2]))\n"
            "    assert candidate(root=None) is None\n"
        ),
        entry_point="Solution().invertTree",
        solution=(
            "class Solution:\n"
            "    def invertTree(self, root: Optional[TreeNode]) -> Optional[TreeNode]:\n"
            "        if root:\n"
            "            root.left, root.right = self.invertTree(root.right), self.invertTree(root.left)\n"
            "        return root\n"
        ),
        wrong="class Solution:\n    def invertTree(self, root):\n        return root\n",
    ),
    Problem(
        name="level_sums",  # a tree in, a list out
        prefix=LEETCODE_PREFIX,
        tests=(
            "def check(candidate):\n"
            "    assert candidate(root=make_tree([3, 9, 20, None, None, 15, 7])) == [3, 29, 22]\n"
            "    assert candidate(root=None) == []\n"
        ),
        entry_point="Solution().levelSums",
        solution=(
            "class Solution:\n"
            "    def levelSums(self, root: Optional[TreeNode]) -> List[int]:\n"
            "        out, level = [], [root] if root else []\n"
            "        while level:\n"
            "            out.append(sum(n.val for n in level))\n"
            "            level = [c for n in level for c in (n.left, n.right) if c]\n"
            "        return out\n"
        ),
        wrong="class Solution:\n    def levelSums(self, root):\n        return [root.val] if root else []\n",
    ),
    Problem(
        name="merge_two",  # two lists in, one list out; the program defines its own ListNode
        prefix="from typing import *\n",
        tests=(
            "class ListNode:\n"
            "    def __init__(self, val=0, next=None):\n"
            "        self.val, self.next = val, next\n\n\n"
            "def build(values):\n"
            "    head = None\n"
            "    for v in reversed(values):\n"
            "        head = ListNode(v, head)\n"
            "    return head\n\n\n"
            "def values(node):\n"
            "    out = []\n"
            "    while node:\n"
            "        out.append(node.val)\n"
            "        node = node.next\n"
            "    return out\n\n\n"
            "def check(candidate):\n"
            "    assert values(candidate(build([1, 4, 5]), build([1, 2, 6]))) == [1, 1, 2, 4, 5, 6]\n"
            "    assert values(candidate(None, build([0]))) == [0]\n"
        ),
        entry_point="Solution().mergeTwoLists",
        solution=(
            "class ListNode:\n"
            "    def __init__(self, x):\n"
            "        self.val = x\n"
            "        self.next = None\n\n\n"
            "class Solution:\n"
            "    def mergeTwoLists(self, a, b):\n"
            "        dummy = tail = ListNode(0)\n"
            "        while a and b:\n"
            "            if a.val <= b.val:\n"
            "                tail.next, a = a, a.next\n"
            "            else:\n"
            "                tail.next, b = b, b.next\n"
            "            tail = tail.next\n"
            "        tail.next = a or b\n"
            "        return dummy.next\n"
        ),
        wrong="class Solution:\n    def mergeTwoLists(self, a, b):\n        return a or b\n",
    ),
]

ALL = HUMANEVAL_STYLE + LEETCODE_STYLE


def as_problem(p: Problem) -> dict:
    """The mapping form a scorer accepts."""
    return {"tests": p.tests, "entry_point": p.entry_point, "prefix": p.prefix}
