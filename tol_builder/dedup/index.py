"""PDQ near-duplicate search: hex decoding, an evaluation-set index, and the within-pool pair search.

The numeric core of the dedup stage, and nothing else: no catalog, no Dask, no files but the index file
it is asked to save or load. Everything works on arrays: codes are (n, 32) uint8 rows, the 256 bits of a
PDQ hash in the order imaging.py writes its hex (most significant bit first), and results are arrays of
row numbers and distances, never Python objects per pair.

Exactness comes from multi-index hashing (Norouzi, Punjani & Fleet, TPAMI 2014): cut the 256 bits into
m = max_distance + 1 disjoint substrings; two codes within max_distance bits differ in at most
max_distance substrings, so by pigeonhole at least one substring is identical (more substrings than that
when max_distance < 7, so that none is wider than 32 bits). Looking up each substring
exactly (no bit flips) therefore finds every pair within max_distance; each candidate is then verified on
all 256 bits. For the default 10 that is m = 11 substrings of 23 bits (253 bits; the 3 left over are
verified but not hashed, which keeps the pigeonhole argument: the distance on the hashed bits is at most
the full distance).

* `PDQIndex` (evaluation hashes, ~100K-1M): faiss-cpu's `IndexBinaryMultiHash(256, m, 23)` with
  nflip = 0, queried by range search at radius max_distance + 1 because faiss keeps distances strictly
  below its radius. Chosen over multi-index hashing of our own in numpy after measuring both on
  clustered hashes (bench/README_dedup.md): within +-25% of each other per query, either one ahead
  depending on the machine's load, so the well-kept library (OpenMP threads) stays; it holds ~10x the
  memory (122 MB per 100K codes). Saved as the codes it is built from (an .npz: building from them takes
  about a second for 100K hashes, and the file does not depend on faiss's own format).
* `near_pairs` (the pool against itself, 10.4M): faiss's hash tables keep one std::vector per bucket
  (measured 122 MB for 100K codes x 11 tables: ~13 GB for 10.4M codes), so the self-join is
  multi-index hashing in numpy instead: per substring, sort the keys and verify the pairs inside each
  run of equal keys, in bounded chunks.

Codes that are not valid (null or malformed hex) or not trusted (PDQ quality below the stage's threshold)
take no part in PDQ matching at all, not even at distance 0: identical PDQ hashes of two blank or
featureless pictures say nothing about the pictures being copies. The caller decides what happens to
them (byte-identical files are still caught by sha256 / md5).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path

BITS = 256
CODE_BYTES = BITS // 8
HEX_DIGITS = BITS // 4
INDEX_FORMAT = 1  # version of the saved index file

# ASCII byte -> nibble value; 255 marks a byte that is not a hex digit (either case accepted)
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_DECODE_ROWS = 1 << 16  # rows per decoding step: bounds the (rows, 64) temporaries to a few MB


# ------------------------------------------------------------------------------------------- hex decoding
def pdq_codes(hex_values: Any) -> tuple[np.ndarray, np.ndarray]:
    """PDQ hashes as 64 hex digits -> (codes (n, 32) uint8, valid (n,) bool).

    `hex_values`: a pyarrow string / large_string (or binary) Array or ChunkedArray, or any sequence of
    str / None. Byte k of a code holds hex digits 2k and 2k+1, so bit order is the hex's (most significant
    first) and Hamming distances equal `(int(a, 16) ^ int(b, 16)).bit_count()`. A null, a string that is
    not exactly 64 hex digits (either case), gives valid False and a zero code; nothing raises.
    Vectorised over the Arrow data buffer: no Python work per row."""
    import pyarrow as pa

    if isinstance(hex_values, pa.ChunkedArray):
        parts = [pdq_codes(chunk) for chunk in hex_values.chunks]
        if not parts:
            return np.zeros((0, CODE_BYTES), np.uint8), np.zeros(0, bool)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if not isinstance(hex_values, pa.Array):
        hex_values = pa.array(hex_values if isinstance(hex_values, (list, np.ndarray)) else list(hex_values),
                              type=pa.string(), from_pandas=True)
    arr = hex_values
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_string() if pa.types.is_string_view(arr.type) else pa.large_binary())
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        offset_type = np.int64
    elif pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        offset_type = np.int32
    else:
        raise TypeError(f"PDQ hashes must be strings of {HEX_DIGITS} hex digits, not Arrow type {arr.type}")
    n = len(arr)
    codes = np.zeros((n, CODE_BYTES), dtype=np.uint8)
    valid = np.zeros(n, dtype=bool)
    if n == 0:
        return codes, valid
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    present = ~arr.is_null().to_numpy(zero_copy_only=False)
    starts = offsets[:-1]
    candidates = present & (np.diff(offsets) == HEX_DIGITS)
    digit = np.arange(HEX_DIGITS, dtype=np.int64)
    for lo in range(0, n, _DECODE_ROWS):
        rows = lo + np.flatnonzero(candidates[lo:lo + _DECODE_ROWS])
        if rows.size == 0:
            continue
        first = starts[rows]
        if first[-1] - first[0] == HEX_DIGITS * (rows.size - 1):  # contiguous (the usual case): one slice
            chars = data[first[0]:first[0] + HEX_DIGITS * rows.size].reshape(rows.size, HEX_DIGITS)
        else:
            chars = data[first[:, None] + digit]
        nibbles = _HEX[chars]
        ok = (nibbles != 255).all(axis=1)
        codes[rows[ok]] = (nibbles[ok, 0::2] << 4) | nibbles[ok, 1::2]
        valid[rows[ok]] = True
    return codes, valid


# ------------------------------------------------------------------------------------------ bit helpers
def _words(codes: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 -> (n, 4) native uint64 read big-endian: bit p of the hash is bit 63 - p % 64 of
    word p // 64, so substrings of the hash are shifts and masks of words."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != CODE_BYTES:
        raise ValueError(f"PDQ codes must be an (n, {CODE_BYTES}) uint8 array, got shape {codes.shape}")
    return codes.view(">u8").astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of two (n, 4) uint64 word arrays (or broadcastable ones), as uint16."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.uint16)


def code_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of two (n, 32) uint8 code arrays."""
    return hamming(_words(a), _words(b))


