"""The artifact store: local paths and file:// on disk, s3:// against a real radosgw."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeslim.errors import StoreError
from kubeslim.store import open_store
from kubeslim.store.local import LocalStore
from kubeslim.store.s3 import S3Store
from tests.s3.plugin import S3Server

MiB = 2**20

# ---------------------------------------------------------------------------
# Local paths and file://
# ---------------------------------------------------------------------------


def test_local_round_trip_json_exists_delete(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "art"))
    store.write_bytes("convert/model.xml", b"<net/>")
    store.write_json("convert/result.json", {"stage": "convert", "ok": True})

    assert store.read_bytes("convert/model.xml") == b"<net/>"
    assert store.read_json("convert/result.json") == {"ok": True, "stage": "convert"}
    assert store.exists("convert/model.xml")
    assert not store.exists("convert")  # a directory is not an artifact
    assert store.uri("convert/model.xml") == f"file://{tmp_path}/art/convert/model.xml"
    store.delete("convert/model.xml")
    store.delete("convert/model.xml")  # deleting what is gone is fine
    assert not store.exists("convert/model.xml")


def test_local_missing_key_is_a_store_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    with pytest.raises(StoreError, match="no such artifact"):
        store.read_bytes("prune/result.json")
    with pytest.raises(StoreError, match="no such artifact"):
        store.download("prune/model.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_local_failed_write_leaves_old_content_and_no_temp_file(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.write_bytes("stage/model.bin", b"old")
    a_directory = tmp_path / "not-a-file"
    a_directory.mkdir()

    # The copy fails after the temporary file was made.
    with pytest.raises(OSError):
        store.upload(a_directory, "stage/model.bin")
    with pytest.raises(OSError):
        store.upload(a_directory, "stage/new.bin")

    assert store.read_bytes("stage/model.bin") == b"old"
    assert not store.exists("stage/new.bin")
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["model.bin"]


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    store = open_store(str(root))
    for key in ("../outside", "a/../../outside", "link/outside"):
        with pytest.raises(StoreError, match="escapes the store root"):
            store.write_bytes(key, b"x")
    assert not (tmp_path / "outside").exists()


def test_local_upload_tree(tmp_path: Path) -> None:
    src = tmp_path / "ir"
    (src / "sub").mkdir(parents=True)
    (src / "model.xml").write_text("<net/>")
    (src / "sub" / "model.bin").write_bytes(b"\x00\x01")
    store = open_store(str(tmp_path / "art"))

    uris = store.upload_tree(src, "convert/ir")

    assert uris == {
        "model.xml": store.uri("convert/ir/model.xml"),
        "sub/model.bin": store.uri("convert/ir/sub/model.bin"),
    }
    assert store.read_bytes("convert/ir/sub/model.bin") == b"\x00\x01"


def test_open_store_file_uri_plain_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_uri = open_store(f"file://{tmp_path}")
    by_path = open_store(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    relative = open_store("./art")

    assert isinstance(by_uri, LocalStore)
    assert by_uri.root == by_path.root == f"file://{tmp_path}"
    assert relative.root == f"file://{tmp_path}/art"
    by_uri.write_bytes("k", b"v")
    assert by_path.read_bytes("k") == b"v"
    with pytest.raises(StoreError, match=r"artifacts\.uri: expected a path, file:// or s3://"):
        open_store("gs://bucket/prefix")


def test_local_list_keys(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    for key in ("a/x", "a/b/y", "ab/w", "z"):
        store.write_bytes(key, b"1")

    assert store.list_keys() == ["a/b/y", "a/x", "ab/w", "z"]
    assert store.list_keys("a") == ["a/b/y", "a/x"]
    assert store.list_keys("missing") == []


# ---------------------------------------------------------------------------
# s3:// against radosgw
# ---------------------------------------------------------------------------

# Variables that could make botocore find credentials or settings other than
# the test server's.
_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> None:
    """Exactly the given AWS settings: no profiles, config files or metadata service."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A fresh bucket, with the server's credentials in the environment."""
    s3_env(monkeypatch, tmp_path, s3_server.env())
    yield s3_server.create_bucket()


