"""Code bundles: a zip (or a directory, zipped) unpacked once per content hash."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from fastfaas.errors import InvalidRequestError, RequestTooLargeError

MAX_ZIP_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024


def zip_directory(directory: Path) -> bytes:
    """A deterministic zip of a directory (sorted, fixed timestamps), skipping caches."""
    if not directory.is_dir():
        raise InvalidRequestError(f"code directory {directory} does not exist")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if "__pycache__" in rel.parts or path.is_symlink() or not path.is_file():
                continue
            info = zipfile.ZipInfo(rel.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def code_bytes(source: str | os.PathLike[str] | bytes) -> bytes:
    """The zip for a source: zip bytes, a .zip file, or a directory."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    if path.is_dir():
        return zip_directory(path)
    if path.is_file():
        return path.read_bytes()
    raise InvalidRequestError(f"code source {path} is neither a directory nor a zip file")


def unpack(zip_data: bytes, code_root: Path,
           requirements: Requirements | None = None) -> tuple[Path, str]:
    """Unpack into code_root/<sha256>/ (once); returns (directory, sha256).

    A `requirements.txt` at the bundle's top is installed into the same
    directory by `requirements` (without one, its presence is an error).

    Raises InvalidRequestError for a bad zip (not a zip, paths outside the
    bundle, links) or a failed install, with pip's output;
    RequestTooLargeError for a zip, or its unzipped size, over the limits. File
    modes are normalised (0644, 0755 for executables, 0755 directories) so a
    sandboxed instance can read them.
    """
    if len(zip_data) > MAX_ZIP_BYTES:
        raise RequestTooLargeError(
            f"code zip is {len(zip_data)} bytes; the limit is {MAX_ZIP_BYTES} bytes"
        )
    sha = hashlib.sha256(zip_data).hexdigest()
    target = code_root / sha
    if target.is_dir():
        return target, sha
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_data))
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError) as exc:
        # ValueError: offsets past the data; NotImplementedError: a zip version it cannot read.
        raise InvalidRequestError(f"code is not a valid zip file: {exc}") from None
    total = 0
    members = zf.infolist()
    for info in members:
        name = PurePosixPath(info.filename)
        if not info.filename or name == PurePosixPath("."):
            raise InvalidRequestError("code zip has an entry with an empty name")
        if any(len(os.fsencode(part)) > 255 for part in name.parts):
            raise InvalidRequestError(
                f"code zip entry {info.filename[:80]!r}... has a path part over 255 bytes")
        if name.is_absolute() or ".." in name.parts:
            raise InvalidRequestError(f"code zip entry {info.filename!r} points outside the bundle")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidRequestError(f"code zip entry {info.filename!r} is a symbolic link")
        total += info.file_size
    if total > MAX_UNZIPPED_BYTES:
        raise RequestTooLargeError(
            f"code unzips to {total} bytes; the limit is {MAX_UNZIPPED_BYTES} bytes"
        )
    code_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=code_root))
    try:
        try:
            _extract(zf, members, tmp)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
                ValueError, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            # A corrupt entry (CRC, deflate stream), an unsupported or encrypted one,
            # or entries that collide ("a" and "a/b"): the bundle's fault.
            raise InvalidRequestError(f"code zip cannot be unpacked: {exc}") from None
        if (tmp / "requirements.txt").is_file():
            if requirements is None:
                raise InvalidRequestError(
                    "the bundle has a requirements.txt but this runtime installs none")
            requirements.install_into(tmp)
        normalise_modes(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp)  # another deploy unpacked the same bundle first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, sha


