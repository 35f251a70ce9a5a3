"""A pool network: its kept states with their validation accuracy (POOL/net-*.pt), every training
example's forgetting events (POOL/net-*.forgetting.parquet) and the manifest that commits both.

Readers: the shards that draw networks from a pool (``pool_states``), the forgetting baseline
(``forgetting_scores``), the checks before a run starts (``check_pool_ready``) and the pictures.
"""

from __future__ import annotations

import io
import socket
import statistics
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel

from orchestrator import commits, storage
from orchestrator.commits import FileEntry, UnitState
from orchestrator.pool_dir import PoolDir, network_name
from orchestrator.errors import RunError
from workers.data.tensor_table import from_parquet_bytes, to_parquet_bytes
from workers.matching import PoolStates
from workers.pool_training import EpochCheckpoint, TrainedNetwork
from workers.seeding import derive_seed

# A never-learned example's score per network: above any count of forgetting events, so the
# score's quotient by it is how many networks never learned the example.
NEVER_LEARNED = 1_000_000
BINS = tuple(range(0, 100, 10))  # accuracy groups of the report and of error messages, in percent


class NetworkManifest(BaseModel):
    """The commit record of one pool network."""

    format: int = 1
    index: int
    seed: int
    files: dict[str, FileEntry]  # states, forgetting
    steps: list[int]
    val_accuracy: list[float]
    train_images: int
    wall_time_s: float
    device: str
    host: str
    pool: str | None = None  # the key of the pool it was trained for; None: made before identities
    test_accuracy: float | None = None  # of the final state on the real test split; None: made before it was kept


def network_seed(pool: PoolDir, index: int) -> int:
    return derive_seed(pool.record.settings.seed, "pool-network", index)


def network_state(pool: PoolDir, index: int, *, deep: bool = True) -> UnitState[NetworkManifest]:
    st = commits.read_state(pool, pool.manifest(index), NetworkManifest, deep=deep)
    if st.manifest is not None and st.manifest.pool not in (None, pool.record.key):
        return UnitState("foreign", f"trained for pool {st.manifest.pool}, not {pool.record.key}", st.manifest)
    if st.state == "pending" and commits.failure_of(pool.failure(index)) is not None:
        return UnitState("failed", commits.failure_of(pool.failure(index)) or "")
    return st


def commit_network(pool: PoolDir, index: int, trained: TrainedNetwork, labels: np.ndarray, train_rows: list[int],
                   started: float, device: torch.device, test_accuracy: float | None = None) -> NetworkManifest:
    """Write the network's states and forgetting counts, then the manifest that commits them."""
    buf = io.BytesIO()
    torch.save({"steps": trained.steps, "val_accuracy": trained.val_accuracy, "states": trained.states}, buf)
    files = {"states": commits.write_file(pool, pool.states_file(index), buf.getvalue(), len(trained.steps)),
             "forgetting": commits.write_file(pool, pool.forgetting_file(index),
                                              _forgetting_table(labels, train_rows, trained), len(train_rows))}
    manifest = NetworkManifest(index=index, seed=network_seed(pool, index), files=files, steps=trained.steps,
                               val_accuracy=trained.val_accuracy, train_images=len(train_rows),
                               wall_time_s=round(time.time() - started, 3), device=str(device),
                               host=socket.gethostname(), pool=pool.record.key, test_accuracy=test_accuracy)
    commits.write_manifest(pool.manifest(index), manifest)
    storage.remove(pool.checkpoint(index))
    return manifest


# ------------------------------------------------------------------ mid-network checkpoints
def write_epoch_checkpoint(pool: PoolDir, index: int, checkpoint: EpochCheckpoint, device: torch.device) -> None:
    """A network's state after an epoch, with what a resumed training must share to continue it
    byte for byte (the device type and thread count, as for a shard's checkpoint)."""
    buf = io.BytesIO()
    torch.save({"device": device.type, "threads": torch.get_num_threads(), "checkpoint": checkpoint}, buf)
    storage.write_bytes_atomic(pool.checkpoint(index), buf.getvalue())


def read_epoch_checkpoint(pool: PoolDir, index: int, device: torch.device) -> EpochCheckpoint | None:
    """The network's last epoch checkpoint, or None: none kept, unreadable, or made on another device
    type or thread count (training then starts over, so that its bytes come from one stream)."""
    path = pool.checkpoint(index)
    if not storage.exists(path):
        return None
    try:
        saved = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a torn or foreign file: train from the start
        return None
    same = saved.get("device") == device.type and saved.get("threads") == torch.get_num_threads()
    return saved["checkpoint"] if same else None


def _forgetting_table(labels: np.ndarray, train_rows: list[int], trained: TrainedNetwork) -> bytes:
    """One row per training example: its class, its position among its class's train images
    (the order every reader gives), its forgetting events and whether it was ever learned."""
    first = {int(c): int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)}
    rows = np.asarray(train_rows)
    classes = labels[rows]
    table = pa.table({
        "class_id": pa.array(classes.astype(np.int32)),
        "index": pa.array((rows - np.array([first[int(c)] for c in classes])).astype(np.int32)),
        "events": pa.array(trained.forgetting.numpy().astype(np.int32)),
        "learned": pa.array(trained.learned.numpy()),
    })
    return to_parquet_bytes(table)


