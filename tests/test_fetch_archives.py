"""Archives: range-resumed downloads equal to the original byte for byte, checksums that name both sums,
local copies used in place, zip members by random access, tar members in one stream, escaping members
(`..`, absolute, links) refused."""

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest_fetch import fault_server  # noqa: F401  (fixture)
from tol_builder.config import FetchConfig
from tol_builder.errors import ChecksumError, InputError
from tol_builder.fetch import archives

CFG = FetchConfig(backoff_base=0.01, backoff_max=0.05, archive_attempts=5, read_timeout=5)


@pytest.fixture
def blob() -> bytes:
    return os.urandom(3_000_000)


def test_interrupted_download_resumes_with_range_and_equals_the_original(fault_server, blob, tmp_path):
    fault_server.files["train.tar.gz"] = blob
    fault_server.cut_after["train.tar.gz"] = [700_000, 800_000]  # two transfers die mid-way
    uri = f"{fault_server.url}/file/train.tar.gz"
    path = archives.localize(uri, tmp_path, md5=hashlib.md5(blob).hexdigest(), size=len(blob), cfg=CFG)
    assert path.read_bytes() == blob
    ranges = [h.get("Range") for _, p, h in fault_server.log]
    assert ranges[0] is None and ranges[1] == "bytes=700000-" and ranges[2] == "bytes=1500000-"
    assert all(h.get("If-Range") for _, _, h in fault_server.log[1:])  # the validator guards the resume
    assert not list(tmp_path.glob("*.part"))
    # done is done: a second call does not download again
    fault_server.reset_counts()
    assert archives.localize(uri, tmp_path, md5=hashlib.md5(blob).hexdigest(), cfg=CFG) == path
    assert fault_server.log == []


def test_a_killed_download_continues_from_what_it_left(fault_server, blob, tmp_path):
    fault_server.files["a.zip"] = blob
    uri = f"{fault_server.url}/file/a.zip"
    dest = tmp_path / archives.archive_file_name(uri)
    part = dest.with_name(dest.name + ".part")
    # what a process killed after 1 MB leaves behind: the partial file and the validators of the response
    part.write_bytes(blob[:1_000_000])
    import urllib.request

    with urllib.request.urlopen(uri) as r:  # the validator the first (killed) transfer saw
        etag = r.headers["ETag"]
    part.with_name(part.name + ".json").write_text(json.dumps({"etag": etag, "total": len(blob)}))
    fault_server.reset_counts()
    path = archives.localize(uri, tmp_path, sha256=hashlib.sha256(blob).hexdigest(), cfg=CFG)
    assert path.read_bytes() == blob
    assert [h.get("Range") for _, _, h in fault_server.log] == ["bytes=1000000-"]


def test_a_changed_remote_file_restarts_instead_of_mixing_versions(fault_server, blob, tmp_path):
    fault_server.files["a.zip"] = blob
    uri = f"{fault_server.url}/file/a.zip"
    part = tmp_path / "x.part"
    part.write_bytes(b"old version" * 500)  # half of the old version had arrived
    part.with_name(part.name + ".json").write_text(json.dumps({"etag": '"old"', "total": 11000}))
    archives.download_resumable(uri, part, cfg=CFG)
    assert part.read_bytes() == blob


def test_checksum_mismatch_names_the_file_and_both_sums(fault_server, blob, tmp_path):
    fault_server.files["train.tar.gz"] = blob
    uri = f"{fault_server.url}/file/train.tar.gz"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as e:
        archives.localize(uri, tmp_path, md5=wrong, cfg=CFG)
    msg = str(e.value)
    assert uri in msg and wrong in msg and hashlib.md5(blob).hexdigest() in msg
    assert not (tmp_path / archives.archive_file_name(uri)).exists()  # never used as if it were right


def test_local_paths_and_file_urls_are_used_in_place_and_verified(blob, tmp_path):
    local = tmp_path / "copy" / "cropped_256.zip"
    local.parent.mkdir()
    local.write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    assert archives.localize(str(local), tmp_path / "cache", md5=md5) == local
    assert archives.localize(local.as_uri(), tmp_path / "cache", md5=md5) == local
    assert not (tmp_path / "cache").exists()  # nothing copied
    with pytest.raises(ChecksumError):
        archives.localize(str(local), tmp_path / "cache", md5="f" * 32)
    with pytest.raises(InputError, match="not found"):
        archives.localize(str(tmp_path / "absent.zip"), tmp_path / "cache")


def test_an_unavailable_archive_is_an_input_error(fault_server, tmp_path):
    with pytest.raises(InputError, match="HTTP 404"):
        archives.localize(f"{fault_server.url}/missing", tmp_path, cfg=CFG)
    with pytest.raises(InputError, match="scheme"):
        archives.localize("ftp://example.org/a.zip", tmp_path, cfg=CFG)


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.SYMTYPE
            ti.linkname = target
            tf.addfile(ti)
    return path


