"""The PDQ index (tol_builder.dedup.index) against brute force: exact at the threshold, hex decoding, masks.

Codes are clustered like PDQ hashes (families of codes a few bits apart, exact copies), not uniform random
bits, so that substring buckets hold many codes and the threshold is crossed in both directions.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tol_builder.dedup.index import PDQIndex, clusters, code_distances, near_pairs, pdq_codes, substrings
from tol_builder.errors import InputError


# ------------------------------------------------------------------------------------------------ helpers
def flip(codes: np.ndarray, k, rng: np.random.Generator) -> np.ndarray:
    """Each row with exactly k[i] distinct bits flipped."""
    k = np.broadcast_to(np.asarray(k), (len(codes),))
    perm = np.argsort(rng.random((len(codes), 256)), axis=1)
    return codes ^ np.packbits(perm < k[:, None], axis=1)


def clustered(rng: np.random.Generator, n: int, families: int, spread: int = 14) -> np.ndarray:
    """n codes in `families` families: members 0..spread bits from their centre; ~10% exact copies."""
    centres = rng.integers(0, 256, size=(max(1, families), 32), dtype=np.uint8)
    codes = flip(centres[rng.integers(0, len(centres), n)], rng.integers(0, spread + 1, n), rng)
    if n > 1:
        copies = rng.random(n) < 0.1
        codes[copies] = codes[rng.integers(0, n, int(copies.sum()))]
    return codes


def brute_matches(queries: np.ndarray, codes: np.ndarray, r: int) -> set[tuple[int, int, int]]:
    if len(queries) == 0 or len(codes) == 0:
        return set()
    d = code_distances(np.repeat(queries, len(codes), 0), np.tile(codes, (len(queries), 1))).reshape(
        len(queries), len(codes))
    q, i = np.nonzero(d <= r)
    return set(zip(q.tolist(), i.tolist(), d[q, i].tolist()))


def brute_pairs(codes: np.ndarray, r: int, rows: np.ndarray | None = None) -> set[tuple[int, int, int]]:
    rows = np.arange(len(codes)) if rows is None else rows
    return {(int(rows[a]), int(rows[b]), d) for a, b, d in brute_matches(codes[rows], codes[rows], r) if a < b}


def expanded(pairs) -> set[tuple[int, int, int]]:
    """All row pairs a NearPairs result stands for: identical groups expanded."""
    groups: dict[int, list[int]] = {}
    for row, rep in enumerate(pairs.rep.tolist()):
        if rep >= 0:
            groups.setdefault(rep, []).append(row)
    out = set()
    for g in groups.values():
        out |= {(a, b, 0) for a, b in itertools.combinations(g, 2)}
    for i, j, d in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.distance.tolist()):
        if d:
            out |= {(min(x, y), max(x, y), d) for x in groups[i] for y in groups[j]}
    return out


def as_set(m) -> set[tuple[int, int, int]]:
    return set(zip(m.query.tolist(), m.indexed.tolist(), m.distance.tolist()))


# ------------------------------------------------------------------------------------------- hex decoding
@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, 2**256 - 1)), max_size=40), st.booleans(), st.integers(0, 3))
def test_hex_decoding_agrees_with_python_integers(values, upper, cut):
    hexes = [None if v is None else f"{v:064x}" for v in values]
    if upper:
        hexes = [h.upper() if h else h for h in hexes]
    forms = [hexes, pa.array(hexes, pa.string()), pa.array(hexes, pa.large_string()),
             pa.chunked_array([pa.array(hexes[:cut], pa.string()), pa.array(hexes[cut:], pa.string())])]
    for form in forms:
        codes, valid = pdq_codes(form)
        assert codes.shape == (len(values), 32) and codes.dtype == np.uint8
        assert valid.tolist() == [v is not None for v in values]
        for row, v in enumerate(values):
            expect = (v if v is not None else 0).to_bytes(32, "big")
            assert bytes(codes[row]) == expect
    codes, valid = pdq_codes(hexes)
    live = [k for k, v in enumerate(values) if v is not None]
    for a, b in itertools.combinations(live, 2):  # distances equal int arithmetic
        assert int(code_distances(codes[[a]], codes[[b]])[0]) == (values[a] ^ values[b]).bit_count()


def test_hex_decoding_masks_nulls_and_malformed_values():
    good = "0123456789abcdefABCDEF" + "f" * 42
    bad = [None, "", "ab", good[:63], good + "0", "g" + good[1:], " " + good[1:], good[:-1] + "\n",
           "é" * 32,  # 64 bytes of UTF-8, not hex
           "é" + good[2:], "0x" + good[2:]]
    values = [good] + bad + [good.lower()]
    codes, valid = pdq_codes(values)
    assert valid.tolist() == [True] + [False] * len(bad) + [True]
    assert not codes[1:-1].any()  # masked rows are zeros, never garbage
    assert bytes(codes[0]) == bytes.fromhex(good) == bytes(codes[-1])
    # a sliced Arrow array (non-zero offset) and non-contiguous valid rows decode the same
    arr = pa.array(["x"] + values)
    sliced_codes, sliced_valid = pdq_codes(arr.slice(1))
    assert (sliced_codes == codes).all() and (sliced_valid == valid).all()
    with pytest.raises(TypeError, match="hex digits"):
        pdq_codes(pa.array([1, 2, 3]))


def test_hex_decoding_of_empty_inputs():
    for empty in ([], pa.array([], pa.string()), pa.chunked_array([], pa.string())):
        codes, valid = pdq_codes(empty)
        assert codes.shape == (0, 32) and valid.shape == (0,)


# ------------------------------------------------------------------------------------------ substrings
@pytest.mark.parametrize("r", [0, 1, 4, 10, 12, 20])
def test_substrings_partition_the_bits(r):
    spans = substrings(r)
    bits = sorted(b for s, w in spans for b in range(s, s + w))
    assert len(spans) == max(r + 1, 8) and bits == list(range(256)) and max(w for _, w in spans) <= 32
    skip = spans[r // 2]
    rest = substrings(r, skip=skip)
    covered = sorted((s + k) % 256 for s, w in rest for k in range(w))
    assert covered == sorted(set(range(256)) - set(range(skip[0], skip[0] + skip[1])))
    assert len(rest) >= r + 1 and max(w for _, w in rest) <= 32


# ------------------------------------------------------------------------------------------ range search
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_eval=st.integers(1, 60), families=st.integers(1, 8),
       r=st.sampled_from([0, 3, 10, 12]))
def test_range_search_equals_brute_force(seed, n_eval, families, r):
    rng = np.random.default_rng(seed)
    ev = clustered(rng, n_eval, families)
    # queries: planted at every distance 0..r+4 from evaluation codes, plus other family members
    planted_d = np.arange(r + 5).repeat(2)
    planted_e = rng.integers(0, n_eval, planted_d.size)
    queries = np.concatenate([flip(ev[planted_e], planted_d, rng), clustered(rng, 30, families)])
    index = PDQIndex(ev, max_distance=r)
    got = index.range_search(queries)
    assert as_set(got) == brute_matches(queries, ev, r)
    pairs = as_set(got)
    for k, (e, d) in enumerate(zip(planted_e.tolist(), planted_d.tolist())):
        assert ((k, e, d) in pairs) == (d <= r)  # exactly max_distance found, max_distance + 1 not
    assert list(zip(got.query, got.indexed)) == sorted(zip(got.query, got.indexed))
    assert got.queries == len(queries) and got.candidates >= len(got)
    if r >= 3:  # a smaller radius on the same index is exact too
        assert as_set(index.range_search(queries, max_distance=r - 3)) == brute_matches(queries, ev, r - 3)


def test_range_search_masks_untrusted_rows_on_both_sides():
    rng = np.random.default_rng(5)
    ev = clustered(rng, 200, 5)
    queries = flip(ev, rng.integers(0, 12, len(ev)), rng)
    ev_ok, q_ok = rng.random(len(ev)) < 0.7, rng.random(len(queries)) < 0.7
    got = PDQIndex(ev, ev_ok, max_distance=10).range_search(queries, q_ok)
    expect = {(q, i, d) for q, i, d in brute_matches(queries, ev, 10) if ev_ok[i] and q_ok[q]}
    assert as_set(got) == expect and len(expect) > 50
    assert got.queries == int(q_ok.sum())


def test_range_search_on_empty_inputs():
    rng = np.random.default_rng(1)
    codes = clustered(rng, 10, 2)
    none = np.zeros((0, 32), np.uint8)
    for index, queries, valid in [(PDQIndex(none, max_distance=10), codes, None),
                                  (PDQIndex(codes, max_distance=10), none, None),
                                  (PDQIndex(codes, np.zeros(10, bool), max_distance=10), codes, None),
                                  (PDQIndex(codes, max_distance=10), codes, np.zeros(10, bool))]:
        got = index.range_search(queries, valid)
        assert len(got) == 0 and got.query.dtype == np.int64 and got.distance.dtype == np.uint8
    with pytest.raises(ValueError, match="built for distances <= 10"):
        PDQIndex(codes, max_distance=10).range_search(codes, max_distance=11)
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        PDQIndex(codes[:, :16], max_distance=10)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    ev = clustered(rng, 500, 20)
    valid = rng.random(500) < 0.9
    queries = np.concatenate([flip(ev, rng.integers(0, 16, 500), rng), clustered(rng, 500, 20)])
    index = PDQIndex(ev, valid, max_distance=10, threads=2)
    path = tmp_path / "dedup" / "eval_index.npz"
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["eval_index.npz"]  # written atomically, no leftovers
    loaded = PDQIndex.load(path, threads=1)
    assert loaded.max_distance == 10 and len(loaded) == int(valid.sum())
    assert (loaded.codes == ev).all() and (loaded.valid == valid).all()
    before, after = index.range_search(queries), loaded.range_search(queries)
    assert as_set(before) == as_set(after) and len(before) > 100
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not an index")
    with pytest.raises(InputError, match="broken.npz"):
        PDQIndex.load(bad)


# ----------------------------------------------------------------------------------- within-pool pairs
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 120), families=st.integers(1, 10),
       r=st.sampled_from([0, 4, 10]), threads=st.sampled_from([1, 2]))
def test_near_pairs_equal_brute_force(seed, n, families, r, threads):
    rng = np.random.default_rng(seed)
    codes = clustered(rng, n, families, spread=8)
    valid = rng.random(n) < 0.9
    got = near_pairs(codes, valid, max_distance=r, threads=threads)
    assert got.dense_codes == 0
    assert expanded(got) == brute_pairs(codes, r, np.flatnonzero(valid))
    assert (got.i < got.j).all() and (got.rep[~valid] == -1).all()
    # clusters: connected components of the true pairs, labelled by their smallest row
    label = np.where(valid, np.arange(n), -1)
    for _ in range(n):  # plain label propagation over the brute-force pairs, to a fixed point
        before = label.copy()
        for a, b, _d in brute_pairs(codes, r, np.flatnonzero(valid)):
            label[a] = label[b] = min(label[a], label[b])
        if (label == before).all():
            break
    assert (clusters(got) == label).all()
    # identical codes are reported against the group's first row, never as all their pairs
    exact = got.distance == 0
    assert (got.rep[got.j[exact]] == got.i[exact]).all() and (got.rep[got.i[exact]] == got.i[exact]).all()
    assert len(set(zip(got.i.tolist(), got.j.tolist()))) == len(got)


def test_near_pairs_search_a_big_bucket_again_exactly():
    """300 codes sharing the bits of one substring but otherwise unrelated, with near pairs among them: the
    bucket is over max_bucket and is searched again on its other bits, still exactly."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(300, 32), dtype=np.uint8)
    base[:, :2] = 0xAB  # bits 0..15 shared by all ...
    base[:, 2] &= 0x01  # ... and 16..22: all 300 agree on the first 23-bit substring
    near = flip(base[:60], rng.integers(1, 11, 60), rng)
    near[:, :2], near[:, 2] = 0xAB, near[:, 2] & 0x01
    codes = np.concatenate([base, near, base[:5]])
    for max_bucket in (1024, 16):
        got = near_pairs(codes, max_distance=10, max_bucket=max_bucket)
        assert got.dense_codes == 0
        assert expanded(got) == brute_pairs(codes, 10)
    assert len(brute_pairs(codes, 10)) >= 60