def normalise_modes(root: Path) -> None:
    """Directories 0755, files 0644 (0755 if executable by the owner), no links out."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if os.path.commonpath([target, str(root)]) != str(root):
                    os.unlink(path)  # a link out of the bundle (pip makes none)
                continue
            os.chmod(path, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)


class Requirements:
    """Installs a bundle's requirements.txt with pip, cached by content hash.

    Each distinct requirements.txt (with the pip options) is installed once
    into `cache_root/<sha256>/`, then hard-linked into each code directory
    that needs it, so the function imports its packages from its own
    directory.

    Args:
        python: the interpreter whose pip installs (the template's: the wheels
            must match it).
        cache_root: where installs are cached.
        allow_source_builds: let pip build sdists (runs their build code);
            by default only binary wheels (`--only-binary :all:`).
        pip_args: more pip options (`--no-index`, `--find-links DIR`...).
        timeout_s: how long pip may take.
    """

    def __init__(self, python: str, cache_root: Path, *, allow_source_builds: bool = False,
                 pip_args: Sequence[str] = (), timeout_s: float = 600) -> None:
        self.python = python
        self.cache_root = cache_root
        self.options = [] if allow_source_builds else ["--only-binary", ":all:"]
        self.options += list(pip_args)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()

    def install_into(self, code_dir: Path) -> None:
        req = (code_dir / "requirements.txt").read_bytes()
        key = hashlib.sha256(req + b"\0" + "\0".join(self.options).encode()).hexdigest()
        cached = self.cache_root / key
        if not cached.is_dir():
            self._install(code_dir / "requirements.txt", cached)
        _link_tree(cached, code_dir)

    def _install(self, requirements_txt: Path, cached: Path) -> None:
        self.cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=self.cache_root))
        # pip's own scratch directories go beside it, not in /tmp: a pip killed with
        # its server cannot remove them, and `.pip-*` is cleared at the next start.
        scratch = Path(tempfile.mkdtemp(prefix=".pip-tmp-", dir=self.cache_root))
        env = {**os.environ, "TMPDIR": str(scratch)}
        # pip dies with the thread that started it (PR_SET_PDEATHSIG), so a
        # killed server leaves no install running; kill_all() stops it sooner.
        cmd = [self.python, "-c", _PIP_WITH_PDEATHSIG, "install", "--target", str(tmp),
               "--requirement", str(requirements_txt), "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location", "--quiet",
               *self.options]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=requirements_txt.parent,
                                    env=env)
            with self._lock:
                self._running.add(proc)
            try:
                out, _ = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise InvalidRequestError(
                    f"installing requirements.txt took longer than {self.timeout_s:g} s"
                ) from None
            finally:
                with self._lock:
                    self._running.discard(proc)
            if proc.returncode != 0:
                output = out.decode(errors="replace").strip()[-4000:]
                if proc.returncode < 0:
                    raise InvalidRequestError(
                        f"installing requirements.txt was stopped (signal {-proc.returncode})")
                hint = ""
                if "--only-binary" in self.options and "matching distribution" in output:
                    hint = (" (only binary wheels are allowed: if a package exists only as"
                            " source, pin a version that ships wheels, or start the server"
                            " with --allow-source-builds)")
                raise InvalidRequestError(
                    f"installing requirements.txt failed (pip exit {proc.returncode})"
                    f"{hint}:\n{output}")
            normalise_modes(tmp)
            try:
                tmp.rename(cached)
            except OSError:
                if not cached.is_dir():
                    raise
                shutil.rmtree(tmp)  # installed concurrently by another deploy
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def kill_all(self) -> None:
        """Stop every install under way (the server is stopping); their deploys fail."""
        with self._lock:
            running = list(self._running)
        for proc in running:
            with contextlib.suppress(OSError):
                proc.kill()


# `python -c` this, then pip's arguments: pip under a parent-death signal.
_PIP_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "ppid = os.getppid()\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != ppid: os._exit(1)\n"
    "import runpy\n"
    "sys.argv = ['pip', *sys.argv[1:]]\n"
    "runpy.run_module('pip', run_name='__main__', alter_sys=True)\n"
)


def _link_tree(src: Path, dest: Path) -> None:
    """Hard-link src's files into dest (the bundle's own files win a name clash)."""
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dest / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            target = target_dir / name
            if target.exists() or target.is_symlink():
                continue
            source = os.path.join(dirpath, name)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                try:
                    os.link(source, target)
                except OSError:  # another filesystem, or links not allowed
                    shutil.copy2(source, target)


def _extract(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest_root: Path) -> None:
    for info in members:
        dest = dest_root / info.filename
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "xb") as out:
            shutil.copyfileobj(src, out)
        executable = (info.external_attr >> 16) & stat.S_IXUSR
        os.chmod(dest, 0o755 if executable else 0o644)