def substrings(max_distance: int, skip: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Disjoint (start, width) bit ranges such that any two codes within max_distance bits agree exactly on
    at least one of them: max_distance + 1 of them (pigeonhole), more if that would make one wider than
    32 bits (max_distance < 7), so that a substring is a uint32 key.

    Without `skip`: the 256 bits cut into parts as equal as possible. With `skip` = (start, width): the
    bits outside that range (read circularly from its end), for codes already known to agree on it: then
    all their differences lie in those bits and the same argument holds there."""
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    first, total = (0, BITS) if skip is None else ((skip[0] + skip[1]) % BITS, BITS - skip[1])
    m = max(max_distance + 1, -(-total // 32))
    if total < m:
        raise ValueError(f"max_distance {max_distance} needs {m} substrings of the {total} bits available")
    widths = [total // m + (1 if i < total % m else 0) for i in range(m)]
    starts = np.cumsum([0] + widths[:-1])
    return [((first + int(s)) % BITS, w) for s, w in zip(starts, widths)]


def _bits(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits [start, start + width) of each code (start + width <= 256, width <= 32) as uint64."""
    i, o = divmod(start, 64)
    mask = np.uint64((1 << width) - 1)
    if o + width <= 64:
        return (words[:, i] >> np.uint64(64 - o - width)) & mask
    low = o + width - 64  # bits taken from the next word
    return ((words[:, i] << np.uint64(low)) | (words[:, i + 1] >> np.uint64(64 - low))) & mask


def substring_keys(words: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """The bits of `span` (start, width; may wrap past bit 255 to bit 0) of each code, as uint64."""
    start, width = span
    if start + width <= BITS:
        return _bits(words, start, width)
    tail = BITS - start
    return (_bits(words, start, tail) << np.uint64(width - tail)) | _bits(words, 0, width - tail)


# ------------------------------------------------------------------------------------- evaluation index
def _padded(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """codes[rows], contiguous, followed in memory by a spare row: faiss's multi-hash reads each substring
    as an unaligned 64-bit word, so the last substring of the last code reads up to 4 bytes past it."""
    buf = np.zeros((len(rows) + 1, CODE_BYTES), dtype=np.uint8)
    np.take(codes, rows, axis=0, out=buf[:-1])
    return buf[:-1]


@dataclass
class Matches:
    """Pairs (query row, indexed row) within max_distance, sorted by query then indexed row."""

    query: np.ndarray  # int64, row in the queries given to range_search
    indexed: np.ndarray  # int64, row in the codes the index was built from
    distance: np.ndarray  # uint8, Hamming distance (<= max_distance)
    candidates: int  # distinct indexed codes verified over all queries (faiss's shortlist sizes)
    queries: int  # queries searched (valid and trusted)

    def __len__(self) -> int:
        return int(self.query.size)


class PDQIndex:
    """Evaluation PDQ codes in faiss's multi-index hash, for exact range search at <= max_distance.

    Build once (`PDQIndex(codes, valid, max_distance=...)`), `save(path)`; each match task `load`s it and
    calls `range_search(pool_codes, valid=...)`. Row numbers refer to the codes given to the constructor
    (invalid / untrusted rows are kept in the file but never indexed, so rows stay aligned with the
    caller's table)."""

    def __init__(self, codes: np.ndarray, valid: np.ndarray | None = None, *, max_distance: int,
                 threads: int = 1):
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        _words(self.codes[:0])  # shape check
        n = len(self.codes)
        self.valid = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool).copy()
        if self.valid.shape != (n,):
            raise ValueError(f"valid has shape {self.valid.shape}, expected ({n},)")
        self.max_distance = int(max_distance)
        self.threads = int(threads)
        spans = substrings(self.max_distance)
        self.hash_bits = min(w for _, w in spans)  # faiss hashes equal-width substrings: m x this <= 256
        self.n_hash = len(spans)
        self.rows = np.flatnonzero(self.valid)  # faiss id -> row
        self._faiss = self._build()

    def _build(self) -> Any:
        import faiss

        index = faiss.IndexBinaryMultiHash(BITS, self.n_hash, self.hash_bits)
        index.nflip = 0  # exact substring lookups: the pigeonhole above needs no flips
        if self.rows.size:
            index.add(_padded(self.codes, self.rows))
        return index

    def __len__(self) -> int:
        return int(self.rows.size)

    def range_search(self, queries: np.ndarray, valid: np.ndarray | None = None, *,
                     max_distance: int | None = None, batch: int = 1 << 20) -> Matches:
        """All (query, indexed) pairs with Hamming distance <= max_distance (default: the index's),
        inclusive. Queries whose `valid` is False are skipped."""
        import faiss

        r = self.max_distance if max_distance is None else int(max_distance)
        if r > self.max_distance or r < 0:
            raise ValueError(f"the index was built for distances <= {self.max_distance}, asked {r}")
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        _words(queries[:0])
        qrows = np.arange(len(queries)) if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool))
        if valid is not None and len(valid) != len(queries):
            raise ValueError(f"valid has {len(valid)} rows, queries {len(queries)}")
        empty = Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8), 0, int(qrows.size))
        if qrows.size == 0 or self.rows.size == 0:
            return empty
        faiss.omp_set_num_threads(max(1, self.threads))
        stats = faiss.cvar.indexBinaryHash_stats
        q_out, i_out, d_out, candidates = [], [], [], 0
        for lo in range(0, qrows.size, batch):
            rows = qrows[lo:lo + batch]
            before = stats.ndis
            # faiss keeps distances strictly below the radius: radius r + 1 keeps distance r
            lims, dist, ids = self._faiss.range_search(_padded(queries, rows), r + 1)
            candidates += int(stats.ndis - before)
            counts = np.diff(lims.astype(np.int64))
            q_out.append(np.repeat(rows, counts))
            i_out.append(self.rows[ids])
            d_out.append(np.asarray(dist).astype(np.uint8))
        q, i, d = np.concatenate(q_out), np.concatenate(i_out), np.concatenate(d_out)
        order = np.lexsort((i, q))
        return Matches(q[order].astype(np.int64), i[order].astype(np.int64), d[order], candidates, int(qrows.size))

    # ------------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the codes, validity and max_distance to one .npz, atomically (temporary name, rename)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, codes=self.codes, valid=self.valid, max_distance=np.int64(self.max_distance),
                         format=np.int64(INDEX_FORMAT))
                f.flush()
                os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike, *, threads: int = 1) -> "PDQIndex":
        """Read a file written by save() and rebuild the hash tables (about a second per 100K codes)."""
        return _read_index_file(path, lambda z: cls(z["codes"], z["valid"], max_distance=int(z["max_distance"]),
                                                   threads=threads))


