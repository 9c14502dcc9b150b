"""The plugin contract: the hooks a tinygrad_rnn plugin may implement.

A plugin is any module (or object) with functions decorated ``@tinygrad_rnn.hookimpl``
and named after a hook below. Built-in cells use exactly this contract.
"""
import pluggy

hookspec = pluggy.HookspecMarker("tinygrad_rnn")
hookimpl = pluggy.HookimplMarker("tinygrad_rnn")


@hookspec
def register_cells(register):
    """Register recurrent cells.

    Called once per plugin when the registry is first needed (built-ins first,
    then entry points, then ``TINYGRAD_RNN_PLUGINS``, then ``--plugin``).
    Call ``register(cell_class, aliases=())`` for each ``tr.Cell`` subclass.
    The class is checked at once (name, num_states, step); a name that is already
    taken is an error naming both plugins. Return value: ignored.
    """


@hookspec
def register_tasks(register):
    """Register sequence tasks for ``train`` and ``diagnose``.

    Call ``register(task_class, aliases=())`` for each ``tr.tasks.Task`` subclass.
    Same ordering and conflict rules as ``register_cells``. Return value: ignored.
    """
