"""The plugin manager: built-ins first, then entry points, env and explicit plugins.

Nothing is loaded when ``tinygrad_rnn`` is imported; the registry is built the
first time a cell or task is looked up. A plugin that fails is reported by name
and never takes the others down (an explicitly requested one raises). What it
registers goes into the tables of ``registry.py``, each class checked first
against the Cell or Task contract.
"""
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys

import pluggy

from . import hookspecs
from .cell import Cell
from .errors import Error, UnknownNameError, wrap_user_code
from .registry import Entry, PluginInfo, _state, provider_of  # noqa: F401  (provider_of: public here too)
from .tasks import Task

BUILTINS = ("tinygrad_rnn.cells.elman", "tinygrad_rnn.cells.lstm", "tinygrad_rnn.cells.gru",
            "tinygrad_rnn.tasks", "tinygrad_rnn.classify")
ENTRY_POINT_GROUP = "tinygrad_rnn"
# A cell's state is a tuple of this many tensors at most: the built-ins have 1 or 2, and
# compile --cell with num_states = 10**9 built a billion-entry tuple for minutes.
MAX_NUM_STATES = 64
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class PluginError(Error):
    """A plugin could not be loaded or broke the contract; the message names it."""


# What a plugin's import or hook may raise and still be skipped (or reported): anything
# but KeyboardInterrupt (Ctrl-C stops the program, plugin or not). SystemExit, GeneratorExit
# and a bare BaseException too: a plugin calling sys.exit() must not end the CLI.
PLUGIN_FAILURES = BaseException


def reraise_interrupt(e):
    """Re-raise ``e`` if it is Ctrl-C: the one exception out of plugin code that is not the plugin's error."""
    if isinstance(e, KeyboardInterrupt):
        raise e


def load_all():
    """Build the registry now (built-ins, installed and named plugins), so that a broken
    explicit plugin fails here, not at the first lookup."""
    _manager()


def _manager():
    if _state.pm is None:
        with _plugin_output():
            _build()
    return _state.pm


def _build():
    _state.pm, _state.plugins, _state.cells, _state.tasks = pluggy.PluginManager("tinygrad_rnn"), {}, {}, {}
    _state.pm.add_hookspecs(hookspecs)
    for modname in BUILTINS:
        _add(importlib.import_module(modname), PluginInfo(modname, "builtin", "tinygrad-rnn"), explicit=True)
    if os.environ.get("TINYGRAD_RNN_NO_PLUGINS") != "1":
        _load_installed()
    for spec in _state.explicit:  # asked for by name: loaded even with TINYGRAD_RNN_NO_PLUGINS=1
        _load_spec(spec, "explicit", explicit=True)


def _load_installed():
    """Entry points, then ``TINYGRAD_RNN_PLUGINS``: each skipped with a warning if it fails."""
    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:  # the same dist on sys.path twice lists it twice
            seen.add((ep.name, ep.value))
            dist = getattr(ep.dist, "name", "") if ep.dist else ""
            _load(PluginInfo(ep.name, "entry point", dist), ep.load, ep.value, False, f"{ep.name} ({dist or ep.value})")
    for spec in _env_specs():
        _load_spec(spec, "env", explicit=False)


def _plugin_output():
    """What plugins print while they load goes to stderr: stdout may be carrying --json."""
    return contextlib.redirect_stdout(sys.stderr)


def _env_specs():
    return [s for s in os.environ.get("TINYGRAD_RNN_PLUGINS", "").split(os.pathsep) if s]


def _brief(e):
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _fail(info, msg, explicit):
    info.status = msg
    _state.plugins[info.name] = info
    text = f"plugin {info.name!r}: {msg}"
    if explicit:
        raise PluginError(text)
    _state.warn(text + " (skipped)")


