"""Stages with s3:// artifacts, as separate processes, against the real radosgw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubeslim.store.s3 import S3Store
from tests.s3.plugin import S3Server

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parent.parent

# A small CNN (tests/s3/tiny_model.py) on scikit-learn's 8x8 digits: convert and
# quantize take seconds.
MANIFEST = """\
apiVersion: kubeslim.dev/v1alpha1
kind: ModelOptimization
metadata:
  name: s3-tiny
spec:
  model:
    entryPoint: tests.s3.tiny_model:tiny_cnn
    numClasses: 10
    inputShape: [1, 8, 8]
  dataset:
    name: digits
    calibrationSize: 32
  pruning:
    enabled: false
  quantization:
    subsetSize: 32
  benchmark:
    enabled: false
"""

NO_CREDENTIALS = (
    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an IAM role)"
)


def kubeslim(tmp_path: Path, aws: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`kubeslim ARGS` in its own process, with exactly the given AWS settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_EC2_METADATA_DISABLED="true",
        KUBESLIM_CACHE=str(tmp_path / "cache"),
        # The stages import the model from tests/, and run from tmp_path.
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.update(aws)
    return subprocess.run(
        [sys.executable, "-m", "kubeslim", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(MANIFEST)
    return path


def admin_store(s3_server: S3Server, uri: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """A store with the server's keys, to look behind the stages' backs."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return S3Store(uri)


def test_run_writes_results_and_outputs_to_s3(
    s3_server: S3Server, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/runs/tiny"

    done = kubeslim(tmp_path, s3_server.env(), "run", str(manifest), "--artifacts", uri, "--quiet")

    assert done.returncode == 0, done.stderr[-3000:]
    store = admin_store(s3_server, uri, monkeypatch)
    for stage in ("convert", "quantize"):
        result = store.read_json(f"{stage}/result.json")
        assert result["stage"] == stage
        # references are keys relative to the artifacts root (readable from any endpoint)
        assert result["result_uri"] == f"{stage}/result.json"
        assert result["outputs"]
        for key in result["outputs"].values():
            assert key.startswith(f"{stage}/") and "://" not in key
            out = f"{uri}/{key}"
            assert store.exists(key), out
            if key.endswith(".xml"):
                assert store.exists(key.removesuffix(".xml") + ".bin"), out
    assert not store.exists("prune/result.json")  # pruning is disabled
    assert not (tmp_path / "artifacts").exists()  # nothing went to spec.artifacts.uri

    # Another process finds the committed result in S3 and reuses it.
    again = kubeslim(
        tmp_path, s3_server.env(), "stage", "convert", "--manifest", str(manifest),
        "--artifacts", uri, "--progress", "none",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    line = next(x for x in again.stdout.splitlines() if x.startswith("KUBESLIM_RESULT "))
    assert json.loads(line.removeprefix("KUBESLIM_RESULT "))["reused"] is True


def test_stage_without_or_with_wrong_credentials_fails_in_one_line(
    s3_server: S3Server, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/runs/denied"
    no_keys = {k: v for k, v in s3_server.env().items() if not k.startswith("AWS_SECRET")}
    del no_keys["AWS_ACCESS_KEY_ID"]
    wrong_secret = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    expected = {
        "none": f"error: artifacts.uri {uri}: {NO_CREDENTIALS}",
        "wrong": f"error: artifacts.uri {uri}: access denied to s3://{bucket} ",
    }

    for case, aws in (("none", no_keys), ("wrong", wrong_secret)):
        result_file = tmp_path / f"termination-log-{case}"
        done = kubeslim(
            tmp_path, aws, "stage", "convert", "--manifest", str(manifest), "--artifacts", uri,
            "--result-file", str(result_file), "--progress", "none",
        )  # fmt: skip

        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(expected[case]), lines[0]
        assert "outputs" not in json.loads(result_file.read_text())
        assert "KUBESLIM_RESULT" not in done.stdout

    assert admin_store(s3_server, uri, monkeypatch).list_keys() == []
