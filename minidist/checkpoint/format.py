"""The on-disk format of a checkpoint: a folder per step, one shard per rank, a manifest.

::

    DIR/
      latest                      "step_00000006" — written last, by rank 0, atomically
      step_00000006/
        manifest.json             format version, config, world layout, step, per-file checksums
        rank_00000.npz            rank 0's named arrays (+ its metadata, key "__meta__")
        rank_00001.npz            …

**Atomic writes.** Every file is written under a temporary name in the same folder and
then renamed with ``os.replace`` — on POSIX a rename within one file system is atomic, so a
reader sees the old file or the whole new one, never half of it. The manifest is written
only after every rank's shard is on disk, and ``latest`` only after the manifest: a save
that dies midway leaves ``latest`` naming the previous complete checkpoint (Megatron-LM's
``latest_checkpointed_iteration.txt`` plays the same role).

**Checksums.** The manifest records the size and SHA-256 of every shard; a reader checks
them all *before* applying anything, so a truncated or corrupted file is refused by name
and nothing is half-loaded.

**Fragments.** A shard holds *fragments*: a piece of one named full array (a parameter, its
fp32 master, an optimizer moment), with where it sits in the full array — a flat range
``[lo, hi)`` of the row-major flattening (ZeRO's flat chunks), or one ``[lo, hi)`` per
dimension (a tensor-parallel slice). Any layout that can say where its pieces sit can
save and be resharded (DeepSpeed's universal checkpoint idea).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile

import numpy as np

FORMAT = "minidist-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not fit this run. ``path`` is
    the file (or folder) at fault; the message says what does not match and what to do."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"checkpoint {self.path}: {message}")


def step_dirname(step: int) -> str:
    """The folder of the checkpoint taken after ``step`` optimizer steps."""
    return f"step_{int(step):08d}"


def shard_filename(rank: int) -> str:
    return f"rank_{int(rank):05d}.npz"


# ----------------------------------------------------------------------------- atomic writes

def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent/old or complete."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())          # the bytes are on disk before the name points at them
        os.replace(tmp, path)             # the atomic step
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's own content (every key but ``manifest_sha256``, canonical JSON):
    a manifest edited by hand — a step changed, a file dropped — no longer matches it."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256(json.dumps(body, sort_keys=True).encode())


# ----------------------------------------------------------------------------- shards

def npz_bytes(arrays: dict) -> bytes:
    """Named arrays as the bytes of one ``.npz`` file (built in memory, written atomically)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def encode_shard(arrays: dict, meta: dict) -> bytes:
    """A rank's named arrays and its metadata (JSON, key ``__meta__``) as one ``.npz`` file."""
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return npz_bytes({**arrays, META_KEY: meta_bytes})


def decode_shard(path: str, data: bytes) -> tuple[dict, dict]:
    """(arrays, meta) of a shard file's bytes; a file that is not a shard is refused by name."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except Exception as e:   # noqa: BLE001 - zip, npy and JSON errors all mean "not a readable shard"
        raise CheckpointError(path, f"is not a readable shard ({type(e).__name__}: {e}); the file is "
                                    f"damaged: load an earlier checkpoint") from None
    return arrays, meta


# ----------------------------------------------------------------------------- finding a checkpoint

def resolve(path: str) -> str:
    """The step folder that ``path`` names: ``path`` itself if it holds a manifest, else the
    folder its ``latest`` file names. Raises :class:`CheckpointError` otherwise."""
    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "does not exist; give the --save folder of an earlier run")
    if not os.path.isdir(path):
        raise CheckpointError(path, "is a file, not a checkpoint folder; give the folder passed to --save")
    if os.path.exists(os.path.join(path, MANIFEST)):
        return path
    latest = os.path.join(path, LATEST)
    if not os.path.exists(latest):
        if any(n.startswith("rank_") for n in os.listdir(path)):
            raise CheckpointError(os.path.join(path, MANIFEST), "is missing: this save did not complete; "
                                                                "load the folder above it (its 'latest')")
        raise CheckpointError(latest, "is missing: no complete checkpoint was saved in this folder")
    with open(latest) as f:
        name = f.read().strip()
    if name.endswith(".json"):           # a save point of minidist.distill.resume
        raise CheckpointError(path, "is a distillation checkpoint (teacher then student): resume it with its "
                                    "distillation config, or give one model's folder in it (teacher or student)")
    step_dir = os.path.join(path, name)
    if not name or os.sep in name or not os.path.isdir(step_dir):
        raise CheckpointError(latest, f"names {name!r}, which is not a checkpoint folder in {path}")
    return step_dir


def read_json(path: str, missing: str = "is missing: this save did not complete"):
    """A manifest's JSON, or a :class:`CheckpointError` saying it is ``missing`` or damaged."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"is not valid JSON ({e}); the file is damaged") from None


def read_manifest(step_dir: str) -> dict:
    """The manifest of ``step_dir``, checked for format and version."""
    path = os.path.join(step_dir, MANIFEST)
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(path, f"is not a minidist checkpoint manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"has format version {manifest.get('format_version')!r}; this minidist "
                                    f"reads version {FORMAT_VERSION}")
    for key in ("step", "world_size", "files", "config", "layout", "manifest_sha256"):
        if key not in manifest:
            raise CheckpointError(path, f"has no {key!r} entry; the file is damaged")
    if manifest["manifest_sha256"] != manifest_checksum(manifest):
        raise CheckpointError(path, "does not match its own SHA-256 (manifest_sha256): it was edited or "
                                    "damaged after the save; load an intact checkpoint")
    return manifest


def read_shards(step_dir: str, manifest: dict) -> list[tuple[dict, dict]]:
    """Every rank's (arrays, meta), each file checked against the manifest's size and
    SHA-256 first. Nothing is returned unless every file is intact."""
    files = manifest["files"]
    if len(files) != manifest["world_size"]:
        raise CheckpointError(os.path.join(step_dir, MANIFEST), f"lists {len(files)} shard(s) for a world of "
                                                                f"{manifest['world_size']}; the file is damaged")
    blobs = []
    for entry in files:
        path = os.path.join(step_dir, entry["file"])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(path, "is missing; the checkpoint is incomplete: load an earlier one") from None
        if len(data) != entry["bytes"]:
            raise CheckpointError(path, f"has {len(data)} bytes but the manifest says {entry['bytes']}: "
                                        f"the file is truncated or was changed")
        if sha256(data) != entry["sha256"]:
            raise CheckpointError(path, "does not match its SHA-256 checksum in the manifest: the file is "
                                        "corrupted")
        blobs.append((path, data))
    return [decode_shard(path, data) for path, data in blobs]
