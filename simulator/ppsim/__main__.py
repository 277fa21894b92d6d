"""Run a simulator standalone: ``python -m ppsim tap --port 0 --principal P --secret S``.

Prints one line, ``TAP simulator listening on http://127.0.0.1:PORT``, then serves until SIGINT or
SIGTERM. Scripts can read that line to learn the port. ``python -m ppsim casb --client-id C
--client-secret S --api-key K`` does the same for the CASB simulator (``CASB simulator listening on ...``).
``python -m ppsim pod --token T --cluster-id C`` serves the PoD Log API websocket
(``PoD simulator listening on ws://127.0.0.1:PORT``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .casb import CasbSimulator
from .pod import PodSimulator
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
    casb = sub.add_parser("casb", help="Proofpoint CASB (legacy PCASB) API: /v1/auth, /v1/alerts, /v2/events")
    casb.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    casb.add_argument("--client-id", required=True)
    casb.add_argument("--client-secret", required=True)
    casb.add_argument("--api-key", required=True)
    casb.add_argument("--alerts-per-hour", type=float, default=30)
    casb.add_argument("--events-per-hour", type=float, default=600)
    casb.add_argument("--seed", type=int, default=1)
    casb.add_argument("--page-size", type=int, default=50)
    casb.add_argument("--events-page-size", type=int, default=100)
    casb.add_argument("--token-ttl-seconds", type=float, default=3600)
    casb.add_argument("--daily-limit", type=int, default=1000)
    casb.add_argument("--quota-retry-after", action="store_true", help="send Retry-After with the daily-cap 429")
    casb.add_argument("--control-chars", action="store_true", help="raw tabs/newlines inside alert descriptions")
    casb.add_argument("--verbose", action="store_true", help="log every request to stderr")
    pod = sub.add_parser("pod", help="Proofpoint on Demand Log API (websocket /v1/stream)")
    pod.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    pod.add_argument("--token", required=True, help="bearer token")
    pod.add_argument("--cluster-id", required=True, help="cluster id (cid) the token is valid for")
    pod.add_argument("--events-per-minute", type=float, default=60, help="per event type")
    pod.add_argument("--seed", type=int, default=1)
    pod.add_argument("--tz-offset", default="-07:00", help="cluster local offset for ts")
    pod.add_argument("--duplicate-rate", type=float, default=0.01)
    pod.add_argument("--linger-seconds", type=float, default=0.0, help="409 window after an abrupt drop")
    pod.add_argument("--padding-bytes", type=int, default=0)
    pod.add_argument("--large-frame-every", type=int, default=0, help="about 1 message event in N is large")
    pod.add_argument("--large-frame-bytes", type=int, default=5_000_000)
    pod.add_argument("--archive-lag-seconds", type=float, default=0.0,
                     help="archive reads end this long before now (the real archive: >= 1800)")
    pod.add_argument("--verbose", action="store_true", help="log connection errors to stderr")
    return parser


def _make_simulator(args: argparse.Namespace) -> tuple[str, TapSimulator | CasbSimulator | PodSimulator]:
    if args.simulator == "pod":
        return "PoD", PodSimulator(
            {args.token: args.cluster_id},
            seed=args.seed,
            events_per_minute=args.events_per_minute,
            tz_offset=args.tz_offset,
            duplicate_rate=args.duplicate_rate,
            linger_seconds=args.linger_seconds,
            padding_bytes=args.padding_bytes,
            large_frame_every=args.large_frame_every,
            large_frame_bytes=args.large_frame_bytes,
            archive_lag_seconds=args.archive_lag_seconds,
            port=args.port,
        )
    if args.simulator == "casb":
        return "CASB", CasbSimulator(
            {args.client_id: args.client_secret},
            {"default": args.api_key},
            seed=args.seed,
            alerts_per_hour=args.alerts_per_hour,
            events_per_hour=args.events_per_hour,
            page_size=args.page_size,
            events_page_size=args.events_page_size,
            token_ttl_seconds=args.token_ttl_seconds,
            daily_limit=args.daily_limit,
            quota_retry_after=args.quota_retry_after,
            control_chars=args.control_chars,
            port=args.port,
        )
    return "TAP", TapSimulator(
        {args.principal: args.secret},
        seed=args.seed,
        events_per_hour=args.events_per_hour,
        empty_mode=args.empty_mode,
        rate_limit_per_day=args.rate_limit_per_day,
        padding_bytes=args.padding_bytes,
        port=args.port,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    label, sim = _make_simulator(args)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    url = sim.start()
    print(f"{label} simulator listening on {url}", flush=True)
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