def _read_index_file(path: str | os.PathLike, build):
    """`build(arrays)` of an index file written by PDQIndex.save / VariantIndex.save, its format checked; any
    unreadable file is an InputError naming it (both index kinds share the file layout)."""
    import zipfile

    from ..errors import InputError

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = int(z["format"])
            if fmt != INDEX_FORMAT:
                raise InputError(path, f"PDQ index file format {fmt}, this version reads {INDEX_FORMAT}",
                                 field="format")
            return build(z)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(path, f"not a PDQ index file ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------- variant index (numpy)
TABLE_BITS = 24  # substrings up to this wide get a run table (2**24 x 4 bytes = 64 MB); wider: binary search


class VariantIndex:
    """Evaluation variant codes (dedup/variants.py: 47 per evaluation image, millions in all) in multi-index
    hashing of our own, for exact range search at <= max_distance. Per substring (23-24 bits at r = 10): the
    rows sorted by their key (4 bytes per code) and a table of where each key's run starts (4 bytes per
    possible key: 32-64 MB per substring, ~470 MB in all, whatever the number of codes), so a query's
    candidates are two gathers, not a binary search (47x faster measured); each candidate is verified on all
    256 bits and each pair reported once. faiss keeps ~1.2 KB per code (bench/README_dedup.md): millions of
    variant codes per worker would not fit. Same contract as PDQIndex (rows, `valid`, `Matches`); the file
    holds the codes and the sorted rows (sorting is the one slow step: done once, by the index task)."""

    def __init__(self, codes: np.ndarray, valid: np.ndarray | None = None, *, max_distance: int,
                 orders: np.ndarray | None = None):
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        n = len(self.codes)
        self.valid = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool).copy()
        if self.valid.shape != (n,):
            raise ValueError(f"valid has shape {self.valid.shape}, expected ({n},)")
        if n >= 2 ** 31:
            raise ValueError(f"{n} variant codes: at most 2**31 - 1 per index")
        self.max_distance = int(max_distance)
        self.rows = np.flatnonzero(self.valid).astype(np.int32)
        self.words = _words(self.codes[self.rows])
        self.spans = substrings(self.max_distance)
        self.tables = []
        for t, span in enumerate(self.spans):
            keys = substring_keys(self.words, span).astype(np.uint32)
            order = np.argsort(keys, kind="stable").astype(np.int32) if orders is None else orders[t]
            if span[1] <= TABLE_BITS:
                starts = np.zeros((1 << span[1]) + 1, np.int32)
                np.cumsum(np.bincount(keys, minlength=1 << span[1]), out=starts[1:])
                self.tables.append((starts, order, None))
            else:  # too wide for a table (max_distance < 10): binary search in the sorted keys
                self.tables.append((None, order, keys[order]))
            del keys

    def __len__(self) -> int:
        return int(self.rows.size)

    def range_search(self, queries: np.ndarray, valid: np.ndarray | None = None, *,
                     max_distance: int | None = None, batch: int = 1 << 16) -> Matches:
        """All (query, indexed) pairs within max_distance (default and at most: the index's), inclusive."""
        r = self.max_distance if max_distance is None else int(max_distance)
        if r > self.max_distance:
            raise ValueError(f"max_distance {r} is over the index's {self.max_distance}: its substrings would miss pairs")
        qrows = np.arange(len(queries)) if valid is None else np.flatnonzero(np.asarray(valid, bool))
        q_out, i_out, d_out, candidates = [], [], [], 0
        n = np.int64(max(1, len(self.words)))
        for lo in range(0, qrows.size if len(self.words) else 0, batch):
            rows = qrows[lo:lo + batch]
            qw = _words(np.asarray(queries)[rows])
            parts_q, parts_i = [], []
            for span, (starts, order, sorted_keys) in zip(self.spans, self.tables):
                keys = substring_keys(qw, span).astype(np.int64)
                if starts is not None:
                    left = starts[keys]
                    count = starts[keys + 1] - left
                else:
                    left = np.searchsorted(sorted_keys, keys, "left")
                    count = np.searchsorted(sorted_keys, keys, "right") - left
                hit = np.flatnonzero(count)
                if not hit.size:
                    continue
                c = count[hit]
                parts_q.append(np.repeat(hit, c))
                parts_i.append(order[np.repeat(left[hit], c) + np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)])
            if not parts_q:
                continue
            q, i = np.concatenate(parts_q), np.concatenate(parts_i)
            candidates += int(q.size)
            d = hamming(qw[q], self.words[i])
            near = d <= r
            key, first = np.unique(q[near] * n + i[near], return_index=True)  # found under several substrings
            q_out.append(rows[key // n])
            i_out.append(self.rows[key % n].astype(np.int64))
            d_out.append(d[near][first].astype(np.uint8))
        if not q_out:
            z = np.zeros(0, np.int64)
            return Matches(z, z, np.zeros(0, np.uint8), candidates, int(qrows.size))
        q, i, d = np.concatenate(q_out), np.concatenate(i_out), np.concatenate(d_out)
        order = np.lexsort((i, q))
        return Matches(q[order].astype(np.int64), i[order], d[order], candidates, int(qrows.size))

    def save(self, path: str | os.PathLike) -> None:
        """The codes, validity, max_distance and sorted rows in one .npz, atomically (the run tables are
        rebuilt on load from the keys: a bincount per substring)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                orders = np.stack([o for _, o, _ in self.tables]) if self.tables else np.zeros((0, 0), np.int32)
                np.savez(f, codes=self.codes, valid=self.valid, max_distance=np.int64(self.max_distance),
                         format=np.int64(INDEX_FORMAT), orders=orders)
                f.flush()
                os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VariantIndex":
        from ..errors import InputError

        def build(z) -> "VariantIndex":
            codes, valid, r, orders = z["codes"], z["valid"], int(z["max_distance"]), z["orders"]
            if orders.shape != (len(substrings(r)), int(valid.sum())):
                raise InputError(Path(path), f"sorted rows of shape {orders.shape} do not fit the codes",
                                 field="orders")
            return cls(codes, valid, max_distance=r, orders=orders)

        return _read_index_file(path, build)


# ------------------------------------------------------------------------------------ within-pool pairs
@dataclass
class NearPairs:
    """Pairs (i, j), i < j, rows of the codes given to near_pairs, with their Hamming distance.

    Identical codes are collapsed first: each group of identical valid codes is reported as pairs
    (first row of the group, other row, 0), not as all its pairs; near pairs are reported between the
    groups' first rows only. So rows a and b are within max_distance exactly when
    rep[a] == rep[b] or (min, max of rep[a], rep[b]) is a pair (up to the dense buckets below).
    `rep` maps every row to the first row of its group of identical codes (itself when unique; -1 for
    rows that take no part)."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    distance: np.ndarray  # uint8; 0 = identical codes
    rep: np.ndarray  # int64 per input row
    candidates: int  # candidate pairs verified (counting a pair once per substring it was found under)
    distinct: int  # distinct valid codes searched
    dense_codes: int  # distinct codes that were in a dense bucket (paired against its leaders only)
    dense_buckets: int  # dense buckets met (one cluster of near-identical codes is met under many substrings)

    def __len__(self) -> int:
        return int(self.i.size)


@dataclass
class _Found:
    """Pairs found by one substring's search: indices into the distinct codes, int32 (distinct < 2**31)."""

    a: list
    b: list
    d: list
    candidates: int = 0
    dense: list = field(default_factory=list)  # the members of each dense bucket

    def add(self, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> None:
        if a.size:
            self.a.append(a.astype(np.int32))
            self.b.append(b.astype(np.int32))
            self.d.append(d.astype(np.uint8))


def near_pairs(codes: np.ndarray, valid: np.ndarray | None = None, *, max_distance: int, threads: int = 1,
               max_bucket: int = 1024, chunk_pairs: int = 1 << 20) -> NearPairs:
    """All pairs among `codes` within `max_distance` bits (inclusive), in bounded memory.

    1. Identical codes collapse (one sort on a 64-bit mix of the code, collisions handled): a group of k
       identical codes costs k - 1 pairs against its first row, never k^2 (e.g. thousands of blank images
       with one hash).
    2. Multi-index hashing over the distinct codes: for each of the max_distance + 1 substrings, the codes
       are sorted by it and every pair inside a run of equal keys is verified on all 256 bits, at most
       `chunk_pairs` pairs at a time. A pair is kept only under the first substring it agrees on (the
       others see that from the pair's XOR), so no pair is stored twice.
    3. A run of more than `max_bucket` codes (many codes sharing 23 bits: a common composition) is searched
       again by the same method on its other 233 bits (exact: its pairs agree on the run's bits, so all
       their differences lie in the others). A run still over `max_bucket` there shares ~44 bits:
       near-identical codes (a dense cluster, e.g. noisy blank frames) whose all-pairs output would be
       quadratic. It is covered by leaders instead: the first code not yet covered (most copied first,
       then in code order) becomes a leader and is paired with every uncovered code within max_distance
       of it. Every code of such a bucket is then paired with a leader within max_distance (so clusters
       built from the pairs stay connected), but two non-leaders are not paired with each other unless a
       small run elsewhere pairs them. `dense_codes` says how many codes were handled so; 0 means the
       result is exactly all pairs.
    `threads`: substrings searched in parallel (numpy releases the GIL in its sorts and array arithmetic);
    each thread holds its own sort arrays (~30 bytes per distinct code)."""
    words = _words(codes)
    n = len(words)
    ok = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != (n,):
        raise ValueError(f"valid has shape {ok.shape}, expected ({n},)")
    rows = np.flatnonzero(ok)
    rep = np.full(n, -1, dtype=np.int64)
    if rows.size == 0:
        z = np.zeros(0, np.int64)
        return NearPairs(z, z, np.zeros(0, np.uint8), rep, 0, 0, 0, 0)
    # 1. identical codes: grouped by a stable sort on a 64-bit mix of the four words (one sort instead of
    # np.lexsort's four, 6x faster), each group in row order, its first row first
    order, sw = _identical_order(words if rows.size == n else words[rows])
    del words
    new = np.r_[True, (sw[1:] != sw[:-1]).any(axis=1)]
    group = np.cumsum(new) - 1
    first_row = rows[order[new]]  # the smallest row of each group (rows ascend within a group)
    rep[rows[order]] = first_row[group]
    dup_rows = rows[order[~new]]
    exact_i, exact_j = rep[dup_rows], dup_rows
    distinct = sw[new]
    copies = np.bincount(group)  # rows per distinct code: the most copied code of a dense bucket leads
    del sw, order, new, group, dup_rows
    # 2.-3. near pairs among the distinct codes
    spans = substrings(max_distance)
    results = [_Found([], [], []) for _ in spans]

    def search(t: int) -> None:
        _join(distinct, None, spans[t], spans[:t], copies, max_distance, max_bucket, chunk_pairs, 0, results[t])

    if threads > 1 and len(spans) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(search, range(len(spans))))
    else:
        for t in range(len(spans)):
            search(t)
    a = np.concatenate([x for r in results for x in r.a] or [np.zeros(0, np.int32)])
    b = np.concatenate([x for r in results for x in r.b] or [np.zeros(0, np.int32)])
    d = np.concatenate([x for r in results for x in r.d] or [np.zeros(0, np.uint8)])
    candidates = sum(r.candidates for r in results)
    dense_buckets = sum(len(r.dense) for r in results)
    dense_codes = int(np.unique(np.concatenate([x for r in results for x in r.dense])).size) if dense_buckets else 0
    del results
    ra, rb = first_row[a], first_row[b]
    del a, b
    lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
    del ra, rb
    if dense_codes:  # leaders' pairs are not filtered by the first-substring rule: they may repeat
        _, keep = np.unique(lo * np.int64(n) + hi, return_index=True)
        lo, hi, d = lo[keep], hi[keep], d[keep]
    i = np.concatenate([exact_i, lo])
    j = np.concatenate([exact_j, hi])
    dist = np.concatenate([np.zeros(exact_i.size, np.uint8), d])
    del lo, hi, d
    order = np.lexsort((j, i))
    return NearPairs(i[order], j[order], dist[order], rep, candidates=candidates, distinct=int(len(distinct)),
                     dense_codes=dense_codes, dense_buckets=dense_buckets)


_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], np.uint64)


