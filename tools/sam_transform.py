"""SAM-transform template.yaml offline and print (or write) the CloudFormation JSON.

Why: cfn-lint >= 1.54 no longer runs the SAM transform itself, so `tools/template_checks.sh` lints
this output instead. The transform lives in ppctl.local_deploy (``ppctl local deploy`` uses
the same one); this is only its command line.

    python tools/sam_transform.py [template.yaml] [-o out.json] [--region us-east-1]
        [--parameter SinkMode=s3 ...] [--code TapPollerFunction=s3://bucket/key.zip ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "shared"), str(REPO / "cli")]  # works from a fresh clone, installed or not

from ppctl.local_deploy import DEFAULT_REGION, LocalDeployError, transform  # noqa: E402


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _code_location(text: str) -> tuple[str, tuple[str, str]]:
    logical_id, uri = _key_value(text)
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise argparse.ArgumentTypeError(f"expected LogicalId=s3://bucket/key, got {text!r}")
    return logical_id, (bucket, key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", nargs="?", default=str(REPO / "template.yaml"))
    parser.add_argument("-o", "--output", help="write the JSON here instead of stdout")
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--parameter", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--code", action="append", type=_code_location, default=[], metavar="LogicalId=s3://BUCKET/KEY",
        help="code location of a function/layer (default s3://placeholder-bucket/<LogicalId>.zip)",
    )
    args = parser.parse_args(argv)
    try:
        cfn = transform(args.template, dict(args.code), dict(args.parameter), region=args.region)
    except (LocalDeployError, ValueError) as error:
        print(f"sam_transform: {error}", file=sys.stderr)
        return 1
    text = json.dumps(cfn, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
