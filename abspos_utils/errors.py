"""The one exception a user of the book can cause, and how it is shown.

Every mistake a reader can make (an unknown model, a model without RoPE, SDPA attention where the
experiments need eager attention, prompts shorter than a query window, an unknown notebook parameter,
running out of memory) stops with an :class:`AbsposError` whose message is one sentence naming the cause
and the fix. The command line prints that sentence alone, without a traceback.
"""

from __future__ import annotations


class AbsposError(Exception):
    """A problem with the user's input or machine, explained in one sentence (cause and fix)."""
