"""Synthetic 256-bit PDQ hashes clustered like real ones, for bench/dedup_index.py.

Real PDQ thresholds 256 DCT coefficients at their median, so a hash has about 128 ones and two unrelated
photos are about 128 +- 8 bits apart; but photos are not independent: a burst or one scene gives a family
of hashes a few to a few dozen bits apart, and similar compositions (a subject centred on a plain
background) pull unrelated hashes somewhat together. The model here:

* archetypes: `N_ARCHETYPES` random codes (compositions);
* a family centre = an archetype with each bit flipped with probability `CENTRE_FLIP` (two unrelated
  centres of one archetype are 2p(1-p) x 256 = ~117 bits apart, of different archetypes ~128);
* a family member = its centre with 1..`MEMBER_FLIPS` random bits flipped (members of one family are 2 to
  ~40 bits apart: some pairs fall within 10, most do not); family sizes geometric, mean ~4, capped at 60.

`evaluation_benchmark` plants, against evaluation hashes, near duplicates at exactly 0..10 bits (every
distance `per_distance` times), decoys at exactly 11..14 bits, and hard negatives (other members of the
evaluation image's family, 15..40 bits away), then fills the pool with background families. Evaluation
hashes of one family are >= 26 bits apart, so a decoy (<= 14 bits from its own evaluation hash) cannot
land within 10 of a sibling. Everything is deterministic for a seed: rows are produced in chunks, each
from its own generator spawned from the seed. 10.4M hashes take a few seconds and ~0.4 GB (the codes
themselves are 333 MB).

    python bench/synth_pdq.py            # prints distance statistics of a small sample
"""

from __future__ import annotations

import numpy as np

BITS = 256
N_ARCHETYPES = 256
CENTRE_FLIP = 0.35
MEMBER_FLIPS = 20
MAX_FAMILY = 60
CHUNK = 262_144  # rows per generator chunk (a (CHUNK, 256) bool mask is 64 MB)
EXACT_CHUNK = 32_768  # rows per exact-flip step (a float32 and an int64 (n, 256) array: 100 MB)


def _rngs(seed: int, label: str, n_chunks: int) -> list[np.random.Generator]:
    # one independent stream per chunk: a chunk's rows do not depend on how many chunks came before
    ss = np.random.SeedSequence([seed, sum(ord(c) << (8 * (i % 4)) for i, c in enumerate(label))])
    return [np.random.default_rng(s) for s in ss.spawn(n_chunks)]


def random_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random 256-bit codes, (n, 32) uint8."""
    return rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)


def flip_random(codes: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row with up to k[i] random bits flipped (positions drawn with replacement: cheap, <= k[i])."""
    n = len(codes)
    k = np.broadcast_to(np.asarray(k), (n,))
    kmax = int(k.max(initial=0))
    mask = np.zeros((n, BITS), dtype=bool)
    if kmax:
        pos = rng.integers(0, BITS, size=(n, kmax))
        rows = np.broadcast_to(np.arange(n)[:, None], pos.shape)
        take = np.arange(kmax)[None, :] < k[:, None]
        mask[rows[take], pos[take]] = True
    return codes ^ np.packbits(mask, axis=1)