def _is_path(spec):
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def _import_spec(spec):
    if _is_path(spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file {spec!r}")
        modname = "tinygrad_rnn_plugin_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        loader_spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[modname] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
        return module
    return importlib.import_module(spec)


def _load_spec(spec, source, explicit):
    name = os.path.splitext(os.path.basename(spec))[0] if spec.endswith(".py") else spec
    _load(PluginInfo(name, source), lambda: _import_spec(spec), spec, explicit, alt_name=spec)


def _load(info, load, what, explicit, alt_name):
    """Import a plugin with ``load()`` and add it; a broken one never takes the CLI down."""
    try:
        module = load()
    except PLUGIN_FAILURES as e:
        reraise_interrupt(e)
        return _fail(info, f"failed to import {what!r}: {_brief(e)}", explicit)
    _add(module, info, explicit, alt_name)


def _same_file_loaded(plugin):
    path = getattr(plugin, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return any(os.path.realpath(getattr(p, "__file__", "") or "") == real
               for p in _state.pm.get_plugins() if p is not plugin)


HOOKS = (("register_cells", "cells"), ("register_tasks", "tasks"))


def _add(plugin, info, explicit, alt_name=None):
    """Register one plugin (``info``: its name, source and distribution) with pluggy and run
    its hooks with a register callback.

    All of a plugin's registrations (cells and tasks) take effect, or none of them.
    A plugin whose name is taken by a different plugin (a ``--plugin mgu.py`` next to an
    installed ``mgu``) is loaded under ``alt_name``, never silently dropped.
    """
    if _state.pm.is_registered(plugin) or _same_file_loaded(plugin):
        return  # the same module or source file, installed and also named with --plugin: one plugin
    if info.name in _state.plugins or _state.pm.has_plugin(info.name):
        info.name = alt_name if alt_name and alt_name not in _state.plugins else f"{info.name}#{len(_state.plugins)}"
    try:
        _state.pm.register(plugin, name=info.name)
    except PLUGIN_FAILURES as e:
        reraise_interrupt(e)
        return _fail(info, f"is not a valid plugin: {_brief(e)}", explicit)
    try:
        staged = _staged(plugin, info.name)
    except PluginError as e:
        _state.pm.unregister(name=info.name)
        return _fail(info, str(e), explicit)
    _state.plugins[info.name] = info
    for _, kind in HOOKS:
        getattr(_state, kind).update(staged[kind])
        getattr(info, kind).extend(sorted({e.cls.name for e in staged[kind].values()}))


def _staged(plugin, name):
    """What registered plugin ``name``'s hooks register, {kind: {key: Entry}}, not yet in the
    tables; a PluginError saying why the plugin is unusable instead."""
    unknown = _unknown_hooks(plugin)
    if unknown:
        known = ", ".join(sorted(c.name for c in vars(_state.pm.hook).values()
                                 if isinstance(c, pluggy.HookCaller) and c.has_spec()))
        raise PluginError(f"@tr.hookimpl {', '.join(unknown)}: no hook has that name (misspelt?); "
                          f"the hooks are: {known}")
    staged = {kind: {} for _, kind in HOOKS}
    for hook, kind in HOOKS:
        for impl in [i for i in getattr(_state.pm.hook, hook).get_hookimpls() if i.plugin_name == name]:
            try:
                impl.function(register=_registrar(staged[kind], getattr(_state, kind), name, kind))
            except PluginError:
                raise
            except PLUGIN_FAILURES as e:
                reraise_interrupt(e)
                raise PluginError(f"{hook} raised {_brief(e)}") from None
    useless = "" if any(staged.values()) else _registers_nothing(plugin)
    if useless:
        raise PluginError(useless)
    return staged


def _unknown_hooks(plugin):
    """Names of ``plugin``'s hookimpls that implement no hook of the spec (what pluggy's
    ``check_pending`` would raise for, later and for every plugin at once)."""
    return sorted({impl.function.__name__ for caller in _state.pm.get_hookcallers(plugin) or []
                   if not caller.has_spec() for impl in caller.get_hookimpls()
                   if impl.plugin is plugin and not impl.optionalhook})


def _registers_nothing(plugin):
    """Why a plugin that registered no cell or task is useless, or "" if it has other hooks."""
    callers = _state.pm.get_hookcallers(plugin) or []
    if any(c.name not in dict(HOOKS) for c in callers):
        return ""  # it implements some other hook: fine
    undecorated = [h for h, _ in HOOKS if callable(getattr(plugin, h, None))] if not callers else []
    if undecorated:
        return f"registers nothing: {undecorated[0]} is not decorated with @tr.hookimpl"
    return "registers nothing (no register_cells or register_tasks hook, or they never call register)"


def _registrar(staged, table, plugin, kind):
    def register(cls, aliases=()):
        aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
        _validate(cls, plugin, kind)
        for key in (cls.name, *aliases):
            taken = table.get(key) or staged.get(key)
            if taken is not None:
                raise PluginError(f"{kind[:-1]} name {key!r} is registered by both "
                                  f"{taken.plugin!r} and {plugin!r}")
            staged[key] = Entry(cls, plugin, aliases)
    return register


def _validate(cls, plugin, kind):
    base = Cell if kind == "cells" else Task
    label = getattr(cls, "__name__", repr(cls))
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise PluginError(f"{label} is not a subclass of tinygrad_rnn.{base.__name__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"{label}.name must be a lower-case identifier, got {name!r}")
    if kind == "cells":
        n = getattr(cls, "num_states", None)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_NUM_STATES:
            raise PluginError(f"{label}.num_states must be an integer from 1 to {MAX_NUM_STATES} (the state "
                              f"tensors step() gets: 1 for an RNN, 2 for an LSTM), got {n!r:.40}")
        if cls.step is Cell.step:
            raise PluginError(f"{label} does not define step(self, x, state)")


# ---- public API -----------------------------------------------------------------
def load_plugin(spec):
    """Load a plugin module name or ``.py`` path now; raises PluginError naming it."""
    if spec not in _state.explicit:
        _state.explicit.append(spec)
    if _state.pm is not None:
        with _plugin_output():
            _load_spec(spec, "explicit", explicit=True)


def plugin_files():
    """(where, path) of each plugin's source file: the ``--plugin`` and ``TINYGRAD_RNN_PLUGINS``
    paths and the files of the plugin modules loaded, which an output must never overwrite."""
    files = [("--plugin", s) for s in _state.explicit if _is_path(s)]
    files += [("TINYGRAD_RNN_PLUGINS", s) for s in _env_specs() if _is_path(s)]
    if _state.pm is not None:
        files += [("plugin", p.__file__) for p in _state.pm.get_plugins() if getattr(p, "__file__", None)]
    return files


def register_plugin(plugin, name=None):
    """Register an already-imported plugin object (tests, notebooks)."""
    _manager()
    name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
    info = PluginInfo(name, "direct")
    _add(plugin, info, explicit=True)
    return info.name


def unregister_plugin(name):
    """Remove a plugin and everything it registered."""
    _manager()
    if _state.pm.has_plugin(name):
        _state.pm.unregister(name=name)
    for table in (_state.cells, _state.tasks):
        for key in [k for k, e in table.items() if e.plugin == name]:
            del table[key]
    _state.plugins.pop(name, None)


def reset():
    """Forget every loaded plugin; the next lookup rebuilds the registry."""
    _state.pm = None
    _state.explicit = []


def _table(kind):
    _manager()
    return getattr(_state, kind)


def _lookup(kind, name):
    table = _table(kind)
    key = name.lower() if isinstance(name, str) else name
    if key not in table:
        known = ", ".join(sorted({e.cls.name for e in table.values()}))
        raise UnknownNameError(f"unknown {kind[:-1]} {name!r}; registered: {known}")
    return table[key].cls


def get_cell(name):
    """The cell class registered under ``name`` (or an alias)."""
    return _lookup("cells", name)


def get_task(name):
    """The task class registered under ``name`` (or an alias)."""
    return _lookup("tasks", name)


def _listing(kind):
    first = {}  # one row per class, not one per alias
    for entry in _table(kind).values():
        first.setdefault(entry.cls.name, entry)
    return [{"name": e.cls.name, "plugin": e.plugin,
             "distribution": _state.plugins[e.plugin].distribution if e.plugin in _state.plugins else "",
             "aliases": list(e.aliases), "doc": _description(e.cls)} for e in first.values()]


def _description(cls):
    """The first line of the class docstring; for a class without one, its name and (for a
    cell) its state count, so that no listing shows a blank."""
    doc = (cls.__dict__.get("__doc__") or "").strip()
    if doc:
        return doc.split("\n")[0]
    states = getattr(cls, "num_states", None)
    return f"{cls.__name__} ({states} state{'s' if states != 1 else ''})" if states else cls.__name__


def list_cells():
    """Registered cells: dicts with name, plugin, distribution, aliases, doc."""
    return _listing("cells")


def list_tasks():
    return _listing("tasks")


def list_plugins():
    _manager()
    return [vars(p).copy() for p in _state.plugins.values()]


def raise_if_user_code(exc, kind, cls, where, require_frame=True):
    """Raise ``exc`` as a one-line ``UserCodeError`` if it came out of plugin class ``cls``'s
    own code (its file is in the traceback); return otherwise (the caller re-raises)."""
    wrapped = wrap_user_code(exc, kind, cls, provider_of(cls), where, require_frame=require_frame)
    if wrapped is not None:
        raise wrapped from exc
