import textwrap
from pathlib import Path

import pytest

from conftest import ROOT
from tol_builder.config import load_workflow
from tol_builder.errors import ConfigError
from tol_builder.manifest import load_manifest


def _wf(tmp_path: Path, body: str) -> Path:
    (tmp_path / "m.toml").write_text('source = "eol"\n[[files]]\nname = "media_manifest.tgz"\nrole = "metadata"\n')
    p = tmp_path / "wf.toml"
    p.write_text(textwrap.dedent(body))
    return p


def test_shipped_workflows_and_manifests_load():
    wf = load_workflow(ROOT / "workflows" / "tol10m.toml")
    assert [s.name for s in wf.sources] == ["inat21", "bioscan1m", "eol"]
    assert wf.seed == 17 and wf.shards.resize_mode == "squash"
    inat = load_manifest(ROOT / "manifests" / "inat21.toml")
    f = inat.one("metadata", "train")
    assert inat.url(f) == "https://ml-inat-competition-datasets.s3.amazonaws.com/2021/train.json.tar.gz"
    assert f.md5 == "38a7bb733f7a09214d44293460ec0021"
    assert inat.one("media", "val").md5 == "f6f6e0e242e3d4c9569ba56400938afc"
    bioscan = load_manifest(ROOT / "manifests" / "bioscan1m.toml")
    assert bioscan.one("metadata").md5 == "dec3bb23870a35e2e13bc17a5809c901"
    assert bioscan.one("media").md5 == "fe1175815742db14f7372d505345284a"
    eol = load_manifest(ROOT / "manifests" / "eol.toml")
    assert eol.url(eol.one("metadata")) == "https://eol.org/data/media_manifest.tgz"
    load_workflow(ROOT / "workflows" / "demo.toml")


def test_unknown_key_names_file_key_and_expectation(tmp_path):
    p = _wf(tmp_path, """
        name = "x"
        out = "o"
        [fetch]
        max_sid = 5
        [[sources]]
        name = "eol"
        manifest = "m.toml"
        """)
    with pytest.raises(ConfigError) as e:
        load_workflow(p)
    msg = str(e.value)
    assert str(p) in msg and "fetch.max_sid" in msg and "max_side" in msg


@pytest.mark.parametrize("section,line,key,expected", [
    ("fetch", "max_side = 'big'", "fetch.max_side", "an integer"),
    ("fetch", "per_host_rps = true", "fetch.per_host_rps", "a number"),
    ("shards", "resize_mode = 'stretch'", "shards.resize_mode", "'squash'"),
    ("cluster", "processes = 1", "cluster.processes", "true or false"),
    ("taxonomy", "authority_order = 'itis'", "taxonomy.authority_order", "a list of a string"),
])
def test_wrong_value_types(tmp_path, section, line, key, expected):
    p = _wf(tmp_path, f"""
        name = "x"
        out = "o"
        [[sources]]
        name = "eol"
        manifest = "m.toml"
        [{section}]
        {line}
        """)
    with pytest.raises(ConfigError) as e:
        load_workflow(p)
    assert key in str(e.value) and expected in str(e.value)


def test_missing_required_and_bad_stage_and_missing_manifest(tmp_path):
    p = _wf(tmp_path, 'name = "x"\nsources = []\n')
    with pytest.raises(ConfigError, match="'out'.*required"):
        load_workflow(p)
    p = _wf(tmp_path, 'name = "x"\nout = "o"\nsources = []\nstages = ["ingest", "download"]\n')
    with pytest.raises(ConfigError, match=r"stages\[1\]"):
        load_workflow(p)
    p = _wf(tmp_path, 'name = "x"\nout = "o"\n[[sources]]\nname = "eol"\nmanifest = "nope.toml"\n')
    with pytest.raises(ConfigError, match=r"sources\[0\]\.manifest"):
        load_workflow(p)
    p = _wf(tmp_path, 'name = "x"\nout = "o"\n[[sources]]\nname = "eol"\nmanifest = "m.toml"\n'
                      '[[sources]]\nname = "eol"\nmanifest = "m.toml"\n')
    with pytest.raises(ConfigError, match=r"sources\[1\]\.id"):
        load_workflow(p)


def test_syntax_error_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("name = \n")
    with pytest.raises(ConfigError) as e:
        load_workflow(p)
    assert str(p) in str(e.value) and "valid TOML" in str(e.value)


def test_manifest_validation(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('source = "x"\n[[files]]\nname = "a"\nrole = "metadata"\nmd5 = "xyz"\n')
    with pytest.raises(ConfigError, match=r"files\[0\]\.md5.*32 hex"):
        load_manifest(p)
    p.write_text('source = "x"\n[[files]]\nname = "a"\nrole = "images"\n')
    with pytest.raises(ConfigError, match=r"files\[0\]\.role"):
        load_manifest(p)
    p.write_text('source = "x"\n[[files]]\nname = "sub/a.csv"\nrole = "metadata"\n')
    with pytest.raises(ConfigError, match=r"files\[0\]\.name.*single file name"):  # a name is a cache path
        load_manifest(p)
    p.write_text('source = "x"\n[[files]]\nname = "a.csv"\nurl = "sub/a.csv"\nrole = "metadata"\n')
    m = load_manifest(p)
    assert m.url(m.files[0]) == str(tmp_path / "sub" / "a.csv")


def test_source_options_validated_by_the_reader(tmp_path, counting_workflow):
    from tol_builder.build import build

    wf = load_workflow(counting_workflow("partitions = 'many'"))
    with pytest.raises(ConfigError) as e:
        build(wf, progress=False)
    assert "sources[0].options.partitions" in str(e.value) and "an integer" in str(e.value)


def test_cluster_example_makes_a_slurm_job_script():
    from tol_builder.cluster import jobqueue_cluster

    wf = load_workflow(ROOT / "workflows" / "cluster-example.toml")
    assert wf.cluster.jobqueue == "slurm" and wf.cluster.jobs == 8
    cluster = jobqueue_cluster(wf.cluster)  # not scaled: nothing is submitted
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cpu" in script and "#SBATCH -t 08:00:00" in script and "--nworkers 4" in script


def test_a_build_without_sources_fails_before_any_work(tmp_path):
    from tol_builder.build import build

    wf = load_workflow(ROOT / "workflows" / "demo.toml")
    with pytest.raises(ConfigError, match="sources.*at least one"):
        build(wf, out=tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "_markers").exists()
