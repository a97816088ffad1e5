"""The fake kubelet's pure parts: $(VAR) expansion, path mapping, log files."""

from __future__ import annotations

import io
from pathlib import Path

from tests.cluster.logs import LogQuery, LogSource, copy_stream, stream_log, tail_of
from tests.cluster.pods import PathMap, expand


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A) $(MISSING) $$ $(", env) == "$(A) $(MISSING) $ $("


def test_path_map_rewrites_only_whole_path_components(tmp_path: Path) -> None:
    paths = PathMap(
        {
            "/work": tmp_path / "w",
            "/work/sub": tmp_path / "s",
            "/dev/termination-log": tmp_path / "t",
        }
    )
    assert paths.rewrite("--out=/work/a") == f"--out={tmp_path}/w/a"
    assert paths.rewrite("file:///work/sub/x") == f"file://{tmp_path}/s/x"
    assert paths.rewrite("--result-file /dev/termination-log") == f"--result-file {tmp_path}/t"
    assert paths.rewrite("/workspace /x/work /work.d") == "/workspace /x/work /work.d"


def test_logs_honour_tail_timestamps_and_unterminated_lines(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    copy_stream(io.BytesIO(b"one\ntwo\nthree\nno newline"), path)
    done = LogSource(path, lambda: True)

    assert b"".join(stream_log(done, LogQuery())) == b"one\ntwo\nthree\nno newline"
    assert b"".join(stream_log(done, LogQuery(tail_lines=2))) == b"three\nno newline"
    stamped = b"".join(stream_log(done, LogQuery(tail_lines=1, timestamps=True)))
    assert stamped.startswith(b"20") and stamped.endswith(b"Z no newline")
    assert tail_of(path, 2, 1000) == "three\nno newline"
    assert tail_of(path, 10, 5) == "wline"
    # A log that may still grow does not show a half-written line.
    running = LogSource(path, lambda: False)
    assert b"".join(stream_log(running, LogQuery())) == b"one\ntwo\nthree\n"
