"""Small shared helpers: errors, devices, seeding, hashing and atomic file writes."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


class DDKitError(Exception):
    """A user-facing problem (bad input, mismatch). The CLI prints it as one line and exits 2."""


def error_line(e: BaseException) -> str | None:
    """The one line the CLI prints for an error the user can act on (exit 2), or None for a bug (traceback):
    a DDKitError; the file system saying no (OSError: disk full, permissions, a symlink loop); memory that
    cannot be had (MemoryError, torch's allocator and CUDA out-of-memory errors, caught after the fact where a
    size could not be checked before the work)."""
    if isinstance(e, DDKitError):
        return str(e)
    if isinstance(e, OSError):  # "No space left on device: PATH", without the errno
        return f"{e.strerror}{f': {e.filename}' if e.filename else ''}" if e.strerror else str(e)
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, MemoryError) or isinstance(e, torch.OutOfMemoryError) or (
            isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)):
        size = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [GMK]iB)", text)
        need = size.group(1) if size else ""
        need = f"{int(need) / 1e9:.1f} GB" if need.isdigit() else need
        return (f"out of memory{f' (an allocation of {need})' if need else ''}: lower the sizes that scale it "
                f"(--ipc, --image-size, --batch-size, --classes-per-group) or use a machine with more memory")
    return None


def memory_available() -> int | None:
    """Bytes of RAM available to a new allocation (Linux MemAvailable; else physical memory; None unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric flag, knob or protocol field, declared beside it (a Config's RANGES)
    and checked in one place (parse_overrides, and the CLI's flag types). A tuple value is checked element
    by element; `size` fixes its length and `ordered` asks for non-decreasing elements."""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    size: int | None = None
    ordered: bool = False

    def holds(self, v) -> bool:
        if isinstance(v, tuple):
            return ((self.size is None or len(v) == self.size) and all(map(self.holds, v))
                    and (not self.ordered or list(v) == sorted(v)))
        return ((self.lo is None or (v > self.lo if self.open_lo else v >= self.lo)) and
                (self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            what = f"above {self.lo:g}" if self.open_lo else f"at least {self.lo:g}"
        elif self.lo is None:
            what = f"below {self.hi:g}" if self.open_hi else f"at most {self.hi:g}"
        else:
            what = f"in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"
        if self.size or self.ordered:
            what = f"{self.size or ''} values each {what}".lstrip() + (", in increasing order" if self.ordered else "")
        return what


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_lo=True)
FRACTION = Range(0, 1, open_hi=True)      # [0, 1)
UNIT = Range(0, 1, open_lo=True)          # (0, 1]


STOP = {"requested": False}  # set on SIGTERM: long loops save their state at the next step and exit


def request_stop(*_):
    STOP["requested"] = True


@functools.cache
def _glibc():
    """glibc through ctypes, or None (not Linux, or another C library such as musl)."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    import ctypes
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> bool:
    """Keep freed large buffers in the heap instead of returning them to the OS (glibc only).

    glibc serves every allocation above its mmap threshold with a fresh mmap and unmaps it on free, so on
    CPU each training step pays page faults for every activation and gradient buffer: measured here, a
    ConvNet-3 teacher epoch runs 1.6x faster with this. Freed memory then stays mapped (the process keeps
    its peak RSS; long passes call trim_malloc). Called by the `ddkit` command and the benchmarks;
    DDKIT_MALLOC=default turns it off. Returns whether it was applied.
    """
    libc = None if os.environ.get("DDKIT_MALLOC") == "default" else _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 2 ** 30) and libc.mallopt(m_trim_threshold, 2 ** 30))


_LAST_TRIM = [-math.inf]


def trim_malloc(every_s: float = 10.0) -> bool:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim), at most once per `every_s` seconds;
    returns whether it trimmed. Under tune_malloc, a long pass whose buffers vary in size (photos streamed
    through a teacher) leaves free holes the next step's buffers do not fit, and RSS creeps up for as long
    as the pass runs (`select --criterion loss`, ResNet-18 at 224 px: 2.1 GB peak over 10k photos, 5.0 GB over
    100k). Trimming every few seconds keeps RSS at one step's peak for one page fault per buffer per trim."""
    now = time.monotonic()
    if now - _LAST_TRIM[0] < every_s or (libc := _glibc()) is None:
        return False
    _LAST_TRIM[0] = now
    libc.malloc_trim(0)
    return True


