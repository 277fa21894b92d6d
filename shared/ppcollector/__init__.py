"""Shared library of the Proofpoint collector: the spine every connector runs on.

Where an event enters: ``connectors/<name>.py`` (the vendor client and window/page logic).
Where it is written: ``sinks.py``. Where it is checkpointed: ``spine.py`` (``poll_instance``),
only after every selected sink acknowledged.
"""

__version__ = "0.1.0"
