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
    outputs: dict[str, str] = Field(default={}, description="name -> URI of each output")
    metrics: dict[str, Any] = Field(default={}, description="stage-specific figures")
    details: dict[str, Any] = Field(default={}, description="large tables (per-layer, ...)")
    duration_seconds: float = 0.0
    reused: bool = False
    result_uri: str = ""

    def compact(self) -> str:
        """A short JSON for the termination message: no details, bounded size."""
        body = self.model_dump(mode="json", exclude={"details"})
        text = json.dumps(body, separators=(",", ":"))
        if len(text) > TERMINATION_MESSAGE_LIMIT:
            body["metrics"] = {}
            text = json.dumps(body, separators=(",", ":"))
        return text
