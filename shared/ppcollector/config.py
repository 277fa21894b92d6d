"""Runtime configuration from the environment ``template.yaml`` sets, validated at cold start.

Only what every connector shares; a connector's own knobs (TAP's settle lag and rate limit) are read
by its package (connectors/tap/settings.py ``TapEnvironment``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import SettingsError

SINK_MODES = ("s3", "kinesis", "both")


@dataclass(frozen=True)
class RuntimeConfig:
    state_table: str
    raw_bucket: str
    event_stream: str
    sinks: str
    secret_prefix: str
    dispatch_mode: str = "inline"  # template.yaml sets "lambda": one async invocation per due instance
    function_name: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RuntimeConfig:
        env = dict(os.environ if env is None else env)

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise SettingsError(f"environment variable {name} is not set (template.yaml sets it)")
            return value

        sinks = env.get("SINKS", "both").strip().lower()
        if sinks not in SINK_MODES:
            raise SettingsError(f"environment variable SINKS={sinks!r} must be one of s3, kinesis, both")
        dispatch_mode = env.get("DISPATCH_MODE", "inline").strip().lower() or "inline"
        if dispatch_mode not in ("inline", "lambda"):
            raise SettingsError(f"environment variable DISPATCH_MODE={dispatch_mode!r} must be inline or lambda")
        function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        if dispatch_mode == "lambda" and not function_name:
            raise SettingsError("DISPATCH_MODE=lambda needs AWS_LAMBDA_FUNCTION_NAME (set by Lambda)")
        return cls(
            dispatch_mode=dispatch_mode,
            function_name=function_name,
            state_table=required("STATE_TABLE"),
            raw_bucket=required("RAW_BUCKET"),
            event_stream=required("EVENT_STREAM") if sinks != "s3" else env.get("EVENT_STREAM", ""),
            sinks=sinks,
            secret_prefix=required("SECRET_PREFIX").rstrip("/"),
        )

    def env(self) -> dict[str, Any]:
        return {
            "STATE_TABLE": self.state_table,
            "RAW_BUCKET": self.raw_bucket,
            "EVENT_STREAM": self.event_stream,
            "SINKS": self.sinks,
            "SECRET_PREFIX": self.secret_prefix,
            "DISPATCH_MODE": self.dispatch_mode,
        }
