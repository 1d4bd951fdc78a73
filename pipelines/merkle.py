"""RFC 6962 / RFC 9162 Merkle tree with SHA-256: the producers' transparency log.

Hashes are raw 32-byte ``bytes``.  A leaf hash is ``SHA-256(0x00 || data)``,
a node hash ``SHA-256(0x01 || left || right)``; the tree over ``n`` leaves
splits at the largest power of two below ``n`` (the empty tree's root is
``SHA-256("")``).

Three ways in:

* Functions over a whole leaf-hash sequence (a ``list`` or a
  :class:`LeafHashFile`): :func:`root`, :func:`inclusion_proof`,
  :func:`consistency_proof`.  They hash every leaf involved once (O(n) time)
  and keep O(log n) hashes in memory, so they also work on a producer's
  leaf-hash file of millions of entries (about a second per million leaves).
* Verifiers :func:`verify_inclusion` and :func:`verify_consistency`: bytes in,
  ``bool`` out; a malformed or wrong proof is ``False``, never an exception.
* The incremental log a producer keeps: :class:`CompactRange` (the O(log n)
  hashes summing up an ever-growing tree) and :class:`MerkleLog` (a compact
  range of everything up to the last checkpoint plus the leaves appended
  since).  :meth:`MerkleLog.checkpoint` returns a :class:`Checkpoint` that
  hands out the inclusion proof of every leaf of the batch and the
  consistency proof from the previous checkpoint, hashing only the batch.

Producer restart: persist :meth:`MerkleLog.to_dict` after each checkpoint and
append every leaf hash to a file (:func:`append_leaf_hashes`); on start,
``MerkleLog.from_dict(state)`` then ``log.extend(LeafHashFile(path)[log.size:])``
re-adds the leaves appended after that checkpoint, and the next checkpoint's
:meth:`Checkpoint.consistency_proof` links the old anchored root to the new
one.  For an older checkpoint, :func:`consistency_proof` over the leaf-hash
file works from any size.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, overload

from pipelines.errors import PccValueError

HASH_SIZE = 32
EMPTY_ROOT = sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def hash_leaf(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``."""
    return sha256(_LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return sha256(_NODE_PREFIX + left + right).digest()


# --------------------------------------------------------------------------- whole trees


def _subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """Root of the tree over ``leaves[lo:hi]``, folding a compact range (O(log n) memory)."""
    if hi <= lo:
        return EMPTY_ROOT
    pre = _NODE_PREFIX
    stack: list[bytes] = []
    push, pop = stack.append, stack.pop
    for count, i in enumerate(range(lo, hi)):
        h = leaves[i]
        while count & 1:
            h = sha256(pre + pop() + h).digest()
            count >>= 1
        push(h)
    h = pop()
    while stack:
        h = sha256(pre + pop() + h).digest()
    return h


def _check_hashes(leaves: Sequence[bytes], what: str = "leaf hash") -> None:
    for i, h in enumerate(leaves):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise PccValueError(f"{what} at index {i} is not {HASH_SIZE} bytes")


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash of ``leaf_hashes`` (``SHA-256("")`` for none)."""
    return _subtree_root(leaf_hashes, 0, len(leaf_hashes))


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree over all of ``leaf_hashes`` (RFC 9162 PATH)."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise PccValueError(f"leaf index {index} is outside the tree of size {n}")
    proof: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if m < k:
            proof.append(_subtree_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_subtree_root(leaf_hashes, lo, lo + k))
            lo, m = lo + k, m - k
    proof.reverse()
    return proof


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    """Proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2`` (RFC 9162 PROOF).

    Both trees are prefixes of ``leaf_hashes`` (a list or a :class:`LeafHashFile`).
    O(size2) hashing; see :func:`consistency_proof_from_range` for the cheap
    variant when the compact range at ``size1`` is known.
    """
    n = len(leaf_hashes)
    if not 0 < size1 <= size2 <= n:
        raise PccValueError(
            f"consistency proof needs 0 < size1 <= size2 <= {n} leaves, got size1={size1} size2={size2}"
        )
    proof: list[bytes] = []
    lo, hi, m, complete = 0, size2, size1, True
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            proof.append(_subtree_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_subtree_root(leaf_hashes, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(_subtree_root(leaf_hashes, lo, hi))
    proof.reverse()
    return proof


# --------------------------------------------------------------------------- verification


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def root_from_inclusion_proof(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof; raises ``PccValueError`` if the proof is malformed."""
    if not (isinstance(index, int) and isinstance(tree_size, int) and 0 <= index < tree_size):
        raise PccValueError(f"leaf index {index} is outside the tree of size {tree_size}")
    if not _is_hash(leaf_hash):
        raise PccValueError("leaf hash is not 32 bytes")
    inner = (index ^ (tree_size - 1)).bit_length()
    border = (index >> inner).bit_count()
    if len(proof) != inner + border:
        raise PccValueError(f"proof has {len(proof)} hashes, expected {inner + border}")
    pre = _NODE_PREFIX
    r = leaf_hash
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise PccValueError(f"proof hash {i} is not {HASH_SIZE} bytes")
        # Below `inner` the bit of the index says which side the sibling is on; above it
        # (the right border of the tree) every sibling is on the left.
        r = sha256(pre + p + r if i >= inner or (index >> i) & 1 else pre + r + p).digest()
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``proof`` shows ``leaf_hash`` at ``index`` in the tree of ``tree_size`` with ``root``."""
    try:
        return _is_hash(root) and root_from_inclusion_proof(leaf_hash, index, tree_size, proof) == root
    except (PccValueError, TypeError, ValueError):
        return False


#: One inclusion claim: (leaf hash, leaf index, tree size, audit path, root).
InclusionClaim = tuple[bytes, int, int, Sequence[bytes], bytes]


def verify_inclusions(claims: Sequence[InclusionClaim]) -> list[bool]:
    """``verify_inclusion`` of each claim, the claims on one tree checked together.

    The claims on the same (tree size, root) - the events of one checkpoint -
    share most of their audit paths, so the covered subtree is rebuilt once:
    a leaf's path is hashed upwards only until it reaches a node an earlier
    claim of the batch already proved (about two hashes per leaf for a run of
    neighbours instead of ~log2(size)); from there its remaining path hashes
    must equal the proved siblings byte for byte.  A claim that meets nothing
    proved is a straggler: its single proof is hashed to the root.  The
    answers are those of ``verify_inclusion`` (any flipped bit in a leaf, a
    path hash or a root is refused).
    """
    trees: dict[tuple[int, bytes], dict[tuple[int, int], tuple[bytes, bytes, Sequence[bytes], int]]] = {}
    out = []
    for leaf, index, size, proof, root in claims:
        try:
            if not (_is_hash(root) and _is_hash(leaf) and type(index) is int and type(size) is int):
                raise PccValueError("malformed claim")
            proved = trees.setdefault((size, root), {})
            out.append(_verify_in_tree(proved, leaf, index, size, proof, root))
        except (PccValueError, TypeError, ValueError):
            out.append(False)
    return out


def _verify_in_tree(
    proved: dict[tuple[int, int], tuple[bytes, bytes, Sequence[bytes], int]],
    leaf: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
) -> bool:
    """One claim against the nodes already proved on its tree; ``proved`` grows with what this claim proves.

    ``proved[(lo, hi)]`` is the node over leaves ``lo..hi-1``: its hash, its sibling's hash, and the
    audit path (with the step) whose hashes after that step are the siblings of its ancestors.
    """
    if not 0 <= index < size:
        return False
    inner = (index ^ (size - 1)).bit_length()
    if len(proof) != inner + (index >> inner).bit_count():
        return False  # a hash of the wrong length cannot lead to a proved node or the root
    if type(proof) is not list:  # the rest of a path is compared with another claim's, list to list
        proof = list(proof)
    pre = _NODE_PREFIX
    r = leaf
    lo, hi = index, index + 1
    walked = []
    for i, p in enumerate(proof):
        known = proved.get((lo, hi))
        if known is not None:  # proved by an earlier claim: the rest of this path must be that claim's
            node, sibling, path, k = known
            if node != r or sibling != p or proof[i + 1 :] != path[k + 1 :]:
                return False
            break
        if i < inner and not (index >> i) & 1:  # sibling on the right (cut at the tree's size)
            s_lo, s_hi = hi, min(hi + (1 << i), size)
            parent = sha256(pre + r + p).digest()
        else:  # sibling on the left: below `inner` by the index's bit, above it the right border
            s_lo, s_hi = (lo - (1 << i), lo) if i < inner else (lo - (lo & -lo), lo)
            parent = sha256(pre + p + r).digest()
        walked.append(((lo, hi), (s_lo, s_hi), r, p, i))
        r = parent
        lo, hi = min(lo, s_lo), max(hi, s_hi)
    else:
        if r != root:
            return False
    for span, sibling_span, node, sibling, i in walked:
        proved[span] = (node, sibling, proof, i)
        proved[sibling_span] = (sibling, node, proof, i)
    return True


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> bool:
    """True iff ``proof`` shows the tree (size1, root1) is a prefix of the tree (size2, root2).

    A consistency check from the empty tree proves nothing and is rejected
    (as the RFC 6962 reference vectors require).
    """
    try:
        return _verify_consistency(size1, size2, proof, root1, root2)
    except (TypeError, ValueError):
        return False


def _verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> bool:
    if not (isinstance(size1, int) and isinstance(size2, int)) or size1 <= 0 or size2 < size1:
        return False
    if size1 == size2:
        return len(proof) == 0 and isinstance(root1, bytes) and root1 == root2
    if not (_is_hash(root1) and _is_hash(root2)) or len(proof) == 0:
        return False
    if any(not (type(p) is bytes and len(p) == HASH_SIZE) for p in proof):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # the old tree is a complete subtree: its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    pre = _NODE_PREFIX
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = sha256(pre + c + fr).digest()
            sr = sha256(pre + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = sha256(pre + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


# --------------------------------------------------------------------------- compact range


def _hex_hash(value: object, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE:
        raise PccValueError(f"{where} is not a 64-character hex hash")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise PccValueError(f"{where} is not a 64-character hex hash") from None


class CompactRange:
    """The hashes of the maximal complete subtrees covering leaves ``[0, size)``, left to right.

    One hash per set bit of ``size``: O(log n) memory for a tree of any size.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        hashes = list(hashes)
        if not isinstance(size, int) or size < 0:
            raise PccValueError(f"compact range size must be a non-negative integer, got {size!r}")
        if len(hashes) != size.bit_count():
            raise PccValueError(
                f"a compact range of size {size} has {size.bit_count()} hashes, got {len(hashes)}"
            )
        _check_hashes(hashes, "compact range hash")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        return list(self._hashes)

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index."""
        index = self._size
        stack, h, s = self._hashes, leaf_hash, index
        while s & 1:
            h = sha256(_NODE_PREFIX + stack.pop() + h).digest()
            s >>= 1
        stack.append(h)
        self._size = index + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        append = self.append
        for h in leaf_hashes:
            append(h)

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        it = reversed(self._hashes)
        h = next(it)
        for left in it:
            h = sha256(_NODE_PREFIX + left + h).digest()
        return h

    def by_level(self) -> dict[int, bytes]:
        """``{height: hash}``: the subtree of ``2**height`` leaves for each set bit of ``size``."""
        levels = [b for b in range(self._size.bit_length() - 1, -1, -1) if self._size >> b & 1]
        return dict(zip(levels, self._hashes, strict=True))

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def to_dict(self) -> dict[str, Any]:
        """``{"size": n, "hashes": [hex, ...], "root": hex}`` (JSON-ready)."""
        return {"size": self._size, "hashes": [h.hex() for h in self._hashes], "root": self.root().hex()}

    @classmethod
    def from_dict(cls, data: Any) -> CompactRange:
        """Inverse of :meth:`to_dict`; checks the stored root when present."""
        if not isinstance(data, dict) or "size" not in data or not isinstance(data.get("hashes"), list):
            raise PccValueError("compact range must be an object with 'size' and 'hashes'")
        hashes = [_hex_hash(h, f"compact range hashes[{i}]") for i, h in enumerate(data["hashes"])]
        rng = cls(data["size"], hashes)
        if "root" in data and _hex_hash(data["root"], "compact range root") != rng.root():
            raise PccValueError(f"compact range of size {rng.size} does not match its stored root")
        return rng

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompactRange) and (self._size, self._hashes) == (other._size, other._hashes)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()[:16]}…)"


# --------------------------------------------------------------------------- batches on top of a compact range


class _Frontier:
    """Every node of the tree of ``base.size + len(leaves)`` leaves that covers a new leaf.

    Level ``h`` holds nodes ``lows[h] .. counts[h]-1`` (node ``j`` covers leaves
    ``[j*2**h, (j+1)*2**h)``); any other node a proof needs lies wholly before
    the base size and is one of the base compact range's hashes.
    """

    __slots__ = ("base", "counts", "levels", "lows", "old", "size")

    def __init__(self, base: CompactRange, leaves: list[bytes]) -> None:
        self.base = base.size
        self.size = n = base.size + len(leaves)
        self.old = old = base.by_level()
        self.levels: list[list[bytes]] = [leaves]
        self.lows: list[int] = [base.size]
        self.counts: list[int] = [n]
        if not leaves:
            return
        pre = _NODE_PREFIX
        cur, lo, count, h = leaves, base.size, n, 0
        while count > 1:
            nxt: list[bytes] = []
            push = nxt.append
            start = 0
            if lo & 1:  # first node's left sibling is an old complete subtree
                push(sha256(pre + old[h] + cur[0]).digest())
                start = 1
            m = len(cur)
            for k in range(start, m - 1, 2):
                push(sha256(pre + cur[k] + cur[k + 1]).digest())
            if (m - start) & 1:  # last node of an odd level moves up unchanged
                push(cur[m - 1])
            cur, lo, count, h = nxt, lo >> 1, (count + 1) >> 1, h + 1
            self.levels.append(cur)
            self.lows.append(lo)
            self.counts.append(count)

    def node(self, height: int, index: int) -> bytes:
        lo = self.lows[height]
        return self.levels[height][index - lo] if index >= lo else self.old[height]

    def root(self) -> bytes:
        return self.levels[-1][0]

    def path(self, height: int, index: int) -> list[bytes]:
        """Siblings from node (height, index) up to the root, skipping levels where it has none."""
        levels, lows, counts, old = self.levels, self.lows, self.counts, self.old
        proof: list[bytes] = []
        for h in range(height, len(counts) - 1):
            sib = index ^ 1
            if sib < counts[h]:
                lo = lows[h]
                proof.append(levels[h][sib - lo] if sib >= lo else old[h])
            index >>= 1
        return proof

    def compact_range(self) -> CompactRange:
        n = self.size
        bits = [b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]
        return CompactRange(n, [self.node(b, (n >> b) - 1) for b in bits])

    def consistency_from_base(self) -> list[bytes]:
        m = self.base
        if m == 0 or m == self.size:
            return []
        start = (m & -m).bit_length() - 1  # the largest complete subtree ending at m
        proof = self.path(start, (m >> start) - 1)
        if m & (m - 1):
            proof.insert(0, self.old[start])
        return proof


def consistency_proof_from_range(old: CompactRange, leaf_hashes: Sequence[bytes], size2: int) -> list[bytes]:
    """Consistency proof from ``old.size`` to ``size2`` hashing only leaves ``old.size .. size2-1``.

    ``old`` is the compact range persisted at the old checkpoint and
    ``leaf_hashes`` the whole log (list or :class:`LeafHashFile`); only its
    entries from ``old.size`` on are read.
    """
    if not 0 < old.size <= size2 <= len(leaf_hashes):
        raise PccValueError(
            f"consistency proof needs 0 < size1 <= size2 <= {len(leaf_hashes)} leaves, "
            f"got size1={old.size} size2={size2}"
        )
    return _Frontier(old, list(leaf_hashes[old.size : size2])).consistency_from_base()


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint ``(tree_size, root)`` with the proofs of the leaves added since the previous one."""

    tree_size: int
    root: bytes
    previous_size: int
    previous_root: bytes
    _frontier: _Frontier = field(repr=False, compare=False)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """RFC 6962 inclusion proof of leaf ``index`` (one of this batch) against :attr:`root`."""
        if not self.previous_size <= index < self.tree_size:
            raise PccValueError(
                f"leaf index {index} is not in this checkpoint's batch "
                f"[{self.previous_size}, {self.tree_size})"
            )
        return self._frontier.path(0, index)

    def proofs(self) -> Iterator[tuple[int, list[bytes]]]:
        """``(index, inclusion proof)`` for every leaf of the batch, in order."""
        path = self._frontier.path
        for i in range(self.previous_size, self.tree_size):
            yield i, path(0, i)

    def consistency_proof(self) -> list[bytes]:
        """Proof that the previous checkpoint is a prefix of this one (empty if nothing changed or
        the previous tree was empty: there is nothing to prove from an empty log)."""
        return self._frontier.consistency_from_base()


class MerkleLog:
    """A producer's append-only log: the compact range up to the last checkpoint plus the leaves since.

    Memory is O(log n) hashes for the checkpointed part plus the pending batch.
    """

    __slots__ = ("_committed", "_pending")

    def __init__(self, committed: CompactRange | None = None, pending: Iterable[bytes] = ()) -> None:
        self._committed = committed.copy() if committed is not None else CompactRange()
        self._pending: list[bytes] = []
        self.extend(pending)

    @property
    def size(self) -> int:
        return self._committed.size + len(self._pending)

    @property
    def checkpoint_size(self) -> int:
        """Size of the tree at the last checkpoint."""
        return self._committed.size

    @property
    def pending(self) -> int:
        """How many leaves were appended since the last checkpoint."""
        return len(self._pending)

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its log index."""
        if type(leaf_hash) is not bytes or len(leaf_hash) != HASH_SIZE:
            raise PccValueError(f"leaf hash for log index {self.size} is not {HASH_SIZE} bytes")
        self._pending.append(leaf_hash)
        return self._committed.size + len(self._pending) - 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        append = self.append
        for h in leaf_hashes:
            append(h)

    def root(self) -> bytes:
        """Root of the whole log now (hashes the pending batch)."""
        if not self._pending:
            return self._committed.root()
        return _Frontier(self._committed, self._pending).root()

    def checkpoint(self) -> Checkpoint:
        """Close the pending batch: the new ``(tree_size, root)`` with its proofs."""
        prev = self._committed
        frontier = _Frontier(prev, self._pending)
        if self._pending:
            new_root = frontier.root()
            self._committed = frontier.compact_range()
        else:
            new_root = prev.root()
        self._pending = []
        return Checkpoint(frontier.size, new_root, prev.size, prev.root(), frontier)

    def to_dict(self, include_pending: bool = True) -> dict[str, Any]:
        """JSON-ready state: ``{"checkpoint": CompactRange.to_dict(), "pending": [hex, ...]}``."""
        pending = [h.hex() for h in self._pending] if include_pending else []
        return {"checkpoint": self._committed.to_dict(), "pending": pending}

    @classmethod
    def from_dict(cls, data: Any) -> MerkleLog:
        if not isinstance(data, dict) or "checkpoint" not in data:
            raise PccValueError("Merkle log state must be an object with 'checkpoint'")
        pending = data.get("pending", [])
        if not isinstance(pending, list):
            raise PccValueError("Merkle log state 'pending' must be a list of hex hashes")
        return cls(
            CompactRange.from_dict(data["checkpoint"]),
            [_hex_hash(h, f"Merkle log pending[{i}]") for i, h in enumerate(pending)],
        )

    def __repr__(self) -> str:
        return f"MerkleLog(size={self.size}, checkpoint_size={self.checkpoint_size})"


# --------------------------------------------------------------------------- leaf-hash files


def append_leaf_hashes(
    path: str | os.PathLike[str], leaf_hashes: Iterable[bytes], fsync: bool = False
) -> None:
    """Append 32-byte leaf hashes to an append-only file (created if missing)."""
    data = bytearray()
    for i, h in enumerate(leaf_hashes):
        if len(h) != HASH_SIZE:
            raise PccValueError(f"leaf hash {i} for {path} is not {HASH_SIZE} bytes")
        data += h
    with open(path, "ab") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


class LeafHashFile(Sequence[bytes]):
    """Read-only view of a file of concatenated 32-byte leaf hashes (memory-mapped).

    The length is taken once, at open; a torn trailing record (fewer than 32
    bytes after a crash) is ignored and reported in :attr:`trailing_bytes`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise PccValueError(f"leaf hash file {self.path} does not exist") from None
        self._len, self.trailing_bytes = divmod(size, HASH_SIZE)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        self._map: mmap.mmap | bytes = (
            mmap.mmap(self._file.fileno(), self._len * HASH_SIZE, access=mmap.ACCESS_READ)
            if self._len
            else b""
        )

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            blob = self._map[start * HASH_SIZE : max(start, stop) * HASH_SIZE]
            return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"leaf index {index} out of range for {self.path} ({self._len} leaves)")
        off = index * HASH_SIZE
        return self._map[off : off + HASH_SIZE]

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._file.close()

    def __enter__(self) -> LeafHashFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