def test_near_pairs_cover_a_dense_cluster_by_leaders():
    """300 copies of one blank hash and 400 codes 1..3 bits from it: the copies cost 299 pairs, the
    near-identical codes are linked to leaders instead of giving ~80,000 pairs, and stay one cluster."""
    rng = np.random.default_rng(4)
    blank = rng.integers(0, 256, size=(1, 32), dtype=np.uint8)
    others = clustered(rng, 300, 30)
    codes = np.concatenate([np.repeat(blank, 300, 0), flip(np.repeat(blank, 400, 0),
                                                           rng.integers(1, 4, 400), rng), others])
    codes = codes[rng.permutation(len(codes))]
    got = near_pairs(codes, max_distance=10, max_bucket=64)
    truth = brute_pairs(codes, 10)
    assert got.dense_codes > 0 and len(got) < 5000 and len(truth) > 70_000
    assert expanded(got) <= truth  # every reported pair is a true one, with its true distance
    in_cluster = code_distances(codes, np.repeat(blank, len(codes), 0)) <= 3
    # connected components of the reported pairs: the blank cluster is one component
    parent = np.arange(len(codes))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(got.i.tolist(), got.j.tolist()):
        parent[find(i)] = find(j)
    assert len({find(int(x)) for x in np.flatnonzero(in_cluster)}) == 1
    assert np.unique(clusters(got)[in_cluster]).size == 1
    # the blank hash, copied most, leads: every near-blank code is paired with it (so with all its copies)
    blank_rows = np.flatnonzero(code_distances(codes, np.repeat(blank, len(codes), 0)) == 0)
    pairs = expanded(got)
    for x in np.flatnonzero(in_cluster & ~np.isin(np.arange(len(codes)), blank_rows)).tolist():
        d = int(code_distances(codes[[x]], blank)[0])
        assert all((min(x, b), max(x, b), d) in pairs for b in blank_rows.tolist())
    # the codes outside the dense cluster keep all their pairs
    outside = {(i, j, d) for i, j, d in truth if not in_cluster[i] and not in_cluster[j]}
    assert outside and outside <= expanded(got)