@pytest.mark.s3
def test_s3_round_trip_json_exists_delete(bucket: str) -> None:
    store = open_store(f"s3://{bucket}/runs/one")
    assert isinstance(store, S3Store)

    store.write_bytes("convert/model.xml", b"<net/>")
    store.write_json("convert/result.json", {"stage": "convert"})

    assert store.read_bytes("convert/model.xml") == b"<net/>"
    assert store.read_json("convert/result.json") == {"stage": "convert"}
    assert store.uri("convert/model.xml") == f"s3://{bucket}/runs/one/convert/model.xml"
    assert store.exists("convert/model.xml")
    assert not store.exists("convert")  # a common prefix is not an object
    store.delete("convert/model.xml")
    store.delete("convert/model.xml")
    assert not store.exists("convert/model.xml")
    with pytest.raises(StoreError, match=r"runs/one/convert/model\.xml: no such artifact"):
        store.read_bytes("convert/model.xml")


@pytest.mark.s3
def test_s3_download_of_a_missing_key_leaves_no_local_file(bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{bucket}/p")
    with pytest.raises(StoreError, match="no such artifact"):
        store.download("prune/model.pt", tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.s3
def test_s3_multipart_upload_and_download(bucket: str, s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(f"s3://{bucket}/p", part_size=5 * MiB)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB))  # over the 2-part threshold: 3 parts

    store.upload(big, "prune/model.bin")
    store.download("prune/model.bin", tmp_path / "back.bin")

    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    # A multipart object's ETag ends in -<parts>; a single PUT's does not.
    head = s3_server.filesystem().call_s3("head_object", Bucket=bucket, Key="p/prune/model.bin")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == 12 * MiB

    store.write_bytes("prune/blob.bin", big.read_bytes())
    assert store.read_bytes("prune/blob.bin") == big.read_bytes()
    head = s3_server.filesystem().call_s3("head_object", Bucket=bucket, Key="p/prune/blob.bin")
    assert head["ETag"].strip('"').endswith("-3")


@pytest.mark.s3
def test_s3_failed_multipart_upload_leaves_no_object_and_no_upload(
    bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    # 1 MiB parts are below S3's 5 MiB minimum: every part uploads, then the
    # server refuses to complete the upload. The store must abort it.
    store = S3Store(f"s3://{bucket}/p", part_size=1 * MiB)
    data = tmp_path / "model.bin"
    data.write_bytes(os.urandom(3 * MiB))
    store.write_bytes("old.bin", b"previous version")

    with pytest.raises(StoreError, match="EntityTooSmall") as err:
        store.upload(data, "new.bin")
    with pytest.raises(StoreError, match="EntityTooSmall"):
        store.upload(data, "old.bin")

    assert "\n" not in str(err.value)
    assert not store.exists("new.bin")
    assert store.read_bytes("old.bin") == b"previous version"
    uploads = s3_server.filesystem().call_s3("list_multipart_uploads", Bucket=bucket)
    assert uploads.get("Uploads", []) == []


@pytest.mark.s3
def test_s3_upload_tree_and_keys_that_escape(bucket: str, tmp_path: Path) -> None:
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "model.xml").write_text("<net/>")
    (tmp_path / "ir" / "model.bin").write_bytes(b"\x01")
    store = open_store(f"s3://{bucket}/run")

    uris = store.upload_tree(tmp_path / "ir", "quantize/ir")

    assert uris == {
        "model.bin": f"s3://{bucket}/run/quantize/ir/model.bin",
        "model.xml": f"s3://{bucket}/run/quantize/ir/model.xml",
    }
    assert store.read_bytes("quantize/ir/model.bin") == b"\x01"
    for key in ("../other-run/x", "a/../../x", ""):
        with pytest.raises(StoreError, match="escapes the store root"):
            store.write_bytes(key, b"x")


@pytest.mark.s3
def test_s3_another_process_sees_writes_and_deletes_at_once(bucket: str) -> None:
    reader = open_store(f"s3://{bucket}/run")
    # Asked before the writes: nothing of these answers may be cached.
    assert not reader.exists("prune/result.json")
    assert reader.list_keys("prune") == []

    writer = (
        "import sys; from kubeslim.store import open_store;"
        "s = open_store(sys.argv[1]);"
        "s.write_json('prune/result.json', {'done': True}) if sys.argv[2] == 'write'"
        " else s.delete('prune/result.json')"
    )
    for action in ("write", "delete"):
        subprocess.run(
            [sys.executable, "-c", writer, f"s3://{bucket}/run", action], check=True, timeout=60
        )
        if action == "write":
            assert reader.exists("prune/result.json")
            assert reader.read_json("prune/result.json") == {"done": True}
            assert reader.list_keys("prune") == ["prune/result.json"]
        else:
            assert not reader.exists("prune/result.json")
            assert reader.list_keys("prune") == []


@pytest.mark.s3
def test_s3_missing_credentials_is_one_line(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = s3_server.env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    s3_env(monkeypatch, tmp_path, env)

    with pytest.raises(StoreError) as err:
        open_store("s3://b/p")

    assert str(err.value) == (
        "artifacts.uri s3://b/p: no S3 credentials: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or an IAM role)"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    with pytest.raises(StoreError, match=r"^artifacts\.uri s3://b/p: .*AWS_SECRET_ACCESS_KEY"):
        open_store("s3://b/p")


@pytest.mark.s3
def test_s3_wrong_secret_and_missing_bucket_are_one_line(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = open_store("s3://no-such-bucket-kubeslim/p")
    for call in (lambda: missing.exists("k"), lambda: missing.write_bytes("k", b"x")):
        with pytest.raises(StoreError, match="bucket 'no-such-bucket-kubeslim' does not exist"):
            call()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    denied = open_store(f"s3://{bucket}/p")
    for call in (lambda: denied.exists("k"), lambda: denied.write_bytes("k", b"x")):
        with pytest.raises(StoreError, match=r"access denied .*AWS_SECRET_ACCESS_KEY") as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.s3
def test_s3_list_keys_pages_and_prefixes(bucket: str) -> None:
    store = S3Store(f"s3://{bucket}/run", page_size=2)  # several pages for five keys
    for key in ("a/x", "a/b/y", "a/.partial", "ab/w", "z"):
        store.write_bytes(key, b"1")
    S3Store(f"s3://{bucket}/other-run").write_bytes("a/x", b"1")

    assert store.list_keys() == ["a/b/y", "a/x", "ab/w", "z"]
    assert store.list_keys("a") == ["a/b/y", "a/x"]
    assert store.list_keys("missing") == []
    assert S3Store(f"s3://{bucket}").list_keys("run/a/b") == ["run/a/b/y"]


@pytest.mark.s3
def test_s3_checkpoint_uri_is_fetched_to_the_cache(
    bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kubeslim.store.cache import fetch

    monkeypatch.setenv("KUBESLIM_CACHE", str(tmp_path / "cache"))
    open_store(f"s3://{bucket}").write_bytes("models/baseline.pt", b"weights")

    local = fetch(f"s3://{bucket}/models/baseline.pt")

    assert local.read_bytes() == b"weights"
    assert (tmp_path / "cache") in local.parents
    with pytest.raises(StoreError, match="no such artifact"):
        fetch(f"s3://{bucket}/models/missing.pt")


@pytest.mark.s3
def test_s3_prefix_is_mirrored_for_image_folders(
    bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kubeslim.store.cache import mirror_prefix

    monkeypatch.setenv("KUBESLIM_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    for name in ("cat/1.png", "cat/2.png", "dog/1.png"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(name.encode())
    store = open_store(f"s3://{bucket}/datasets/pets")
    store.upload_tree(tree, "")

    local = mirror_prefix(store)

    found = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert found == ["cat/1.png", "cat/2.png", "dog/1.png"]
    assert (local / "dog" / "1.png").read_bytes() == b"dog/1.png"
