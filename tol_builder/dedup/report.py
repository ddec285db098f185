"""`tol dedup report DIR`: one self-contained HTML page to audit the near-duplicate threshold by eye.

Each near match (PDQ) stands beside the evaluation image it matched, nearest first, with its distance; below,
near copies inside the pool beside their cluster's representative. Thumbnails are embedded (data: URIs), so
the page is one file that opens anywhere. At most `max_pairs` pairs per section; the page says how many it
left out and how to list them all with `tol query`. Reads the catalog only; writes only the page.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from .. import catalog
from ..errors import TolError

THUMB = 160


def _thumb(jpeg: bytes | None) -> str:
    if not jpeg:
        return '<div class="missing">no image</div>'
    img = Image.open(io.BytesIO(jpeg))
    img.draft("RGB", (THUMB, THUMB))
    img = img.convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _jpegs(out: Path, view: str, uids: list[str]) -> dict[str, bytes]:
    if not uids:
        return {}
    t = catalog.query(out, f"SELECT uid, jpeg FROM {view} WHERE list_contains($uids, uid)", {"uids": uids})
    return dict(zip(t.column("uid").to_pylist(), t.column("jpeg").to_pylist()))


def _hamming(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _pair_rows(left: dict, right: dict, rows: list[dict], caption) -> str:
    cells = []
    for r in rows:
        cells.append(f"""<tr><td class="d">{r['distance']}</td><td>{_thumb(left.get(r['uid']))}</td>
<td>{_thumb(right.get(r['other']))}</td><td class="meta">{caption(r)}</td></tr>""")
    return "\n".join(cells)


def write_report(out: Path, path: Path | None = None, max_pairs: int = 500) -> tuple[Path, dict[str, int]]:
    """Write the page; returns its path and how many pairs it shows and leaves out per section."""
    out = Path(out)
    path = Path(path) if path is not None else out / "dedup" / "report.html"
    try:
        summary = catalog.query(out, "SELECT * FROM dedup_summary").to_pylist()
    except TolError:
        raise
    except Exception:
        raise TolError(f"{out}: no dedup results in the catalog (run the dedup stage: tol build WORKFLOW "
                       "--stages dedup)") from None
    e = esc = html.escape
    near_total = catalog.query(out, "SELECT count(*) AS n FROM exclusions WHERE starts_with(method, 'pdq') AND "
                                    "eval_uid IS NOT NULL AND reason = 'near_duplicate'").column("n")[0].as_py()
    # a build whose dedup stage ran before exclusions had `variant` (issue 22) still gets its page
    has_variant = "variant" in catalog.query(out, "SELECT * FROM exclusions LIMIT 0").column_names
    near = catalog.query(out, f"""SELECT x.uid, x.eval_uid AS other, x.eval_set, x.eval_id, x.distance, r.source,
            r.source_id, x.method, {'x.variant' if has_variant else 'NULL::VARCHAR AS variant'}
        FROM exclusions x JOIN records r USING (uid)
        WHERE starts_with(x.method, 'pdq') AND x.reason = 'near_duplicate' ORDER BY x.distance, x.uid, x.eval_uid
        LIMIT $n""",
                         {"n": max_pairs}).to_pylist()
    pool_total = catalog.query(out, "SELECT count(*) AS n FROM pool_duplicates WHERE method = 'pdq' AND uid <> "
                                    "cluster_id").column("n")[0].as_py()
    pool = catalog.query(out, """SELECT d.uid, d.cluster_id AS other, r.source, r.source_id, m.pdq AS a, c.pdq AS b,
            rc.source AS other_source FROM pool_duplicates d JOIN records r USING (uid)
        JOIN media m ON m.uid = d.uid JOIN media c ON c.uid = d.cluster_id JOIN records rc ON rc.uid = d.cluster_id
        WHERE d.method = 'pdq' AND d.uid <> d.cluster_id ORDER BY d.distance, d.uid LIMIT $n""",
                         {"n": max_pairs}).to_pylist()
    for r in pool:
        r["distance"] = _hamming(r["a"], r["b"])
    pool.sort(key=lambda r: (r["distance"] if r["distance"] is not None else 999, r["uid"]))
    pool_jpegs = _jpegs(out, "media", [r["uid"] for r in near + pool] + [r["other"] for r in pool])
    eval_jpegs = _jpegs(out, "eval_media", [r["other"] for r in near]) if near else {}
    counts = "\n".join(f"<tr><td>{esc(str(s['reason']))}</td><td>{esc(str(s['eval_set'] or ''))}</td>"
                       f"<td>{esc(str(s['method']))}</td><td>{s['images']:,}</td></tr>" for s in summary)
    left_near, left_pool = max(0, near_total - len(near)), max(0, pool_total - len(pool))

    def more(left: int, sql: str) -> str:
        if not left:
            return ""
        return (f'<p class="more">{left:,} more not shown (raise --max-pairs, or list them all: '
                f'<code>tol query {e(str(out))} "{e(sql)}"</code>)</p>')

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tol dedup report: {e(str(out))}</title>
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:middle;text-align:left}} td.d{{font-size:1.4em;
font-weight:bold;text-align:center}} img{{display:block;max-width:{THUMB}px;max-height:{THUMB}px}}
.meta{{font-size:.85em;font-family:monospace}} .missing{{width:{THUMB}px;color:#999}} .more{{color:#a40}}</style>
</head><body>
<h1>Duplicates of evaluation images: audit</h1>
<p>Build <code>{e(str(out))}</code>. Near matches are PDQ Hamming distances over 256 bits; the stage's threshold
decides what is excluded. Nearest first. A match through a variant of the evaluation image (mirrored, turned,
cropped, rotated, bordered, letterboxed: dedup/variants.py) names the variant: the pool image is compared with
the evaluation image so edited.</p>
<h2>Excluded images</h2>
<table><tr><th>reason</th><th>evaluation set</th><th>method</th><th>images</th></tr>{counts}</table>
<h2 id="near">Near matches: pool image beside the evaluation image ({len(near):,} of {near_total:,})</h2>
<table><tr><th>distance</th><th>pool image</th><th>evaluation image</th><th>ids</th></tr>
{_pair_rows(pool_jpegs, eval_jpegs, near, lambda r: f"pool {e(r['source'])}:{e(r['source_id'])}<br>uid {e(r['uid'])}<br>"
            f"eval {e(r['eval_set'])}:{e(r['eval_id'])}<br>matched {e(r['method'])}"
            + (f" (variant {e(r['variant'])})" if r.get("variant") else ""))}
</table>{more(left_near, "SELECT * FROM exclusions WHERE starts_with(method, 'pdq') ORDER BY distance")}
<h2 id="pool">Near copies inside the pool, beside their cluster's representative ({len(pool):,} of {pool_total:,})</h2>
<table><tr><th>distance</th><th>image</th><th>representative</th><th>ids</th></tr>
{_pair_rows(pool_jpegs, pool_jpegs, pool, lambda r: f"{e(r['source'])}:{e(r['source_id'])}<br>uid {e(r['uid'])}<br>"
            f"cluster {e(r['other'])} ({e(r['other_source'])})")}
</table>{more(left_pool, "SELECT * FROM pool_duplicates WHERE method = 'pdq' ORDER BY distance")}
</body></html>
"""
    from ..fileio import write_text_atomic

    write_text_atomic(path, page)
    return path, {"near_shown": len(near), "near_left_out": left_near, "pool_shown": len(pool),
                  "pool_left_out": left_pool}