def test_identical_groups_survive_a_collision_of_the_mix():
    """Two different codes built so that the 64-bit mix used to group identical codes collides."""
    mix = [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93]
    m64 = (1 << 64) - 1
    a = [0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 0x4444444444444444]
    b0 = 0x5555555555555555
    # a0*M0 ^ a1*M1 == b0*M0 ^ b1*M1  =>  b1 = (a0*M0 ^ a1*M1 ^ b0*M0) * M1^-1
    b1 = (((a[0] * mix[0]) & m64) ^ ((a[1] * mix[1]) & m64) ^ ((b0 * mix[0]) & m64)) * pow(mix[1], -1, 1 << 64) & m64
    b = [b0, b1, a[2], a[3]]
    to_code = lambda w: np.frombuffer(b"".join(x.to_bytes(8, "big") for x in w), np.uint8)  # noqa: E731
    codes = np.stack([to_code(a), to_code(b), to_code(a), to_code(b), to_code(a)])
    got = near_pairs(codes, max_distance=10)
    assert got.rep.tolist() == [0, 1, 0, 1, 0]
    assert expanded(got) == brute_pairs(codes, 10)


def test_near_pairs_on_empty_and_masked_inputs():
    none = np.zeros((0, 32), np.uint8)
    got = near_pairs(none, max_distance=10)
    assert len(got) == 0 and got.rep.shape == (0,)
    codes = np.zeros((5, 32), np.uint8)
    got = near_pairs(codes, np.zeros(5, bool), max_distance=10)
    assert len(got) == 0 and (got.rep == -1).all()
    got = near_pairs(codes, max_distance=10)  # five identical codes: four pairs against row 0
    assert got.i.tolist() == [0] * 4 and got.j.tolist() == [1, 2, 3, 4] and got.distinct == 1
    with pytest.raises(ValueError, match="valid has shape"):
        near_pairs(codes, np.ones(4, bool), max_distance=10)


