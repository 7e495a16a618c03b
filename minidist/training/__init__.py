"""minidist.training: the single-rank-or-parallel training loop and what feeds it.

===========================  ========================================================================
module                       what a student finds there
===========================  ========================================================================
:mod:`.data`                 the shipped text corpus, the character tokenizer, synthetic tasks
:mod:`.config_schema`        which keys exist, their types and choices; ``ConfigError``
:mod:`.config_distillation`  the ``distillation`` section; a teacher from a checkpoint
:mod:`.config`               ``load_config``: the DeepSpeed-style JSON config, values and consistency
:mod:`.trainer`              :class:`Trainer`: config → model, data, optimizer, strategy → steps
===========================  ========================================================================

The command line (``python -m minidist.train``) sits above this package, beside the
other entry points (``minidist.estimate``, ``minidist.demo``).
"""
