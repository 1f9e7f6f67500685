"""Which failures of the ``d2lightning`` command are the user's to fix, and the one line it prints for them.

The command promises one line and exit status 1 for bad input — a config key, a file, a setting the machine
cannot honour, a busy ``OUTPUT_DIR``, a diverging loss — and a traceback only for what looks like a bug
(``D2L_DEBUG=1`` shows tracebacks for everything). An error raised in a worker process that ``launch`` started
reaches the command as torch's ``ProcessRaisedException`` whose ``__cause__`` is the worker's own exception;
it is judged by that cause. Imports nothing heavy: ``d2lightning --help`` stays fast.
"""

from __future__ import annotations

import pickle

__all__ = ["user_error_message"]

# By name, so that judging an error never imports torch, the checkpoint or the engine modules.
_USER_ERROR_NAMES = {
    "ConfigError",  # and its subclasses, matched through the MRO
    "CorruptCheckpointError",
    "OutputDirInUseError",
}
_USER_ERROR_TYPES: tuple[type[BaseException], ...] = (
    KeyError,
    ValueError,
    TypeError,
    OSError,  # missing files, permissions, the rendezvous timeout (a TimeoutError)
    FloatingPointError,  # a loss that became NaN or infinite
    pickle.UnpicklingError,  # a checkpoint that holds objects weights_only refuses (the message says what to do)
)
_DIVERGED = "Loss became infinite or NaN"
_DIVERGED_HINT = (
    " The training diverged: lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS "
    "(and check the data)."
)


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for a user error, or None for anything else (keep its traceback).

    Args:
        error: what the command raised.
    """
    if type(error).__module__.startswith("torch.multiprocessing") and error.__cause__ is not None:
        return user_error_message(error.__cause__)
    names = {cls.__name__ for cls in type(error).__mro__}
    if not (names & _USER_ERROR_NAMES or isinstance(error, _USER_ERROR_TYPES)):
        return None
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    message = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    if isinstance(error, FloatingPointError) and message.startswith(_DIVERGED):
        message += _DIVERGED_HINT
    return message or type(error).__name__