def test_near_pairs_are_deterministic_across_threads():
    rng = np.random.default_rng(11)
    codes = clustered(rng, 1500, 100, spread=10)
    one = near_pairs(codes, max_distance=10, threads=1, max_bucket=8)
    two = near_pairs(codes, max_distance=10, threads=2, max_bucket=8)
    for field in ("i", "j", "distance", "rep"):
        assert (getattr(one, field) == getattr(two, field)).all()


# --- issue 22: the numpy variant index (VariantIndex) --------------------------------------------------------
@pytest.mark.parametrize("r", [0, 3, 10, 12])
def test_variant_index_equals_brute_force_and_faiss(r, tmp_path):
    from tol_builder.dedup.index import VariantIndex

    rng = np.random.default_rng(22 + r)
    codes = clustered(rng, 3000, 60, spread=14)
    valid = rng.random(len(codes)) > 0.1
    queries = flip(codes[rng.integers(0, len(codes), 800)], rng.integers(0, r + 5, 800), rng)
    qvalid = rng.random(len(queries)) > 0.05
    index = VariantIndex(codes, valid, max_distance=r)
    got = index.range_search(queries, qvalid, batch=97)  # several batches
    want = {(q, i, d) for q, i, d in brute_matches(queries, codes, r) if valid[i] and qvalid[q]}
    assert set(zip(got.query.tolist(), got.indexed.tolist(), got.distance.tolist())) == want
    assert len(got) == len(want)  # each pair once, though found under several substrings
    assert got.queries == int(qvalid.sum())
    faiss = PDQIndex(codes, valid, max_distance=r).range_search(queries, qvalid)
    assert (got.query == faiss.query).all() and (got.indexed == faiss.indexed).all()
    index.save(tmp_path / "v.npz")
    again = VariantIndex.load(tmp_path / "v.npz").range_search(queries, qvalid)
    assert (again.query == got.query).all() and (again.distance == got.distance).all()
    with pytest.raises(ValueError, match="over the index"):
        index.range_search(queries, max_distance=r + 1)


def test_variant_index_empty_and_broken_file(tmp_path):
    from tol_builder.dedup.index import VariantIndex

    empty = VariantIndex(np.zeros((0, 32), np.uint8), max_distance=10)
    assert len(empty) == 0 and len(empty.range_search(np.zeros((3, 32), np.uint8))) == 0
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        VariantIndex.load(tmp_path / "bad.npz")