def _identical_order(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A permutation of the rows of w (n, 4) that puts identical rows next to each other, in row order,
    and the rows so ordered.

    Sorted by a multiplicative mix of the words; two different codes with the same mix (a 64-bit
    collision) could interleave, so runs of equal mixes holding different codes are re-sorted exactly."""
    h = w[:, 0] * _MIX[0] ^ w[:, 1] * _MIX[1] ^ w[:, 2] * _MIX[2] ^ w[:, 3] * _MIX[3]
    order = np.argsort(h, kind="stable")
    sh, sw = h[order], w[order]
    same_mix = sh[1:] == sh[:-1]
    clash = np.flatnonzero(same_mix & (sw[1:] != sw[:-1]).any(axis=1))
    if clash.size:  # astronomically rare: exact lexicographic order inside the colliding runs
        run = np.cumsum(np.r_[True, ~same_mix]) - 1
        bad = np.isin(run, run[clash])
        sub = order[bad]
        ws = w[sub]
        order[bad] = sub[np.lexsort((sub, ws[:, 3], ws[:, 2], ws[:, 1], ws[:, 0], sh[bad]))]
        sw = w[order]
    return order, sw


def _shares_any(xor: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Per row of XORed words: whether the two codes agree on any of `spans`."""
    shared = np.zeros(len(xor), dtype=bool)
    for span in spans:
        shared |= substring_keys(xor, span) == 0
    return shared


def _join(words: np.ndarray, members: np.ndarray | None, span: tuple[int, int], before: list[tuple[int, int]],
          copies: np.ndarray, r: int, max_bucket: int, chunk_pairs: int, depth: int, out: _Found) -> None:
    """Pairs of `members` (indices into words; None = all) that agree on `span` and on none of `before`
    (those are found under that earlier substring), within r bits. `copies`: rows per code."""
    keys = substring_keys(words if members is None else words[members], span).astype(np.uint32)
    order = np.argsort(keys)  # quicksort: the order inside a run does not matter
    sk = keys[order]
    del keys
    m = sk.size
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    del sk
    lengths = np.diff(np.r_[starts, m])
    ids = order if members is None else members[order]  # sorted position -> index into words
    del order
    small = (lengths >= 2) & (lengths <= max_bucket)
    if small.any():
        # every position of a small run, with the number of run members after it: its partners
        run_start, run_len = starts[small], lengths[small]
        pos = np.repeat(run_start, run_len) + (np.arange(run_len.sum()) - np.repeat(np.cumsum(run_len) - run_len,
                                                                                   run_len))
        after = np.repeat(run_start + run_len, run_len) - pos - 1
        _verify_runs(words, ids, pos, after, before, r, chunk_pairs, out)
        del pos, after
    big = lengths > max_bucket
    for s, length in zip(starts[big].tolist(), lengths[big].tolist()):
        bucket = ids[s:s + length]
        if depth == 0:  # same method on the bits this bucket does not share (see near_pairs, step 3)
            subs = substrings(r, skip=span)
            for u, sub in enumerate(subs):
                _join(words, bucket, sub, before + subs[:u], copies, r, max_bucket, chunk_pairs, depth + 1, out)
        else:
            _leaders(words, bucket[np.lexsort((bucket, -copies[bucket]))], r, out)


def _verify_runs(words: np.ndarray, ids: np.ndarray, pos: np.ndarray, after: np.ndarray,
                 before: list[tuple[int, int]], r: int, chunk_pairs: int, out: _Found) -> None:
    """Verify the pairs (k, k + 1 .. k + after[k]) of the run members listed in `pos` (sorted positions,
    each run's members consecutive), about chunk_pairs at a time."""
    local = words[ids[pos]]  # the runs' codes in sorted order: pairs then read neighbouring rows
    total = np.cumsum(after)
    lo = 0
    while lo < pos.size:
        base = total[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(total, base + chunk_pairs, side="right")))
        c = after[lo:hi]
        n_pairs = int(c.sum())
        if n_pairs:
            first = np.repeat(np.arange(lo, hi), c)
            second = first + 1 + (np.arange(n_pairs) - np.repeat(np.cumsum(c) - c, c))
            xor = np.bitwise_xor(local[first], local[second])
            d = np.bitwise_count(xor).sum(axis=1, dtype=np.uint16)
            near = np.flatnonzero(d <= r)
            if before and near.size:
                near = near[~_shares_any(xor[near], before)]
            out.add(ids[pos[first[near]]], ids[pos[second[near]]], d[near])
            out.candidates += n_pairs
        lo = hi


