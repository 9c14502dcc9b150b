"""The error classes: what tinygrad_rnn raises on purpose, with a one-line message.

``tr.Error`` is the base of every error that means "the input, an option, a file or a
plugin is wrong": the CLI prints its message on one line. Any other exception escaping
the library is a bug, and the CLI shows its traceback. The subclasses also derive from
the built-in class a Python caller would expect (``ValueError`` for a bad value,
``KeyError`` for an unknown name), so ``except ValueError`` keeps working.
"""
import inspect
import os
import traceback


class Error(Exception):
    """Base class: a user-facing error whose message says, on one line, what to fix."""


class ConfigError(Error, ValueError, TypeError):
    """An argument, option or setting is invalid (or two of them conflict)."""


class UnknownNameError(Error, KeyError):
    """No cell, task or other registered thing has this name."""

    def __str__(self):  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class ResourceError(Error, ValueError):
    """The requested sizes cannot fit in memory (or in the file that claims them)."""


class DataError(Error, ValueError):
    """Input data cannot be used (it holds NaN, say); the message says where."""


class NonFiniteError(Error, FloatingPointError):
    """A computation produced NaN or Inf where a number is needed; the message says where."""


class DeviceError(Error, RuntimeError):
    """The requested device is not available."""


class DependencyError(Error, RuntimeError):
    """An optional dependency (matplotlib for plots, say) is not installed."""


class UserCodeError(Error):
    """A plugin's code (a cell's ``step``, a task's methods) raised an exception.

    The message names the cell or task, its plugin, the file and line that raised,
    and where in the run it happened; the original exception is the ``__cause__``.
    """


def user_frame(exc, source_file):
    """(file, line, function) of the innermost traceback frame in ``source_file``, or None."""
    if not source_file:
        return None
    real = os.path.realpath(source_file)
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.realpath(frame.filename) == real:
            found = (frame.filename, frame.lineno, frame.name)
    return found


def source_file(cls):
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None


def is_builtin(cls):
    """Classes shipped in this package: their exceptions are our bugs, not user code's."""
    return (getattr(cls, "__module__", "") or "").split(".")[0] == "tinygrad_rnn"


def wrap_user_code(exc, kind, obj, plugin, where, require_frame=False, unpack_hint=None):
    """A ``UserCodeError`` for ``exc`` raised inside ``obj`` (a cell or task) of ``plugin``,
    or None when ``exc`` is already a ``tr.Error`` or ``obj`` is built in (then it is our bug).
    With ``require_frame``, also None unless the traceback passes through ``obj``'s file.
    ``unpack_hint`` replaces the num_states hint of a "values to unpack" error."""
    cls = obj if inspect.isclass(obj) else type(obj)
    if isinstance(exc, Error) or is_builtin(cls):
        return None
    path = source_file(cls)
    frame = user_frame(exc, path)
    if require_frame and frame is None:
        return None
    at = f"{frame[0]}:{frame[1]}, in {frame[2]}" if frame else (path or cls.__module__)
    msg = str(exc).splitlines()[0] if str(exc) else ""
    hint = ""
    if kind == "cell" and isinstance(exc, ValueError) and "values to unpack" in msg and unpack_hint:
        hint = f" ({unpack_hint})"
    elif kind == "cell" and isinstance(exc, ValueError) and "values to unpack" in msg:
        n = getattr(cls, "num_states", "?")
        hint = (f" (the cell declares num_states={n}, so step() gets a tuple of {n} state "
                "tensor(s): check num_states and how step unpacks state)")
    return UserCodeError(f"{kind} {getattr(cls, 'name', cls.__name__)!r} (plugin {plugin!r}, {at}) "
                         f"raised {type(exc).__name__}: {msg}{hint} {where}".rstrip())
