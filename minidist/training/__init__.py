"""minidist.training: the single-rank-or-parallel training loop and what feeds it.

==================  ==================================================================
module              what a student finds there
==================  ==================================================================
:mod:`.data`        the shipped text corpus, the character tokenizer, synthetic tasks
:mod:`.config`      the DeepSpeed-style JSON config: validation and clear errors
:mod:`.trainer`     :class:`Trainer`: config → model, data, optimizer, strategy → steps
==================  ==================================================================

The command line (``python -m minidist.train``) sits above this package, beside the
other entry points (``minidist.estimate``, ``minidist.demo``).
"""
