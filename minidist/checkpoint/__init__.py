"""minidist.checkpoint: save, resume bit for bit, reshard, consolidate.

=====================  ===========================================================================
:mod:`.format`         the files: a folder per step, a shard per rank, the manifest, ``latest``;
                       atomic writes and checksums
:mod:`.layout`         what each data-parallel layout holds, as fragments of named full arrays
:mod:`.model_parallel` tensor slices and pipeline stages as fragments of the one-rank arrays
:mod:`.save`           ``--save DIR --save-interval N``: every rank its shard, rank 0 the manifest
:mod:`.reshard`        shards → full named arrays (DeepSpeed's universal checkpoint)
:mod:`.load`           ``--load DIR``: verify everything, then each rank takes its part
:mod:`.consolidate`    ``python -m minidist.checkpoint consolidate DIR OUT.npz`` (``zero_to_fp32``)
                       and ``inspect DIR``
=====================  ===========================================================================

In a program::

    ckpt = read_checkpoint("ckpt")            # verified and assembled, before any rank starts
    trainer = Trainer(config, comm)
    load_into(trainer, ckpt)                  # any world size or ZeRO stage
    trainer.fit(on_step=saver("ckpt", 100))
"""
from .consolidate import consolidate, describe
from .format import FORMAT_VERSION, CheckpointError
from .load import Checkpoint, check_compatible, load_into, load_weights, read_checkpoint
from .reshard import assemble, full_state_dict
from .save import save_checkpoint, saver

__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "assemble", "check_compatible", "consolidate",
           "describe", "full_state_dict", "load_into", "load_weights", "read_checkpoint", "save_checkpoint", "saver"]
