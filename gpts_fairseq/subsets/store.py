"""Selections on disk: ``SAVE_DIR/subset/epoch_E.pt``, written atomically, named by a hash.

fairseq rebuilds (and fast-forwards) the epoch's iterator on resume *before* it restores the
task's state, and the model it would featurise then is the mid-epoch one: so the subset of an
epoch is read back from this file, never recomputed, and the checkpoint holds its hash.
"""

import hashlib
import os

import torch

SUBSET_DIR = "subset"
DAMAGED = ("restore it from a copy; or move it away and resume with --reset-dataloader (the epoch's selection is "
           "then made again from the current model, so the run differs from the original)")


def subset_hash(indices: torch.Tensor) -> str:
    """sha256 of the sorted block indices (int64, little-endian)."""
    data = indices.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def subset_file(epoch: int) -> str:
    """The selection file of ``epoch``, relative to the save dir."""
    return os.path.join(SUBSET_DIR, f"epoch_{epoch}.pt")


def subset_path(save_dir: str, epoch: int) -> str:
    return os.path.join(save_dir, subset_file(epoch))


def save_subset(save_dir: str, epoch: int, indices: torch.Tensor, info: dict) -> str:
    """Write the selection of ``epoch`` (tmp file + rename: a killed run never leaves half a
    file); returns its hash."""
    path = subset_path(save_dir, epoch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = subset_hash(indices)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"indices": indices.to(torch.int64), "hash": digest, "epoch": epoch, **info}, tmp)
    os.replace(tmp, path)
    return digest


def load_subset(save_dir: str, epoch: int) -> dict | None:
    """The stored selection of ``epoch`` (its hash checked against its content), or None; a
    ValueError naming the file and what to do when it cannot be read."""
    path = subset_path(save_dir, epoch)
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
