"""Digests that tie artifacts to what made them: the code of a command, the content of files and JSON documents.

- :func:`code_digest` -- a digest of the package source a command imports: its stage module and every
  ``a2dpipe`` module reachable from it through ``import`` statements (found by reading the source, not by importing
  it, so the Snakefile can compute it at parse time in milliseconds). Each rule passes its command's digest as a
  param, so an edit to a module a stage imports reruns that stage (Snakemake's params rerun trigger) and nothing
  else; artifacts record it (:func:`code_stamp`), and commands that combine artifacts refuse two codes of one
  command (:func:`a2dpipe.config.check_consistent`).
- :func:`file_digest` -- the content digest of a file, read once in 4 MiB blocks (what a resume checkpoint
  records of each input it trained from).
- :func:`with_digest` / :func:`checked_json` -- a JSON document that carries the digest of the rest of itself,
  so a flipped bit in an evaluation file is an error when it is read.
- :func:`check_results_free` / :func:`lock_results` -- a lock in the results folder, so two runs started from
  different working directories never write one folder (Snakemake's own lock is per working directory).

>>> doc = with_digest({"variant": "baseline-rgb", "frames": 12})
>>> checked_json(doc, "e.json", "evaluation") == {"variant": "baseline-rgb", "frames": 12}
True
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path

from a2dpipe import __version__
from a2dpipe.errors import A2DError, unreadable_artifact
from a2dpipe.io import _host, _writer_is_gone, atomic_path

__all__ = ["PACKAGE_ROOT", "code_digest", "forget_code_digests", "module_files", "set_command", "current_command",
           "code_stamp", "file_digest", "digest_of", "with_digest", "checked_json", "DIGEST_KEY", "RESULTS_LOCK",
           "check_results_free", "lock_results", "unlock_results"]

PACKAGE_ROOT = Path(__file__).resolve().parent
DIGEST_KEY = "sha256"
_command: tuple[str, str] | None = None  # (command, stage module) this process runs, set by the command line


def _module_file(name: str) -> Path | None:
    """The source file of module ``a2dpipe.<...>`` in this package, or None (not a module of it)."""
    parts = name.split(".")
    if parts[0] != "a2dpipe":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# `from a2dpipe.x import a, b` (one line or parenthesised) and `import a2dpipe.x`, at any indentation: a stage's
# lazy imports inside functions count, since they run when the command does. A scan of the text, not a parse:
# 30 times faster (the Snakefile digests every command at each parse), and the package has no relative imports.
_FROM = re.compile(r"^[ \t]*from[ \t]+(a2dpipe[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+(a2dpipe[^\n]*)", re.M)


def _names(text: str) -> list[str]:
    """``a, b as c, (d,  # comment\n e)`` -> ``[a, b, d, e]``."""
    lines = [line.split("#")[0] for line in text.strip("()").splitlines()]
    return [part.strip().split(" as ")[0].strip() for part in " ".join(lines).replace("\\", " ").split(",")
            if part.strip()]


@functools.cache
def _imports(path: Path) -> tuple[str, ...]:
    """Names of the package modules that the module at ``path`` imports, anywhere in its body."""
    text = path.read_text()
    found = []
    for match in _FROM.finditer(text):
        base = match.group(1)
        found += [base, *(f"{base}.{name}" for name in _names(match.group(2)))]  # `from pkg import module`
    for match in _IMPORT.finditer(text):
        found += _names(match.group(1))
    return tuple(name for name in found if _module_file(name) is not None)


def module_files(module: str) -> dict[str, Path]:
    """``{module name: source file}`` of ``module`` and every package module it reaches through imports, with the
    packages above each (their ``__init__`` runs on import)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [*parents, *_imports(path)]
    return seen


@functools.cache
def code_digest(module: str) -> str:
    """12 hex digits identifying the source a command runs: sha256 over the package version and the name and bytes
    of its stage module ``module`` and every module that reaches (:func:`module_files`). The command line maps a
    command to its module (:func:`a2dpipe.cli.command_digest`)."""
    files = module_files(module)
    if module not in files:
        raise A2DError(f"no module {module!r} in the package")
    digest = hashlib.sha256(__version__.encode())
    for name, path in sorted(files.items()):
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def forget_code_digests() -> None:
    """Drop the digests and import lists read so far, so the next :func:`code_digest` reads the files again (after
    an edit, or to time a Snakefile parse's digests from cold)."""
    code_digest.cache_clear()
    _imports.cache_clear()


def set_command(command: str | None, module: str | None = None) -> None:
    """Record the command this process runs and its stage module, so that the artifacts it writes carry its code
    (:func:`code_stamp`)."""
    global _command
    _command = None if command is None else (command, module)


def current_command() -> str | None:
    return None if _command is None else _command[0]


def code_stamp() -> dict:
    """``{"<command>": "<code digest>"}`` of the command this process runs (``{}`` outside one: a library call)."""
    return {} if _command is None else {_command[0]: code_digest(_command[1])}


def file_digest(path: str | os.PathLike) -> str:
    """16 hex digits of sha256 over the bytes of ``path``; A2DError naming it when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(4 << 20):
                digest.update(block)
    except FileNotFoundError:
        raise A2DError(f"{path}: not found") from None
    except OSError as err:
        raise A2DError(f"{path}: cannot be read: {err}") from None
    return digest.hexdigest()[:16]


def digest_of(doc) -> str:
    """sha256 of ``doc`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def with_digest(doc: dict) -> dict:
    """``doc`` plus ``sha256``, the digest of the rest of it (:func:`digest_of`)."""
    return {**doc, DIGEST_KEY: digest_of(doc)}


def checked_json(doc, path: str | os.PathLike, what: str) -> dict:
    """``doc`` (a JSON document written through :func:`with_digest`) without its digest, once the digest agrees;
    an A2DError naming ``path`` and how to rebuild it otherwise. A document written before digests is taken as is."""
    if not isinstance(doc, dict):
        raise unreadable_artifact(path, what, "not a JSON object")
    if DIGEST_KEY not in doc:
        return doc
    body = {k: v for k, v in doc.items() if k != DIGEST_KEY}
    try:
        agrees = digest_of(body) == doc[DIGEST_KEY]
    except ValueError:  # a value JSON cannot write back (NaN): not what the writer wrote
        agrees = False
    if not agrees:
        raise unreadable_artifact(path, what, "its content does not match its sha256 digest (a changed byte)")
    return body


# -- the results folder's lock ---------------------------------------------------------------------------------

RESULTS_LOCK = ".a2dpipe-run.lock"


def _lock_path(results: str | os.PathLike) -> Path:
    return Path(results) / RESULTS_LOCK


def check_results_free(results: str | os.PathLike) -> None:
    """A2DError when a run started from another working directory holds ``results`` (its lock, written by
    :func:`lock_results`), so two runs never write one folder (Snakemake's own lock is per working directory).

    A lock of this working directory is Snakemake's business; one whose run is gone (same host, process ended)
    is stale and ignored. On another host liveness cannot be checked: the message says how to remove it.
    """
    path = _lock_path(results)
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no lock (or a half-written one: its writer is starting and will check again)
    if not isinstance(holder, dict) or os.path.realpath(holder.get("workdir", "")) == os.path.realpath(os.getcwd()):
        return
    token = f"{holder.get('host', '')}-{holder.get('pid', '')}-0"
    if _writer_is_gone(token):
        return
    raise A2DError(
        f"{Path(results)}: in use by a run started from {holder.get('workdir')} (host {holder.get('host')}, "
        f"process {holder.get('pid')}, since {holder.get('started')}); two runs writing one results folder "
        f"overwrite each other's files and logs; wait for it to end, or set config `results` to another folder "
        f"(if no run is live there, delete {path})")


def lock_results(results: str | os.PathLike) -> None:
    """Claim ``results`` for this run (:func:`check_results_free` first): the workflow's ``onstart``."""
    check_results_free(results)
    holder = {"workdir": os.path.realpath(os.getcwd()), "host": _host(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with atomic_path(_lock_path(results)) as tmp:
        Path(tmp).write_text(json.dumps(holder) + "\n")


def unlock_results(results: str | os.PathLike) -> None:
    """Release ``results`` when this process holds it: the workflow's ``onsuccess`` and ``onerror``."""
    path = _lock_path(results)
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == _host():
        path.unlink(missing_ok=True)
