"""Code bundles: a zip (or a directory, zipped) unpacked once per content hash."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from fastfaas.errors import InvalidRequestError

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


def unpack(zip_data: bytes, code_root: Path) -> tuple[Path, str]:
    """Unpack into code_root/<sha256>/ (once); returns (directory, sha256).

    Raises InvalidRequestError for a bad zip: not a zip, too large, paths
    outside the bundle, links. File modes are normalised (0644, 0755 for
    executables, 0755 directories) so a sandboxed instance can read them.
    """
    if len(zip_data) > MAX_ZIP_BYTES:
        raise InvalidRequestError(
            f"code zip is {len(zip_data)} bytes; the limit is {MAX_ZIP_BYTES} bytes"
        )
    sha = hashlib.sha256(zip_data).hexdigest()
    target = code_root / sha
    if target.is_dir():
        return target, sha
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_data))
    except zipfile.BadZipFile as exc:
        raise InvalidRequestError(f"code is not a valid zip file: {exc}") from None
    total = 0
    members = zf.infolist()
    for info in members:
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts:
            raise InvalidRequestError(f"code zip entry {info.filename!r} points outside the bundle")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidRequestError(f"code zip entry {info.filename!r} is a symbolic link")
        total += info.file_size
    if total > MAX_UNZIPPED_BYTES:
        raise InvalidRequestError(
            f"code unzips to {total} bytes; the limit is {MAX_UNZIPPED_BYTES} bytes"
        )
    code_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=code_root))
    try:
        for info in members:
            dest = tmp / info.filename
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            executable = (info.external_attr >> 16) & stat.S_IXUSR
            os.chmod(dest, 0o755 if executable else 0o644)
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            os.chmod(d, 0o755)
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
