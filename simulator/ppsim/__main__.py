"""Run a simulator standalone: ``python -m ppsim tap --port 0 --principal P --secret S``.

Prints one line, ``TAP simulator listening on http://127.0.0.1:PORT``, then serves until SIGINT or
SIGTERM. Scripts can read that line to learn the port.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .tap import EMPTY_MODES, TapSimulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ppsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="simulator", required=True)
    tap = sub.add_parser("tap", help="Proofpoint TAP SIEM API v2")
    tap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    tap.add_argument("--principal", required=True, help="service principal (Basic auth user)")
    tap.add_argument("--secret", required=True, help="service secret (Basic auth password)")
    tap.add_argument("--events-per-hour", type=float, default=120)
    tap.add_argument("--seed", type=int, default=1)
    tap.add_argument("--empty-mode", choices=EMPTY_MODES, default="alternate")
    tap.add_argument("--rate-limit-per-day", type=int, default=1800)
    tap.add_argument("--padding-bytes", type=int, default=0)
    tap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    sim = TapSimulator(
        {args.principal: args.secret},
        seed=args.seed,
        events_per_hour=args.events_per_hour,
        empty_mode=args.empty_mode,
        rate_limit_per_day=args.rate_limit_per_day,
        padding_bytes=args.padding_bytes,
        port=args.port,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    url = sim.start()
    print(f"TAP simulator listening on {url}", flush=True)
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
