"""s3:// URIs on AWS S3 or any S3-compatible server (MinIO, Ceph radosgw), via s3fs.

Credentials and endpoint come from the environment only, through botocore's
usual chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
a web-identity token (IRSA), a shared profile, or the instance's IAM role.
AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) points at a non-AWS server and
AWS_REGION (or AWS_DEFAULT_REGION) picks the region.

Atomicity comes from S3 itself: a PUT or a multipart upload becomes visible
only when it completes, and s3fs aborts a multipart upload that fails, so a
reader sees the old object or the whole new one, never a part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

from kubeslim.errors import MissingArtifact, StoreError, StoreUnavailable
from kubeslim.store.base import ArtifactStore
from kubeslim.store.local import _atomic_target

# Parts of multipart uploads. Objects smaller than twice this go up in one PUT
# (s3fs's rule); S3 wants every part but the last to be at least 5 MiB.
DEFAULT_PART_SIZE = 16 * 2**20

_NO_CREDENTIALS = (
    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an IAM role)"
)
Missing = Literal["absent", "artifact", "fail"]


class S3Store(ArtifactStore):
    """A bucket and a key prefix: s3://bucket/prefix."""

    def __init__(
        self, root: str, *, part_size: int = DEFAULT_PART_SIZE, page_size: int = 1000
    ) -> None:
        super().__init__(root)
        self.bucket, _, prefix = self.root.removeprefix("s3://").partition("/")
        if not self.bucket:
            raise StoreError(f"artifacts.uri: expected s3://BUCKET/PREFIX, got {root!r}")
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.page_size = page_size  # keys per ListObjectsV2 page
        self.endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        self.region = _env("AWS_REGION", "AWS_DEFAULT_REGION")
        self._check_credentials()
        self.fs = self._filesystem()
        self._bucket_checked = False

    # -- the ArtifactStore interface ------------------------------------------

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key, missing="absent"):
                self.fs.call_s3("head_object", Bucket=self.bucket, Key=self._key(key))
            return True
        except _Absent:
            # HEAD answers a bare 404 for a missing bucket too: tell them apart
            # once, so a typo in the bucket fails now and not after a stage ran.
            self._check_bucket()
            return False

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key, missing="artifact"):
            data: bytes = self.fs.cat_file(self._path(key))
        return data

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """length bytes of the object from start (one ranged GET: a sample in a tar shard)."""
        with self._errors(key, missing="artifact"):
            data: bytes = self.fs.cat_file(self._path(key), start=start, end=start + length)
        return data

    def open_read(self, key: str, block_size: int = 8 * 2**20) -> Any:
        """A seekable file object that reads the object in blocks (a tar shard's headers)."""
        with self._errors(key, missing="artifact"):
            return self.fs.open(self._path(key), "rb", block_size=block_size)

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        return int(self._head(key)["ContentLength"])

    def version(self, key: str) -> str:
        """Changes whenever the object does: its ETag and size."""
        head = self._head(key)
        return f"{head.get('ETag', '').strip(chr(34))}-{head['ContentLength']}"

    def _head(self, key: str) -> dict[str, Any]:
        with self._errors(key, missing="artifact"):
            head: dict[str, Any] = self.fs.call_s3(
                "head_object", Bucket=self.bucket, Key=self._key(key)
            )
        return head

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.fs.pipe_file(self._path(key), data, chunksize=self.part_size)

    def upload(self, local: Path, key: str) -> None:
        if not Path(local).is_file():
            raise StoreError(f"{local}: no such file to upload to {self.uri(key)}")
        with self._errors(key):
            self.fs.put_file(str(local), self._path(key), chunksize=self.part_size)

    def download(self, key: str, local: Path) -> None:
        with self._errors(key, missing="artifact"), _atomic_target(Path(local)) as tmp:
            self.fs.get_file(self._path(key), str(tmp))

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str = "") -> list[str]:
        # Straight from ListObjectsV2, page by page: no listing cache to go stale.
        base = self._key(prefix) if prefix.strip("/") else self.prefix
        start = f"{base}/" if base else ""
        keys: list[str] = []
        token: dict[str, str] = {}
        with self._errors(prefix):
            while True:
                page = self.fs.call_s3(
                    "list_objects_v2",
                    Bucket=self.bucket,
                    Prefix=start,
                    MaxKeys=self.page_size,
                    **token,
                )
                keys += [o["Key"] for o in page.get("Contents", [])]
                if not page.get("IsTruncated"):
                    break
                token = {"ContinuationToken": page["NextContinuationToken"]}
        root = f"{self.prefix}/" if self.prefix else ""
        return sorted(
            k.removeprefix(root)
            for k in keys
            if not k.endswith("/") and not k.rpartition("/")[2].startswith(".")
        )

    # -- keys -----------------------------------------------------------------

    def _key(self, key: str) -> str:
        """The object key below the prefix; '..' and empty keys are refused."""
        parts = [p for p in key.strip("/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    # -- set-up ---------------------------------------------------------------

    def _check_credentials(self) -> None:
        """Fail now, in one line, if botocore's chain finds no credentials at all."""
        import botocore.exceptions
        import botocore.session

        try:
            credentials = botocore.session.get_session().get_credentials()
        except botocore.exceptions.PartialCredentialsError as err:
            raise StoreError(
                f"artifacts.uri {self.root}: incomplete S3 credentials: "
                f"{err.kwargs.get('cred_var', 'a variable')} is not set"
            ) from None
        except botocore.exceptions.BotoCoreError as err:
            raise StoreError(f"artifacts.uri {self.root}: S3 credentials: {err}") from None
        if credentials is None:
            raise StoreError(f"artifacts.uri {self.root}: {_NO_CREDENTIALS}")

    def _filesystem(self) -> Any:
        try:
            import s3fs
        except ImportError:
            raise StoreError(
                f"artifacts.uri {self.root}: s3:// needs s3fs: pip install 'kubeslim[s3]'"
            ) from None
        client: dict[str, Any] = {}
        config: dict[str, Any] = {}
        if self.region:
            client["region_name"] = self.region
        if self.endpoint:
            client["endpoint_url"] = self.endpoint
            client.setdefault("region_name", "us-east-1")
            # Servers behind a plain host name (http://minio:9000) have no
            # per-bucket DNS names, so address buckets in the path.
            config["s3"] = {"addressing_style": "path"}
        # No instance or listing cache: another process (the next stage's Pod)
        # may have written a key a moment ago, and exists() must see it.
        return s3fs.S3FileSystem(
            skip_instance_cache=True,
            use_listings_cache=False,
            client_kwargs=client,
            config_kwargs=config,
        )

    def _check_bucket(self) -> None:
        """Fail with a clear line if the bucket is missing (checked once per store)."""
        if self._bucket_checked:
            return
        with self._errors(""):
            try:
                self.fs.call_s3("head_bucket", Bucket=self.bucket)
            except FileNotFoundError:
                self._fail(f"bucket {self.bucket!r} does not exist{self._where()}")
        self._bucket_checked = True

    # -- errors ---------------------------------------------------------------

    @contextmanager
    def _errors(self, key: str, missing: Missing = "fail") -> Iterator[None]:
        """Turn s3fs/botocore exceptions into one-line StoreErrors.

        missing says what a missing key means: "absent" raises _Absent (an
        answer for exists), "artifact" a StoreError naming the key, "fail" the
        server's own message.
        """
        import botocore.exceptions

        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError as err:
            if _code(err) == "NoSuchBucket":
                self._fail(f"bucket {self.bucket!r} does not exist{self._where()}")
            if missing == "absent":
                raise _Absent() from None
            if missing == "artifact":
                self._check_bucket()
                raise MissingArtifact(f"{self.uri(key)}: no such artifact") from None
            self._fail(f"{self.uri(key)}: not found ({_code(err) or err})")
        except PermissionError as err:
            self._fail(
                f"access denied to s3://{self.bucket} ({_code(err) or 'Forbidden'}): check "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket policy"
            )
        except botocore.exceptions.EndpointConnectionError:
            # Not the spec's fault: a Job retries this with back-off (exit 75).
            self._fail(
                f"cannot reach the S3 endpoint {self.endpoint or 'of AWS'}", StoreUnavailable
            )
        except (OSError, botocore.exceptions.BotoCoreError) as err:
            # Timeouts, dropped connections, 5xx answers: transient as well.
            self._fail(f"{self.uri(key)}: {_describe(err)}", StoreUnavailable)

    def _fail(self, message: str, kind: type[StoreError] = StoreError) -> NoReturn:
        raise kind(f"artifacts.uri {self.root}: {message}") from None

    def _where(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""


class _Absent(Exception):
    """A key that is not there, where that is an answer and not an error."""


def _env(*names: str) -> str | None:
    """The first of the variables that is set and not empty."""
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _code(err: BaseException) -> str | None:
    """The S3 error code behind an s3fs exception (its cause is botocore's ClientError)."""
    response = getattr(err.__cause__, "response", None) or getattr(err, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def _describe(err: BaseException) -> str:
    """One line: the S3 error code and operation if there is one, else the exception."""
    cause = err.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code"):
        error = response["Error"]
        line = f"{error['Code']} in {getattr(cause, 'operation_name', 'a request')}"
        message = error.get("Message")
        return f"{line}: {message}" if message and message != "None" else line
    return " ".join(str(err).split()) or type(err).__name__
