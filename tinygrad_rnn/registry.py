"""The registry's tables: which plugins are loaded, and which cell and task names they
registered. ``plugins.py`` fills them; ``cell.py`` reads them to name a cell's plugin in
its errors (which is why they live here, below both).
"""
import sys
from dataclasses import dataclass, field


@dataclass
class PluginInfo:
    name: str
    source: str                 # builtin, entry point, env, explicit, test
    distribution: str = ""
    status: str = "ok"          # ok or the one-line error
    cells: list = field(default_factory=list)
    tasks: list = field(default_factory=list)


@dataclass
class Entry:
    cls: type
    plugin: str
    aliases: tuple = ()


class _State:
    def __init__(self):
        self.pm = None
        self.plugins = {}        # plugin name -> PluginInfo
        self.cells = {}          # name or alias -> Entry
        self.tasks = {}
        self.explicit = []       # module names / paths requested with --plugin
        self.warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)


_state = _State()


def provider_of(cls):
    """The plugin that registered ``cls`` ("unregistered" if none did)."""
    if _state.pm is not None:
        for table in (_state.cells, _state.tasks):
            for e in table.values():
                if e.cls is cls:
                    return e.plugin
    return "unregistered"
