"""Selections on disk: ``SAVE_DIR/subset/epoch_E.pt``, written atomically, never replaced.

fairseq rebuilds (and fast-forwards) the epoch's iterator on resume *before* it restores the
task's state, and the model it would featurise then is the mid-epoch one: so the subset of an
epoch is read back from this file, never recomputed, and the checkpoint holds its hash.

A selection made with other options (``settings``) than the one stored for its epoch (a resume
with ``--gpts-allow-option-change``) goes to ``epoch_E.S.pt``, S naming its settings: the
stored one stays.
"""

import hashlib
import json
import os

import torch

SUBSET_DIR = "subset"
DAMAGED = ("restore it from a copy; or move it away and resume with --reset-dataloader (the epoch's selection is "
           "then made again from the current model, so the run differs from the original)")


def subset_hash(indices: torch.Tensor) -> str:
    """sha256 of the sorted block indices (int64, little-endian)."""
    data = indices.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def settings_name(settings: dict) -> str:
    """12 hex digits of the sha256 of ``settings`` (as sorted JSON): the S of ``epoch_E.S.pt``."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def subset_file(epoch: int, settings: dict | None = None) -> str:
    """The selection file of ``epoch`` relative to the save dir: ``subset/epoch_E.pt``, or with
    ``settings`` the file of a selection made with them beside it."""
    name = f"epoch_{epoch}.pt" if settings is None else f"epoch_{epoch}.{settings_name(settings)}.pt"
    return os.path.join(SUBSET_DIR, name)


def subset_path(save_dir: str, epoch: int, settings: dict | None = None) -> str:
    return os.path.join(save_dir, subset_file(epoch, settings))


def save_subset(save_dir: str, epoch: int, indices: torch.Tensor, info: dict, file: str | None = None) -> str:
    """Write the selection of ``epoch`` to ``file`` in the save dir (default ``subset_file(epoch)``;
    tmp file + rename: a killed run never leaves half a file); returns its hash."""
    path = os.path.join(save_dir, file or subset_file(epoch))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = subset_hash(indices)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"indices": indices.to(torch.int64), "hash": digest, "epoch": epoch, **info}, tmp)
    os.replace(tmp, path)
    return digest


def read_subset(path: str) -> dict | None:
    """The selection stored at ``path`` (its hash checked against its content), or None; a
    ValueError naming the file and what to do when it cannot be read."""
    if not os.path.exists(path):
        return None
    try:
        record = torch.load(path, weights_only=True)
        intact = subset_hash(record["indices"]) == record["hash"]
    except Exception as error:  # torch reports a truncated file as RuntimeError, others as EOFError, KeyError...
        reason = str(error).split(". ")[0] or type(error).__name__  # torch goes on about "your checkpoint"
        raise ValueError(f"{path} cannot be read as a subset selection ({reason}): {DAMAGED}") from None
    if not intact:
        raise ValueError(f"{path} is corrupt: its indices do not match its hash: {DAMAGED}")
    return record


def load_subset(save_dir: str, epoch: int) -> dict | None:
    """The selection stored as ``epoch_E.pt``, or None."""
    return read_subset(subset_path(save_dir, epoch))


def find_subset(save_dir: str, epoch: int, settings: dict) -> tuple[str, dict] | None:
    """(file, record) of the stored selection of ``epoch`` made with ``settings``, or None."""
    for file in (subset_file(epoch), subset_file(epoch, settings)):
        record = read_subset(os.path.join(save_dir, file))
        if record is not None and record.get("settings") == settings:
            return file, record
    return None


def new_subset_file(save_dir: str, epoch: int, settings: dict) -> str:
    """Where a new selection of ``epoch`` made with ``settings`` goes: ``subset/epoch_E.pt``
    unless a selection is stored there already (then ``epoch_E.S.pt``): nothing is replaced."""
    file = subset_file(epoch)
    return file if not os.path.exists(os.path.join(save_dir, file)) else subset_file(epoch, settings)
