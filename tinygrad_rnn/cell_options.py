"""Cell options given as text (``--cell-option nonlinearity=relu``), typed and checked
against the cell's constructor, so every command that builds a cell reads them alike."""
import inspect
import math

from .errors import ConfigError
from .plugins import get_cell

_SIZES = ("self", "input_size", "hidden_size")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_WHAT = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def parse_cell_options(cell, pairs):
    """``["nonlinearity=relu", ...]`` -> ``{"nonlinearity": "relu", ...}`` for ``cell``
    (a registered name or a Cell class). Each value takes the type of the constructor
    argument's annotation or default (bool, int, float or str); an unknown key, a
    repeated key or a value of the wrong type raises ValueError with a one-line message.
    Values the cell itself rejects fail here too (see ``check_cell_options``).
    """
    cls = get_cell(cell) if isinstance(cell, str) else cell
    accepted, open_ended = _constructor_options(cls)
    options = {}
    for pair in pairs:
        key, sep, raw = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--cell-option {pair!r}: expected KEY=VALUE, e.g. nonlinearity=relu")
        if key in options:
            raise ConfigError(f"--cell-option {key!r} is given twice")
        if key in accepted:
            options[key] = _typed(cls, key, raw, accepted[key])
        elif open_ended:
            options[key] = _typed(cls, key, raw, None)
        else:
            known = ", ".join(f"{k}={_show(p.default)}" for k, p in accepted.items()) or "none"
            raise ConfigError(f"cell {cls.name!r} has no option {key!r} (its options: {known})")
    check_cell_options(cls, options)
    return options


def check_cell_options(cell, options):
    """Build one tiny cell with ``options`` so that a bad value fails now, before any
    training, with the cell's own message. Returns ``options``."""
    cls = get_cell(cell) if isinstance(cell, str) else cell
    if not options:
        return options
    try:
        cls(1, 1, **options)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if msg.startswith(f"{cls.name}: "):  # the cell named itself already (rnn: nonlinearity must ...)
            msg = msg[len(cls.name) + 2:]
        raise ConfigError(f"cell {cls.name!r}: {msg}") from None
    return options


def _constructor_options(cls):
    params = inspect.signature(cls.__init__).parameters
    accepted = {k: p for k, p in params.items() if k not in _SIZES and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return accepted, any(p.kind is p.VAR_KEYWORD for p in params.values())


def _typed(cls, key, raw, param):
    kind = None
    if param is not None:
        if param.annotation in _WHAT:
            kind = param.annotation
        elif param.default is not param.empty and type(param.default) in _WHAT:
            kind = type(param.default)
    text = raw.strip()
    if kind is None:  # nothing to go by: a number, true or false, else the text itself
        for guess in (int, float):
            try:
                return _convert(guess, text)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(text.lower(), raw)
    try:
        return _convert(kind, text if kind is not str else raw)
    except ValueError:
        raise ConfigError(f"--cell-option {key}={raw}: cell {cls.name!r} expects {_WHAT[kind]} "
                         f"for {key!r}") from None


def _convert(kind, text):
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(text)
    if kind is float:
        value = float(text)
        if not math.isfinite(value):
            raise ConfigError(text)
        return value
    return kind(text)


def _show(default):
    return "?" if default is inspect.Parameter.empty else default
