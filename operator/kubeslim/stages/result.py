"""What a stage hands on: result.json in the store and a compact copy for the operator."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

# A container's termination message is cut at 4096 bytes; keep well below.
TERMINATION_MESSAGE_LIMIT = 3500


class StageResult(BaseModel):
    """Written last, as <artifacts>/<stage>/result.json: its presence commits the stage."""

    stage: str
    fingerprint: str = Field(description="content hash of the stage's inputs and spec")
    outputs: dict[str, str] = Field(
        default={}, description="name -> key of each output, relative to the artifacts root"
    )
    metrics: dict[str, Any] = Field(default={}, description="stage-specific figures")
    details: dict[str, Any] = Field(default={}, description="large tables (per-layer, ...)")
    duration_seconds: float = 0.0
    reused: bool = False
    result_uri: str = Field(
        default="", description="key of this result.json, relative to the artifacts root"
    )
    checkpoint_digest: str | None = Field(
        default=None, description="sha256 of the checkpoint bytes the stage read"
    )
    spec_fingerprint: str | None = Field(
        default=None, description="the planner's fingerprint of the spec this result is for"
    )
    shared: bool = Field(
        default=False,
        description="copied from the shared cache: another run with the same inputs made it",
    )
    cache_key: str | None = Field(
        default=None,
        description="<stage>/<fingerprint> of the stage's entry in the shared cache, if any",
    )

    def compact(self) -> str:
        """A short JSON for the termination message: no details, bounded size."""
        body = self.model_dump(mode="json", exclude={"details"}, exclude_none=True)
        text = json.dumps(body, separators=(",", ":"))
        # The kubelet cuts the message at 4096 bytes; drop what the operator can do
        # without (it reads the full result.json never), largest first.
        for bulky in ("metrics", "outputs"):
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                break
            body[bulky] = {}
            text = json.dumps(body, separators=(",", ":"))
        return text
