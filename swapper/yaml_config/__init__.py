"""Load an existing llama-swap ``config.yaml`` into a :class:`~swapper.config.SwapperConfig`.

Keys keep llama-swap's meaning. ``${env.X}`` is substituted first (loading
fails if X is unset), then user macros (global, overridden per model; a macro
may use macros defined before it) and ``${MODEL_ID}``. ``${PORT}`` stays in
place for the spawner to fill (in ``cmd`` and ``proxy``; in ``metadata`` when
listed) and ``${PID}`` stays in ``cmdStop``. Commands are split with
:mod:`shlex`, never run by a shell.

llama-swap's routing keys load too: ``selectors``, ``profiles``, ``peers``
(:mod:`swapper.peers`), ``filters.setParamsByID``, ``capabilities``,
``includeAliasesInList`` and fifo ``priority``. Where llama-swap's own example is
only illustrative, this loader is more tolerant: a preload, selector target,
profile pin, priority or group member naming an undefined model is reported
and ignored rather than fatal.

Extensions: ``memoryBudgetMB``, ``loadWaitTimeout``, ``maxQueueWait`` and
``sendLoadingState`` (global), ``memoryMB`` and ``sendLoadingState`` (per model), and
``bodyIdle`` in a model's ``timeouts`` block (beside llama-swap's ``connect`` and
``responseHeader``; seconds, 0 = none). Keys the
loader does not support are listed, with their path, in
``config.extra["unsupported"]``; the rest of the config still loads.

Split as llama-swap splits its ``internal/config``: :mod:`.source` (the file's lines,
warnings and typed values), :mod:`.macros`, :mod:`.models` (models, filters, peers),
:mod:`.routing` (matrix, groups, priority, selectors, profiles) and :mod:`.load`.
"""

from .load import load_yaml_config, parse_yaml_config

__all__ = ["load_yaml_config", "parse_yaml_config"]
