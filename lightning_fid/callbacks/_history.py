"""Every evaluation's float64 values: kept in memory, written by rank 0 as JSON, readable after spawn.

Lightning stores logged scalars as float32, so the exact values live here. Rank 0 writes them to
``lightning_fid_history.json`` next to the logger's files after every evaluation, as
``{"run": ..., "evaluations": [...], "final": {...}, "card": {...}}`` (the protocol card: what
determines the values). With a strategy
that runs training in spawned processes (``ddp_spawn``), the callback object the user holds never
sees an evaluation; rank 0 therefore also writes the history under a per-callback token in the
temporary folder, and :meth:`History.entries` reads it back when its own list is empty.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_fid.engine._files import atomic_write

HISTORY_FILE = "lightning_fid_history.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _from_json(value: Any) -> Any:
    if value is None:
        return math.nan
    if value in ("inf", "-inf"):
        return float(value)
    return value


class History:
    """The evaluations (dicts of floats plus ``epoch`` / ``step``) and final values of one callback."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.token = uuid.uuid4().hex
        self.owner_pid = os.getpid()  # the process that made the callback (spawned copies keep it)
        self.run_id = uuid.uuid4().hex  # this fit's: a resumed fit takes it back from the checkpoint
        self._log_path: Path | None = None  # the file this run writes in the output folder, once chosen
        self._entries: list[dict[str, Any]] = []
        self._final: dict[str, float] = {}
        self.card: dict[str, Any] | None = None  # the protocol card of this run's values

    @property
    def spawn_file(self) -> Path:
        """Where rank 0 also writes the history, for the process that launched a spawn strategy: a
        folder of this user's (another user's ``lightning_fid`` folder in a shared /tmp is not ours)."""
        user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
        return Path(tempfile.gettempdir()) / f"lightning_fid-{user}" / f"history-{self.token}.json"

    @property
    def file_name(self) -> str:
        """``lightning_fid_history[_<name>].json``: one file per callback prefix."""
        suffix = "".join(c if c.isalnum() else "_" for c in self.name).strip("_")
        return HISTORY_FILE if not suffix else HISTORY_FILE.replace(".json", f"_{suffix}.json")

    def _read_back(self) -> None:
        """In the launching process of a spawn strategy: take the spawned run's history, then delete
        its file (nothing accumulates in the temporary folder)."""
        if not self._entries and not self._final and self.spawn_file.is_file():
            saved = json.loads(self.spawn_file.read_text())
            self._entries = [{k: _from_json(v) for k, v in e.items()} for e in saved["evaluations"]]
            self._final = {k: _from_json(v) for k, v in saved["final"].items()}
            self.card = saved.get("card")
            self.spawn_file.unlink(missing_ok=True)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The evaluations so far (read back from the spawned run's file when this process ran none)."""
        self._read_back()
        return self._entries

    @property
    def final(self) -> dict[str, float]:
        """The end-of-fit values (``final_*`` keys), read back likewise."""
        self._read_back()
        return self._final

    def reset(self) -> None:
        """Forget every evaluation and final value (a new run)."""
        self._entries = []
        self._final = {}
        self.card = None
        self.run_id = uuid.uuid4().hex
        self._log_path = None

    def replace(self, entries: list[dict[str, Any]]) -> None:
        """Set the entries (from a checkpoint)."""
        self._entries = list(entries)

    def file_for(self, trainer: pl.Trainer) -> Path | None:
        """``lightning_fid_history[_<name>].json`` in the output folder (see :func:`output_folder`), or
        None. A collective call under DDP (``trainer.log_dir`` broadcasts rank 0's folder)."""
        folder = output_folder(trainer)
        return None if folder is None else folder / self.file_name

    def append(self, entry: dict[str, Any], trainer: pl.Trainer | None) -> None:
        """Record one evaluation; rank 0 rewrites the JSON files (a collective call under DDP)."""
        self._entries.append(entry)
        self._write(trainer)

    def set_card(self, card: dict[str, Any], trainer: pl.Trainer | None) -> None:
        """Record the run's protocol card; rank 0 rewrites the JSON files (a collective call under DDP)."""
        self.card = card
        self._write(trainer)

    def set_final(self, values: dict[str, float], trainer: pl.Trainer | None) -> None:
        """Record the end-of-fit values; rank 0 rewrites the JSON files (a collective call under DDP)."""
        self._final = dict(values)
        self._write(trainer)

    def _own_file(self, path: Path | None) -> Path | None:
        """``path``, or the next free ``..-2.json``, ``..-3.json`` when another run's history is there (runs
        in one folder without a logger's versions): a run never overwrites another's history."""
        if path is None or self._log_path is not None and self._log_path.parent == path.parent:
            return self._log_path if path is not None else None
        candidate, n = path, 1
        while candidate.exists() and _run_of(candidate) != self.run_id:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if candidate != path:
            warnings.warn(
                f"lightning_fid: {path} holds another run's history; this run writes {candidate.name}", stacklevel=4
            )
        self._log_path = candidate
        return candidate

    def _write(self, trainer: pl.Trainer | None) -> None:
        if trainer is None:
            return
        log_file = self.file_for(trainer)  # every rank: trainer.log_dir is a collective (a broadcast)
        if not trainer.is_global_zero:
            return
        payload = {
            "run": self.run_id,
            "evaluations": [{k: _jsonable(v) for k, v in e.items()} for e in self._entries],
            "final": {k: _jsonable(v) for k, v in self._final.items()},
            "card": self.card,
        }
        text = json.dumps(payload, indent=1)
        log_file = self._own_file(log_file)
        spawned = os.getpid() != self.owner_pid  # the launching process reads this file back
        for path in [p for p in (log_file, self.spawn_file if spawned else None) if p is not None]:
            try:
                with atomic_write(path, suffix=".json") as tmp:
                    tmp.write_text(text)
            except OSError as exc:  # a full disk or a folder we may not write: the run goes on
                warnings.warn(
                    f"lightning_fid: cannot write the evaluation history to {path} ({exc}); the values "
                    "are still logged and kept in the callback's history",
                    stacklevel=3,
                )


def _run_of(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None


def output_folder(trainer: pl.Trainer) -> Path | None:
    """Where the callback writes files (history JSON, PNG grids): the first logger's folder; without a
    logger the trainer's ``default_root_dir`` when it was set; else nowhere (never into the working
    directory the user did not point at). A collective call under DDP (``trainer.log_dir``)."""
    if trainer.loggers:
        return Path(trainer.log_dir or trainer.default_root_dir)
    root = Path(trainer.default_root_dir).resolve()
    return None if root == Path.cwd().resolve() else root


def _describe(identity: Any) -> str:
    if isinstance(identity, dict):
        options = ", ".join(f"{k}={v!r}" for k, v in identity.items() if k not in ("metric", "key"))
        return f"{str(identity.get('metric', '?')).rsplit('.', 1)[-1]}({options})[{identity.get('key')}]"
    return repr(identity)


def restore_state(
    state: dict[str, Any], seed: int, metrics: list[dict[str, Any]], num_samples: int
) -> tuple[list[dict[str, Any]], float | None, int]:
    """(history, best, seed) from a callback checkpoint state, checked. The checkpoint's seed wins (the
    same noise as before the interruption); the constructor's metrics (with their options) and sample
    count win; every conflict warns saying so. A corrupt state raises naming the key.

    Raises:
        ValueError: a corrupt state, naming the key.
    """
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ValueError(f"GenerativeMetrics checkpoint state: 'history' must be a list of dicts, got {history!r:.80}")
    best = state.get("best")
    if best is not None and not isinstance(best, (int, float)):
        raise ValueError(f"GenerativeMetrics checkpoint state: 'best' must be a number or None, got {best!r:.80}")
    saved_seed = state.get("seed", seed)
    if not isinstance(saved_seed, int):
        raise ValueError(f"GenerativeMetrics checkpoint state: 'seed' must be an integer, got {saved_seed!r:.80}")
    if saved_seed != seed:
        rank_zero_warn(
            f"GenerativeMetrics: the checkpoint's seed={saved_seed} wins over seed={seed}, so resumed "
            "evaluations draw the same fixed noise as before the interruption"
        )
    saved_metrics = state.get("metrics", metrics)
    if not isinstance(saved_metrics, list):
        raise ValueError(f"GenerativeMetrics checkpoint state: 'metrics' must be a list, got {saved_metrics!r:.80}")
    if all(isinstance(m, str) for m in saved_metrics):  # a checkpoint of lightning_fid 0.1: metric names only
        metrics = [m["key"] for m in metrics]
    if saved_metrics != metrics:
        old = [_describe(m) for m in saved_metrics if m not in metrics] or "no other metric"
        new = [_describe(m) for m in metrics if m not in saved_metrics] or "no other metric"
        rank_zero_warn(
            f"GenerativeMetrics: the checkpoint evaluated {old}; the constructor's {new} win, so the "
            "history mixes both (values before and after the resume are not comparable)"
        )
    saved_n = state.get("num_samples", num_samples)
    if saved_n != num_samples:
        rank_zero_warn(
            f"GenerativeMetrics: resuming with num_samples={num_samples} (the constructor wins) but the "
            f"checkpoint used {saved_n}: values before and after are not comparable"
        )
    return history, best, saved_seed