def inference_batch(image_size: int, most: int) -> int:
    """Images per no-grad forward batch: `most` up to 64 px, fewer above, at most 2**22 pixels per batch (at
    224 px a batch of 1,000 would hold 3.2 GB in a ResNet's stem alone; 83 images do)."""
    return min(most, max(1, 2 ** 22 // image_size ** 2))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DDKitError(f"unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DDKitError(f"device {device!r} requested but CUDA is not available")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs and return a CPU generator for explicit, reproducible draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object (dataclasses allowed), stable across runs and machines."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def tensor_hash(t: torch.Tensor, n: int = 16) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:n]


def model_hash(model: torch.nn.Module, n: int = 12) -> str:
    """Content hash of a model's weights and buffers (names a teacher, or an ensemble of them)."""
    return stable_hash([tensor_hash(v) for v in model.state_dict().values()], n)


def cache_dir() -> Path:
    root = Path(os.environ.get("DDKIT_CACHE", Path.home() / ".cache" / "ddkit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_output(path: str | os.PathLike, folder: bool = False) -> Path:
    """Refuse, before any work is done, an output path that cannot be written: an ancestor that is a file,
    a folder that is not writable, or a file where a folder is wanted (or the other way round)."""
    if not str(path).strip():
        raise DDKitError("the output path is empty: give a file or folder name")
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise DDKitError(f"cannot write {path}: it is a {'file' if folder else 'folder'}")
    parent = next(p for p in path.absolute().parents if p.exists())  # the nearest existing ancestor
    if not parent.is_dir():
        raise DDKitError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DDKitError(f"cannot write {path}: {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    Readers never see a half-written file, and a crash (or a full disk) leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "file", mmap: bool = False) -> Any:
    """Load a torch file with weights_only=True: never unpickle arbitrary objects. mmap: tensors stay in the
    file, read when touched."""
    path = Path(path)
    if not path.is_file():
        raise DDKitError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # pickle errors, truncated zip, foreign objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DDKitError(f"{path} is not a readable ddkit {what} ({first[:120]})") from e


# what a class name may not hold as a folder name, and its escape ('%' too, so that every escape reads back)
_ESCAPES = {"%": "%25", "/": "%2F", "\\": "%5C", "\0": "%00"}


def class_dirname(name: str) -> str:
    """The folder a class's images are written to: the name as it is (unicode and all) with only what could
    leave the folder, or hide it, escaped: '%', '/', '\\', NUL and a leading '.' (so '..' and '.bird' are
    plain folders); an empty name is '%'. `class_name` reads it back exactly."""
    out = "".join(_ESCAPES.get(ch, ch) for ch in name) or "%"
    return "%2E" + out[1:] if out.startswith(".") else out


def class_name(dirname: str) -> str:
    """The class a folder holds: the inverse of class_dirname (a folder ddkit did not write keeps its name
    unless it holds one of those escapes)."""
    return "" if dirname == "%" else re.sub(r"%(25|2[Ff]|5[Cc]|00|2[Ee])", lambda m: chr(int(m.group(1), 16)),
                                             dirname)


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (a NaN metric, an infinite loss) as None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (NaN and infinities as null) of results, configs and metrics: what every file and line
    of JSON ddkit writes goes through."""
    return json.dumps(json_safe(obj), indent=indent, default=str, allow_nan=False)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(obj, indent=2) + "\n")


def asdict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def parse_overrides(config_cls, overrides: dict[str, Any], base=None, what: str = "this method"):
    """Build a Config (a copy of `base`, or the defaults) from string overrides, converting by each field's
    current value's type."""
    cfg = dataclasses.replace(base) if base is not None else config_cls()
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, raw in overrides.items():
        if key not in fields:
            raise DDKitError(f"unknown setting {key!r} for {what}; known: {', '.join(fields)}")
        cur = getattr(cfg, key)
        try:
            if not isinstance(raw, str):
                val = raw
            elif isinstance(cur, bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                val = raw.lower() in ("1", "true", "yes")
            elif isinstance(cur, tuple):
                val = tuple(type(cur[0])(v) for v in raw.split(","))
            elif cur is None:
                val = raw
            else:
                val = type(cur)(raw)
                if isinstance(val, float) and not math.isfinite(val):
                    raise ValueError(raw)
        except ValueError:
            expected = "a finite number" if isinstance(cur, float) else type(cur).__name__
            raise DDKitError(f"bad value {raw!r} for setting {key!r} (expected {expected})") from None
        allowed = getattr(config_cls, "CHOICES", {}).get(key)
        if allowed and val not in allowed:
            raise DDKitError(f"bad value {raw!r} for setting {key!r}; choose from {', '.join(allowed)}")
        valid = getattr(config_cls, "RANGES", {}).get(key)
        if valid is not None and not valid.holds(val):
            raise DDKitError(f"bad value {raw!r} for setting {key!r} of {what}: expected {valid}")
        setattr(cfg, key, val)
    return cfg


def listed(value) -> list:
    """A config value that is one item or several (e.g. --teacher A B) as a list; None as []."""
    return [] if value is None else [value] if isinstance(value, (str, os.PathLike)) else list(value)


def one_or_list(values: list):
    """The inverse of `listed` for config values: None, the one item, or the list of several (one teacher
    stays a string, so configs and keys made before ensembles keep their form)."""
    return None if not values else values[0] if len(values) == 1 else list(values)