def flip_exact(codes: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row with exactly k[i] distinct bits flipped: its Hamming distance to the input is k[i]."""
    n = len(codes)
    k = np.broadcast_to(np.asarray(k), (n,))
    out = np.empty_like(codes)
    for lo in range(0, n, EXACT_CHUNK):
        hi = min(n, lo + EXACT_CHUNK)
        perm = np.argsort(rng.random((hi - lo, BITS), dtype=np.float32), axis=1)  # a permutation per row
        mask = perm < k[lo:hi, None]  # exactly k[i] entries of a permutation of 0..255 are below k[i]
        out[lo:hi] = codes[lo:hi] ^ np.packbits(mask, axis=1)
    return out


def archetypes(seed: int) -> np.ndarray:
    return random_codes(N_ARCHETYPES, np.random.default_rng([seed, 1]))


def family_centres(n: int, arch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    base = arch[rng.integers(0, len(arch), n)]
    return base ^ np.packbits(rng.random((n, BITS)) < CENTRE_FLIP, axis=1)


def background(n: int, seed: int, label: str = "pool") -> np.ndarray:
    """n codes in families (sizes geometric, mean ~4, capped): a pool without planted rows."""
    out = np.empty((n, BITS // 8), dtype=np.uint8)
    arch = archetypes(seed)
    n_chunks = max(1, -(-n // CHUNK))
    for c, rng in enumerate(_rngs(seed, label, n_chunks)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        m = hi - lo
        sizes = np.minimum(rng.geometric(0.25, size=m), MAX_FAMILY)  # more than enough families for m rows
        fam = np.repeat(np.arange(m), sizes)[:m]  # row -> family (families may straddle no chunk border)
        centres = family_centres(int(fam[-1]) + 1, arch, rng)
        out[lo:hi] = flip_random(centres[fam], rng.integers(1, MEMBER_FLIPS + 1, m), rng)
    return out


def evaluation_benchmark(n_eval: int, n_pool: int, seed: int, per_distance: int = 500,
                         hard_negatives: int = 100_000) -> dict[str, np.ndarray]:
    """Evaluation hashes and a pool with planted near duplicates, decoys and hard negatives.

    Returns eval (n_eval, 32), pool (n_pool, 32) and, for the planted rows, arrays pool_row, eval_row,
    distance, kind (0 planted near duplicate 0..10, 1 decoy 11..14, 2 hard negative 15..40)."""
    rng = np.random.default_rng([seed, 2])
    arch = archetypes(seed)
    # evaluation families: sizes 1..3; siblings exactly 26..40 bits from the family's first image
    sizes = rng.integers(1, 4, size=n_eval)
    fam = np.repeat(np.arange(n_eval), sizes)[:n_eval]
    first = np.r_[True, fam[1:] != fam[:-1]]
    ev = family_centres(int(fam[-1]) + 1, arch, rng)[fam]
    sib = ~first
    ev[sib] = flip_exact(ev[sib], rng.integers(26, 41, int(sib.sum())), rng)
    near_d = np.repeat(np.arange(0, 11), per_distance)
    decoy_d = np.repeat(np.arange(11, 15), per_distance)
    hard_d = rng.integers(15, 41, hard_negatives)
    dist = np.concatenate([near_d, decoy_d, hard_d])
    kind = np.concatenate([np.zeros(near_d.size, np.int8), np.ones(decoy_d.size, np.int8),
                           np.full(hard_d.size, 2, np.int8)])
    eval_row = rng.integers(0, n_eval, dist.size)
    planted = flip_exact(ev[eval_row], dist, rng)
    n_bg = n_pool - planted.shape[0]
    if n_bg < 0:
        raise ValueError(f"n_pool={n_pool} is smaller than the {planted.shape[0]} planted rows")
    pool = np.empty((n_pool, BITS // 8), dtype=np.uint8)
    pool_row = rng.permutation(n_pool)[:planted.shape[0]]  # planted rows scattered through the pool
    is_bg = np.ones(n_pool, dtype=bool)
    is_bg[pool_row] = False
    pool[is_bg] = background(n_bg, seed, "pool")
    pool[pool_row] = planted
    return {"eval": ev, "pool": pool, "pool_row": pool_row, "eval_row": eval_row,
            "distance": dist, "kind": kind}


def pool_with_duplicates(n: int, seed: int, exact_fraction: float = 0.03, blank: int = 20_000,
                         near_blank: int = 5_000, return_blank: bool = False):
    """A pool for the within-pool search: background families, plus `exact_fraction` of byte-identical
    hashes (re-hosted copies), `blank` identical hashes of one blank picture and `near_blank` hashes
    within 1..3 bits of it (a dense bucket of near-identical codes). With return_blank: (codes, the blank
    hash as a (1, 32) array)."""
    rng = np.random.default_rng([seed, 3])
    n_exact = int(n * exact_fraction)
    n_bg = n - n_exact - blank - near_blank
    codes = np.empty((n, BITS // 8), dtype=np.uint8)
    codes[:n_bg] = background(n_bg, seed, "within")
    codes[n_bg:n_bg + n_exact] = codes[rng.integers(0, n_bg, n_exact)]
    blank_code = random_codes(1, rng)
    codes[n_bg + n_exact:n_bg + n_exact + blank] = blank_code
    codes[n - near_blank:] = flip_exact(np.repeat(blank_code, near_blank, 0), rng.integers(1, 4, near_blank), rng)
    codes = codes[rng.permutation(n)]
    return (codes, blank_code) if return_blank else codes


def _popcount_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.view(np.uint64), b.view(np.uint64))).sum(axis=-1)


def main() -> None:
    import time

    t = time.perf_counter()
    bg = background(200_000, 0)
    print(f"200,000 background codes in {time.perf_counter() - t:.2f} s; ones per code "
          f"{np.unpackbits(bg[:10000], axis=1).sum(1).mean():.1f}")
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(bg), 100_000), rng.integers(0, len(bg), 100_000)
    d = _popcount_rows(bg[i], bg[j])
    print(f"random pairs: distance mean {d.mean():.1f} sd {d.std():.1f}")
    d1 = _popcount_rows(bg[:-1], bg[1:])  # neighbours: often one family
    print("adjacent rows (same family when close):", np.percentile(d1, [5, 25, 50]).tolist(),
          f"share <= 10: {np.mean(d1 <= 10):.3f}")


if __name__ == "__main__":
    main()