def _leaders(words: np.ndarray, bucket: np.ndarray, r: int, out: _Found) -> None:
    """Cover a dense bucket by leaders (see near_pairs, step 3), taken in the order of `bucket`: most copied
    code first (a blank hash repeated thousands of times is the natural representative), then code order."""
    out.dense.append(bucket)
    left = bucket
    while left.size:
        leader, rest = left[0], left[1:]
        d = hamming(words[leader][None, :], words[rest])
        near = d <= r
        out.add(np.full(int(near.sum()), leader, np.int64), rest[near], d[near])
        out.candidates += int(rest.size)
        left = rest[~near]


def clusters(pairs: NearPairs) -> np.ndarray:
    """Connected components of the pairs: per input row, the smallest row of its cluster (a row in no pair
    is its own cluster; -1 for rows that took no part). Deterministic: the same rows give the same ids.

    Vectorised hook-and-compress (Shiloach-Vishkin style): every pair hooks the larger of its two roots
    under the smaller, then pointers jump until each row points at its root; repeat until no pair joins
    two roots. A component's smallest row is never hooked (no smaller root reaches it), so it ends as the
    root of all of them."""
    parent = components(pairs.rep.size, pairs.i, pairs.j)
    parent[pairs.rep < 0] = -1
    return parent


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of n rows linked by the pairs (i, j): per row, the smallest row of its component
    (see `clusters`; any links, e.g. near pairs and byte-identical copies together)."""
    parent = np.arange(n, dtype=np.int64)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    while i.size:
        ri, rj = parent[i], parent[j]
        joined = ri != rj
        if not joined.any():
            break
        i, j, ri, rj = i[joined], j[joined], ri[joined], rj[joined]  # pairs already inside one root are done
        np.minimum.at(parent, np.maximum(ri, rj), np.minimum(ri, rj))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent
