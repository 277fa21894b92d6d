"""PoD streamer task (ECS Fargate): streams every enabled pod instance until SIGTERM/SIGINT.

Run as ``python functions/pod_streamer/streamer.py`` (tests) or ``python /app/streamer.py`` (image):
the environment is the stack's (STATE_TABLE, RAW_BUCKET, EVENT_STREAM, SINKS, SECRET_PREFIX) plus the
optional POD_* tuning variables (``ppcollector/connectors/pod/config.py``).
"""

import sys

from ppcollector.connectors.pod.stream import main
from ppcollector.errors import SettingsError
from ppcollector.observability import logger

if __name__ == "__main__":
    try:
        sys.exit(main())
    except SettingsError as exc:  # bad configuration: fail fast with the reason
        logger.error(f"pod streamer: {exc}")
        sys.exit(2)