def test_tar_member_with_dotdot_is_refused(tmp_path):
    path = _tar(tmp_path / "t.tar.gz", {"train/a.jpg": b"A" * 10, "../evil.jpg": b"E", "/etc/abs.jpg": b"X",
                                        "./train/b.jpg": b"B" * 5, "train/x/../../escape.jpg": b"Z"},
                links={"train/link.jpg": "../../etc/passwd"})
    refused = []
    got = {m.raw_name: (data, err.error_class if err else None)
           for m, data, err in archives.iter_tar(path, lambda m: True, 1000, lambda m, why: refused.append(why))}
    assert got["train/a.jpg"] == (b"A" * 10, None)
    assert got["./train/b.jpg"] == (b"B" * 5, None)  # a harmless ./ prefix is normalised, not refused
    for name in ("../evil.jpg", "/etc/abs.jpg", "train/x/../../escape.jpg", "train/link.jpg"):
        assert got[name] == (None, "unsafe_member"), name
    assert len(refused) == 4 and any("link" in r for r in refused)
    assert archives.safe_member_name("./train/b.jpg") == "train/b.jpg"


def test_tar_streams_once_and_reads_only_wanted_members(tmp_path):
    path = _tar(tmp_path / "t.tar", {f"d/{i}.jpg": bytes([i]) * 100 for i in range(50)}, mode="w")
    wanted = {"d/3.jpg", "d/40.jpg"}
    got = {m.name: data for m, data, err in archives.iter_tar(path, lambda m: m.name in wanted, 1000)}
    assert got == {"d/3.jpg": b"\x03" * 100, "d/40.jpg": b"\x28" * 100}
    big = list(archives.iter_tar(path, lambda m: m.name == "d/1.jpg", 50))
    assert big[0][2].error_class == "too_large"


def test_a_corrupt_tar_is_an_input_error(tmp_path):
    path = _tar(tmp_path / "t.tar.gz", {f"d/{i}.jpg": os.urandom(5000) for i in range(20)})
    path.write_bytes(path.read_bytes()[:40_000])
    with pytest.raises(InputError) as e:
        list(archives.iter_tar(path, lambda m: True, 10_000))
    assert str(path) in str(e.value)


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bioscan/images/cropped_256/part1/1.jpg", b"stored" * 100, compress_type=zipfile.ZIP_STORED)
        z.writestr("bioscan/images/cropped_256/part1/2.jpg", b"deflated" * 100, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("bioscan/images/cropped_256/part2/3.jpg", b"bz" * 100, compress_type=zipfile.ZIP_BZIP2)
        with z.open("bioscan/images/cropped_256/part2/4.jpg", "w", force_zip64=True) as f:
            f.write(b"zip64" * 100)
        z.writestr("../evil.jpg", b"evil")
        link = zipfile.ZipInfo("bioscan/link.jpg")
        link.create_system = 3
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "part1/1.jpg")
    return path


def test_zip_members_by_random_access_match_zipfile(tmp_path):
    path = _zip(tmp_path / "cropped_256.zip")
    assert archives.sniff(path) == "zip"
    entries = {e["raw_name"]: e for b in archives.zip_index(path) for e in b.to_pylist()}
    ref = zipfile.ZipFile(path)
    with archives.ZipReader(path) as zr:
        for name in ref.namelist():
            e = entries[name]
            if name in ("../evil.jpg", "bioscan/link.jpg"):
                with pytest.raises(archives.MemberError) as err:
                    zr.read(e, 10_000)
                assert err.value.error_class == "unsafe_member"
            else:
                assert zr.read(e, 10_000) == ref.read(name)
        with pytest.raises(archives.MemberError) as err:
            zr.read(entries["bioscan/images/cropped_256/part1/2.jpg"], 100)
        assert err.value.error_class == "too_large"
    assert entries["../evil.jpg"]["name"] is None and entries["bioscan/link.jpg"]["kind"] == "link"


def test_zip_crc_damage_is_a_member_error(tmp_path):
    path = _zip(tmp_path / "z.zip")
    e = next(e for b in archives.zip_index(path) for e in b.to_pylist() if e["raw_name"].endswith("part1/1.jpg"))
    raw = bytearray(path.read_bytes())
    raw[e["offset"] + 30 + len(e["raw_name"]) + 5] ^= 0xFF  # flip a byte of the stored data
    path.write_bytes(bytes(raw))
    with archives.ZipReader(path) as zr, pytest.raises(archives.MemberError) as err:
        zr.read(e, 10_000)
    assert err.value.error_class == "member_corrupt"


def test_zip64_central_directory_with_many_entries(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as z:  # over 65535 entries: zip64 end records
        for i in range(66_000):
            z.writestr(f"p/{i}.jpg", str(i).encode())
    rows = [r for b in archives.zip_index(path, batch_rows=10_000) for r in b.to_pylist()]
    assert len(rows) == 66_000 and rows[-1]["name"] == "p/65999.jpg"
    with archives.ZipReader(path) as zr:
        assert zr.read(rows[65_999], 100) == b"65999"


def test_sniff_tells_formats_by_content(tmp_path):
    assert archives.sniff(_tar(tmp_path / "x.bin", {"a": b"1"})) == "tar"
    assert archives.sniff(_tar(tmp_path / "y.bin", {"a": b"1"}, mode="w")) == "tar"
    assert archives.sniff(_tar(tmp_path / "z.bin", {"a": b"1"}, mode="w:bz2")) == "tar"
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"<html>not an archive</html>")
    with pytest.raises(InputError, match="not a zip or tar"):
        archives.sniff(junk)
