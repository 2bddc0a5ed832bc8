"""Widget callbacks that draw run one at a time, with pyplot's interactive mode off.

JupyterLab 4.6 sends widget comm messages to a kernel subshell (its `commsOverSubshells`
setting: by default one subshell per comm target), and ipykernel 7 runs each subshell in a
thread of its own, while some widget messages still arrive on the main shell. Two things then
draw at once: a second callback, and matplotlib-inline's end-of-message flush, which renders
(and closes) every open pyplot figure once a pyplot call has flagged a draw in interactive
mode, including the figure a callback on the other thread is still building. matplotlib is not
thread-safe: its shared mathtext parser failed on a tick label ("Expected end of text, found
'$'") in notebook 05's sweep explorer. Holding one lock keeps callbacks apart; interactive mode
off keeps a callback's figures from flagging that flush.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

DRAW_LOCK = threading.RLock()  # reentrant: a callback may set a control whose observer draws

Callback = TypeVar("Callback", bound=Callable[..., Any])


def serialized(callback: Callback) -> Callback:
    """`callback`, run while holding DRAW_LOCK and with pyplot's interactive mode off."""

    @functools.wraps(callback)
    def locked(*args: Any, **kwargs: Any) -> Any:
        import matplotlib.pyplot as plt

        with DRAW_LOCK, plt.ioff():
            return callback(*args, **kwargs)

    return locked  # type: ignore[return-value]