# ------------------------------------------------------------------ reading a pool
def check_pool_ready(pool: PoolDir, group: tuple[float, float] | None, make: str) -> None:
    """Before any shard starts: the pool exists, every network verifies, and the group holds
    states. ``make``: the command that makes or finishes the pool."""
    if not pool.exists():
        raise RunError(f"no pool made from this run's data and settings at {pool.uri}; make it first with "
                       f"`{make}`, or add --make-pool to this command")
    problems = [f"{network_name(i)} is {st.state} {st.detail}".strip() for i in range(pool.networks)
                if (st := network_state(pool, i)).state != "committed"]
    if problems:
        raise RunError(f"the pool at {pool.uri} is not complete ({'; '.join(problems[:5])}); `{make}` trains what "
                       "it lacks")
    if group is not None and not _in_group(accuracies(pool), group):
        counts = ", ".join(f"{lo}-{lo + 10}%: {n}" for lo, n in sorted(accuracy_bins(pool).items()))
        raise RunError(f"condense.pool_group {list(group)} holds no state of the pool; its states by validation "
                       f"accuracy: {counts}; choose a group among those")


def accuracies(pool: PoolDir) -> list[float]:
    """Validation accuracy (%) of every kept state of every network, from the manifests."""
    return [100 * a for i in range(pool.networks)
            for a in network_state(pool, i, deep=False).manifest.val_accuracy]  # type: ignore[union-attr]


def accuracy_bins(pool: PoolDir) -> dict[int, int]:
    return dict(Counter(min(int(a // 10) * 10, 90) for a in accuracies(pool)))


def _in_group(accs: list[float], group: tuple[float, float]) -> list[int]:
    lo, hi = group
    return [i for i, a in enumerate(accs) if lo <= a < hi or (hi == 100 and a == 100)]


def final_accuracies(pool: PoolDir) -> list[float | None]:
    """Each network's final validation accuracy, from its manifest read once (None: not committed,
    or no pool made)."""
    if not pool.exists():
        return [None] * pool.networks
    return [st.manifest.val_accuracy[-1] if (st := network_state(pool, i, deep=False)).state == "committed"  # type: ignore[union-attr]
            else None for i in range(pool.networks)]


def best_network(finals: Sequence[float | None]) -> int:
    """The network whose final state has the best validation accuracy (the lowest index on a tie)
    among the committed ones (``final_accuracies``)."""
    return max((i for i, a in enumerate(finals) if a is not None), key=lambda i: (finals[i], -i))


def real_accuracy(finals: Sequence[float | None]) -> float | None:
    """acc(real, hard): the mean final validation accuracy of the pool's committed networks
    (trained on the whole training split with hard labels; ``final_accuracies``); None without one."""
    committed = [a for a in finals if a is not None]
    return statistics.fmean(committed) if committed else None


def read_states(pool: PoolDir, index: int) -> dict:
    """A committed network's kept states: {"steps", "val_accuracy", "states"}, verified as read."""
    manifest = network_state(pool, index, deep=False).manifest
    return torch.load(io.BytesIO(commits.read_checked(pool, manifest.files["states"])), map_location="cpu",
                      weights_only=True)


def pool_states(pool: PoolDir, group: tuple[float, float] | None) -> PoolStates:
    """What a shard draws from: the states in the accuracy group (all with None), network by
    network, step by step, and each network's first and last states."""
    chosen, initial, final = [], {}, {}
    for i in range(pool.networks):
        saved = read_states(pool, i)
        accs = [100 * a for a in saved["val_accuracy"]]
        chosen += [(i, saved["states"][k]) for k in (range(len(accs)) if group is None else _in_group(accs, group))]
        initial[i], final[i] = saved["states"][0], saved["states"][-1]
    return PoolStates(chosen, initial, final)


def forgetting_scores(pool: PoolDir, class_ids: list[int]) -> dict[int, np.ndarray]:
    """Per class, a score per position among its train images, summed over the pool's networks:
    the forgetting events, a never-learned example counting as forgotten most; NaN for the
    validation examples (never presented)."""
    scores: dict[int, np.ndarray] = {c: np.full(pool.record.info.train_counts[c], np.nan) for c in class_ids}
    for i in range(pool.networks):
        manifest = network_state(pool, i, deep=False).manifest
        table = from_parquet_bytes(commits.read_checked(pool, manifest.files["forgetting"])).to_pydict()
        for c, k, events, learned in zip(table["class_id"], table["index"], table["events"], table["learned"]):
            if c in scores:
                scores[c][k] = np.nan_to_num(scores[c][k]) + (events if learned else NEVER_LEARNED)
    return scores
