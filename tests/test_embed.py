"""`tol embed` (issue 21 item 6): image embeddings of a benchmark task, an image folder and a shard split as
parquet, read back by DuckDB and polars; the t-SNE PNG (scikit-learn), capped and seeded."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from conftest import run_cli
from test_benchmarks import RS_TAXA, make_fixture_benchmarks
from tol_builder.records import RANKS

WIDTH = 128  # tol-tiny's embed_dim


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed-bench")
    make_fixture_benchmarks(root)
    return root


def _model_and_features(paths):
    from tol_builder.eval import features as F

    model, _ = F.load(F.parse_models("random:tol-tiny")[0])
    return F.encode_images(model, paths)[0]


@pytest.mark.slow  # a model's forward passes over many images (20-70 s at load 6-9)
def test_embed_a_benchmark_task_reads_back_in_duckdb_and_polars_and_plots(bench, tmp_path):
    from tol_builder.eval import tasks as T

    out, png = tmp_path / "rare.parquet", tmp_path / "rare.png"
    manifest = bench / "manifests" / "fix_rare.toml"
    r = run_cli("embed", "random:tol-tiny", str(manifest), "--images-root", str(bench), "--out", str(out),
                "--plot", str(png), "--color-by", "order", "--quiet")
    assert r.returncode == 0, r.stderr
    data = T.read_task(T.load_task(manifest), bench)
    n = len(data.paths)
    # DuckDB: a fixed-size list of the model's width, one row per image, the ranks of each image's class
    con = duckdb.connect()
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{out}'))"
                             ).fetchall())
    # parquet has no fixed-size list type: DuckDB reads a list of floats, every one of the width; Arrow readers
    # get the fixed-size list back from the Arrow schema stored in the file
    assert types["embedding"] == "FLOAT[]"
    assert con.execute(f"SELECT min(len(embedding)), max(len(embedding)) FROM read_parquet('{out}')").fetchone() \
        == (WIDTH, WIDTH)
    import pyarrow.parquet as pq

    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float32(), WIDTH)
    assert set(types) == {"uid", "path", "label", *RANKS, "embedding"}
    assert con.execute(f"SELECT count(*), count(DISTINCT label) FROM read_parquet('{out}')").fetchone() == (n, 3)
    orders = {row[0] for row in con.execute(f'SELECT DISTINCT "order" FROM read_parquet(\'{out}\')').fetchall()}
    assert orders == {t[3] for t in RS_TAXA}
    # polars: the same column as an Array of the width; the rows are the task's images in order, their
    # embeddings the feature code's (features.encode_images), unit length
    df = pl.read_parquet(out)
    assert df.schema["embedding"] == pl.Array(pl.Float32, WIDTH) and df.height == n
    assert df["path"].to_list() == [str(p) for p in data.paths]
    assert df["label"].to_list() == [data.classes[i] for i in data.y]
    emb = df["embedding"].to_numpy()
    assert emb.shape == (n, WIDTH)
    np.testing.assert_allclose(emb, _model_and_features(data.paths), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the t-SNE: a real PNG
    from PIL import Image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (800, 800)
    assert "t-SNE of 18 of 18 points, 3 order groups" in r.stderr.replace("\n", " ")


@pytest.mark.slow  # a model's forward passes over many images (20-70 s at load 6-9)
def test_embed_an_image_folder_labels_by_sub_folder_and_counts_broken_images(bench, tmp_path):
    out = tmp_path / "birds.parquet"
    folder = bench / "birds" / "test"
    broken = tmp_path / "imgs"
    import shutil

    shutil.copytree(folder, broken)
    (broken / "ALBATROSS" / "broken.jpg").write_bytes(b"not a jpeg")
    r = run_cli("embed", "random:tol-tiny", str(broken), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    df = pl.read_parquet(out)
    assert df.height == 9 and sorted(set(df["label"])) == ["ABBOTTS BABBLER", "AFRICAN CROWNED CRANE", "ALBATROSS"]
    assert df["species"].null_count() == 9  # no ranks known for a plain folder
    assert "1 undecodable" in r.stderr and "broken.jpg" not in " ".join(df["path"])


@pytest.mark.slow  # a model's forward passes over many images (20-70 s at load 6-9)
def test_embed_a_shard_split_keeps_uids_and_ranks(tmp_path):
    import json
    import tarfile

    from train_fixtures import write_shards

    split = write_shards(tmp_path / "build", "val", 1, per_shard=8)
    out, png = tmp_path / "val.parquet", tmp_path / "val.png"
    r = run_cli("embed", "random:tol-tiny", str(split), "--out", str(out), "--plot", str(png), "--color-by",
                "family", "--max-points", "10", "--quiet")
    assert r.returncode == 0, r.stderr
    metas = {}
    for tar in sorted(split.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".json"):
                    doc = json.loads(t.extractfile(m).read())
                    metas[doc["uid"]] = doc
    df = duckdb.sql(f"SELECT uid, family, species, len(embedding) AS w FROM read_parquet('{out}')").pl()
    assert df.height == len(metas) > 10 and set(df["w"]) == {WIDTH}
    for row in df.iter_rows(named=True):
        assert row["family"] == metas[row["uid"]]["family"] and row["species"] == metas[row["uid"]]["species"]
    import pyarrow.parquet as pq

    assert pq.ParquetFile(out).metadata.num_row_groups == len(list(split.glob("*.tar")))  # a tar at a time
    # capped: a seeded sample of 10 of the split's points
    assert f"t-SNE of 10 of {len(metas)} points" in r.stderr.replace("\n", " ") and png.stat().st_size > 0


@pytest.mark.slow  # a model's forward passes over many images (20-70 s at load 6-9)
def test_tsne_sample_is_seeded_and_colour_is_checked(bench, tmp_path):
    from tol_builder.errors import TolError
    from tol_builder.eval.embed import plot_tsne

    out = tmp_path / "ma.parquet"
    r = run_cli("embed", "random:tol-tiny", str(bench / "manifests" / "fix_ma.toml"), "--images-root", str(bench),
                "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    a = plot_tsne(out, tmp_path / "a.png", max_points=12, seed=1)
    b = plot_tsne(out, tmp_path / "b.png", max_points=12, seed=1)
    assert a["points"] == 12 and a["of"] == 24 and (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png"
                                                                                         ).read_bytes()
    with pytest.raises(TolError, match="--color-by: one of label, kingdom"):
        plot_tsne(out, tmp_path / "c.png", color_by="colour")
    r = run_cli("embed", "random:tol-tiny", "no_such_task", "--out", str(tmp_path / "x.parquet"), "--quiet")
    assert r.returncode == 1 and "no benchmark 'no_such_task'" in r.stderr


def test_embed_in_chunks_writes_the_same_rows(bench, tmp_path):
    import pyarrow.parquet as pq

    from tol_builder.eval import features as F
    from tol_builder.eval.embed import embed

    spec = F.parse_models("random:tol-tiny")[0]
    whole = embed(spec, str(bench / "meta_album" / "FIX_Mini"), tmp_path / "whole.parquet")
    parts = embed(spec, str(bench / "meta_album" / "FIX_Mini"), tmp_path / "parts.parquet", chunk=5)
    assert whole["rows"] == parts["rows"] == 24 and whole["kind"] == "folder"
    assert pq.ParquetFile(tmp_path / "parts.parquet").metadata.num_row_groups == 5  # 24 images, 5 a chunk
    a, b = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(tmp_path / "parts.parquet")
    assert a.column("path").to_pylist() == b.column("path").to_pylist()
    np.testing.assert_allclose(a.column("embedding").combine_chunks().values.to_numpy(),
                               b.column("embedding").combine_chunks().values.to_numpy(), atol=1e-6)
