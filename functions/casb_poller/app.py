"""CASB poller Lambda: a scheduled tick polls every due CASB instance; {"instance": NAME} polls one now."""

from ppcollector.observability import logger
from ppcollector.runtime import handle_poll_event


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
    return handle_poll_event("casb", event, context)
