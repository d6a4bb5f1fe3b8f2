"""Resumable steps and the result folder: each step writes a marker (JSON) atomically when it succeeded and is skipped
when the marker exists; commands run as subprocesses with their whole output in a log file and one progress line per
nnU-Net epoch on the console."""

from __future__ import annotations

import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nnunet_unpaired.benchmark.config import FOLDER_FORMAT_VERSION, BenchmarkSpec, RunOptions, say
from nnunet_unpaired.errors import UserError


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def marker_path(root: Path, step: str) -> Path:
    return root / "steps" / f"{step}.json"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (the commands a step ran, including
    the worker processes they waited for)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_step(root: Path, step: str, action: Callable[[Path], Mapping | None], log: Callable[[str], None] = say,
             products: Sequence[Path] = (), must_match: Sequence[str] = ()) -> dict:
    """Run ``action(log_file)`` unless the step's marker exists; write the marker (with the action's result, the
    seconds and the finish time) atomically afterwards and return its content.

    ``products``: files later steps need. When the marker exists but one of them does not (a result folder restored
    from its record, :mod:`nnunet_unpaired.benchmark.archive`), the step runs again, and the keys ``must_match`` of
    its result must equal the recorded ones (UserError otherwise: the recorded runs used other products)."""
    marker = marker_path(root, step)
    previous = json.loads(marker.read_text()) if marker.is_file() else None
    missing = [p for p in products if not Path(p).exists()]
    if previous is not None and not missing:
        log(f"[skip] {step} (finished {previous.get('finished')}, took {previous.get('seconds', 0):.0f} s)")
        return previous
    if previous is not None:
        log(f"[redo] {step}: finished {previous.get('finished')}, but {missing[0]} is missing (a result folder "
            f"restored from its record); running it again")
    log(f"[start] {step}  ({now()})")
    log_file = root / "logs" / f"{step}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start, cpu_start, load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
    result = dict(action(log_file) or {})
    seconds = time.perf_counter() - start
    data = {"step": step, **result, "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu_start,
            "load_average": [load_start, os.getloadavg()[0]], "finished": now()}
    if previous is not None:
        # keys the recorded marker lacks (written by an older version) cannot be compared
        differ = [k for k in must_match if k in previous and json.loads(json.dumps(data.get(k))) != previous[k]]
        if differ:
            raise UserError(f"step {step} was redone in {root} (its products were missing) and gave another result "
                            f"than the recorded one: " + "; ".join(f"{k}: {previous.get(k)!r} recorded, "
                                                                   f"{data.get(k)!r} now" for k in differ)
                            + ". The recorded runs were trained on the old one: start the benchmark over (--restart "
                              "or another --date) or rerun on the machine and software that recorded it.")
        data["redone"] = [*previous.get("redone", []), previous.get("finished")]
    write_json_atomic(marker, data)
    log(f"[done] {step} in {seconds:.0f} s")
    return data


def tool(name: str) -> str:
    """A console script next to the running interpreter (the venv's nnUNetv2_train, ...), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


_EPOCH_KEYS = {"train_loss": "train_loss", "val_loss": "val_loss", "Pseudo dice": "pseudo Dice"}


def run_command(cmd: Sequence[str], env: Mapping[str, str], log_file: Path, log: Callable[[str], None] = say
                ) -> None:
    """Run a command with its whole output in ``log_file``; show one line per nnU-Net epoch; UserError on failure."""
    log("    $ " + " ".join(str(c) for c in cmd))
    epoch: dict[str, str] = {}
    with open(log_file, "a", buffering=1) as out:  # line-buffered: the log can be followed while it runs
        out.write(f"$ {' '.join(str(c) for c in cmd)}\n")
        out.flush()
        proc = subprocess.Popen([str(c) for c in cmd], env=dict(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            text = line.split(": ", 1)[1].strip() if re.match(r"^\d{4}-\d\d-\d\d ", line) else line.strip()
            if m := re.match(r"^Epoch (\d+)$", text):
                epoch = {"epoch": m.group(1)}
            for key, label in _EPOCH_KEYS.items():
                if text.startswith(key + " "):
                    epoch[label] = re.sub(r"np\.float\d*\(([^)]*)\)", r"\1", text[len(key):].strip())
            if text.startswith("Epoch time:") and epoch:
                shown = ", ".join(f"{k} {v}" for k, v in epoch.items() if k != "epoch")
                log(f"      epoch {epoch.get('epoch', '?')}: {shown}, {text[len('Epoch time:'):].strip()}")
                epoch = {}
        code = proc.wait()
    if code != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise UserError(f"{Path(str(cmd[0])).name} failed with exit code {code}. Full output: {log_file}. "
                        f"Last lines:\n{tail}")


def result_folder(spec: BenchmarkSpec, options: RunOptions, names: tuple[str, str]) -> Path:
    date = options.date or datetime.date.today().isoformat()
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", date):
        raise UserError(f"--date {date!r} is not of the form YYYY-MM-DD")
    return Path(options.output).resolve() / f"{names[0]}__{names[1]}__{spec.configuration}__{date}"


def prepare_result_folder(result: Path, spec: BenchmarkSpec, restart: bool, log: Callable[[str], None] = say
                          ) -> None:
    """Create the folder and its ``benchmark.json``; refuse to mix two different benchmarks in one folder."""
    record = result / "benchmark.json"
    if restart and result.exists():
        if not record.is_file():
            raise UserError(f"{result} exists but holds no benchmark.json; refusing to delete a folder the benchmark "
                            f"did not write. Choose another --output.")
        log(f"--restart: deleting {result}")
        shutil.rmtree(result)
    wanted = {"format": FOLDER_FORMAT_VERSION, "spec": spec.as_json()}
    if record.is_file():
        found = json.loads(record.read_text())
        if found != wanted:
            differences = [f"{k}: {found.get('spec', {}).get(k)!r} there, {v!r} now"
                           for k, v in wanted["spec"].items() if found.get("spec", {}).get(k) != v]
            raise UserError(f"{result} holds a benchmark with other settings ({'; '.join(differences) or 'format'}). "
                            f"Rerun with the same options to resume it, pass --restart to start it over, or choose "
                            f"another --output or --date.")
    elif result.exists() and any(result.iterdir()):
        raise UserError(f"{result} exists, is not empty and holds no benchmark.json; choose another --output.")
    else:
        result.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, wanted)
