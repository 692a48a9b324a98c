"""Sealing secrets at rest: AES-256-GCM under a key ring. Knows no runs and no tables.

A key ring is one or more 256-bit keys, newest first; the newest seals, any of them
opens what it sealed. Every sealed value names the id of its key (`key_id`: a short hash
of the key, which tells nothing of it), gets a 96-bit random nonce of its own, and is
bound to associated data (for a secret: its name, group and version), so a ciphertext
moved to another row does not open.

Where the keys come from (`load_ring`), in this order:

- `RUNSVC_SECRETS_KEY`: base64 keys in the environment, comma-separated, newest first;
- `RUNSVC_SECRETS_KEY_FILE`: a file of base64 keys, one a line, newest first (blank lines
  and lines starting `#` are skipped);
- neither: the file `secrets.key` in the data directory, created (mode 0600) with a new
  key if it does not exist.

A ring read from a file is read again when the file changed: before sealing (so a
rotation's new key seals from then on) and when a value names a key id the ring does not
hold (sealed by a process that already read a newer file).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ENV = "RUNSVC_SECRETS_KEY"
KEY_FILE_ENV = "RUNSVC_SECRETS_KEY_FILE"
DEFAULT_KEY_FILE = "secrets.key"


class KeyRingError(Exception):
    """The keys cannot be read or do not open what they must; the message says which
    setting to look at."""


class SealError(Exception):
    """A sealed value does not open: no key of the ring has its id, or it was altered (or
    moved to another row: its associated data differ)."""


def key_id(key: bytes) -> str:
    """A short hash of a key: names it in every row it sealed, and tells nothing of it."""
    return hashlib.sha256(b"runsvc secrets key\0" + key).hexdigest()[:16]


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def parse_keys(text: str, *, separator: str | None = None, source: str) -> list[bytes]:
    """The keys of a key file's text (one a line) or of the variable's (comma-separated),
    newest first. KeyRingError naming `source` when one is not a base64 256-bit key."""
    pieces = text.split(separator) if separator else text.splitlines()
    keys = []
    for number, raw in enumerate(pieces, start=1):
        piece = raw.strip()
        if not piece or piece.startswith("#"):
            continue
        try:
            key = base64.b64decode(piece, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise KeyRingError(
                f"{source}: key {number} is not a base64 {KEY_BYTES * 8}-bit key "
                f"(make one with: head -c {KEY_BYTES} /dev/urandom | base64)"
            )
        keys.append(key)
    if not keys:
        raise KeyRingError(f"{source} holds no key")
    return keys


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Replace the key file at once (a reader sees the old ring or the new one, never a
    half-written file), readable by its owner only."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(
            "# runsvc secrets keys, newest first: the first seals, every one opens what it sealed\n"
        )
        file.writelines(encode_key(key) + "\n" for key in keys)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


@dataclass(frozen=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


class KeyRing:
    """The keys, newest first, and the file to read them again from (None: the keys came
    from the environment and change only with a restart)."""

    def __init__(self, keys: list[bytes], *, path: Path | None = None, source: str) -> None:
        self.source = source
        self.path = path
        self._lock = threading.Lock()
        self._stamp = _stamp(path) if path is not None else None
        self._set(keys)

    def _set(self, keys: list[bytes]) -> None:
        self._keys = [(key_id(key), AESGCM(key)) for key in keys]
        self._ids = dict(self._keys)

    @property
    def ids(self) -> list[str]:
        """The ids of the keys, newest first."""
        return [identifier for identifier, _ in self._keys]

    @property
    def newest(self) -> str:
        return self._keys[0][0]

    def reread(self, *, force: bool = False) -> bool:
        """Read the key file again if it changed (or `force`); True when the ring did."""
        if self.path is None:
            return False
        with self._lock:
            stamp = _stamp(self.path)
            if not force and stamp == self._stamp:
                return False
            keys = parse_keys(self.path.read_text(), source=f"{KEY_FILE_ENV} ({self.path})")
            before = self.ids
            self._set(keys)
            self._stamp = stamp
            return self.ids != before

    def seal(self, plaintext: bytes, associated: bytes) -> Sealed:
        with contextlib.suppress(OSError, KeyRingError):
            self.reread()
        identifier, cipher = self._keys[0]
        nonce = os.urandom(NONCE_BYTES)
        return Sealed(identifier, nonce, cipher.encrypt(nonce, plaintext, associated))

    def open(self, sealed: Sealed, associated: bytes) -> bytes:
        cipher = self._ids.get(sealed.key_id)
        if cipher is None:
            with contextlib.suppress(OSError, KeyRingError):
                self.reread(force=True)
            cipher = self._ids.get(sealed.key_id)
        if cipher is None:
            raise SealError(f"sealed under key {sealed.key_id}, which {self.source} does not hold")
        try:
            return cipher.decrypt(sealed.nonce, sealed.ciphertext, associated)
        except InvalidTag:
            raise SealError(
                f"does not open under key {sealed.key_id} (altered, or not this row's)"
            ) from None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def load_ring(*, key: str | None, key_file: Path | None, data_dir: Path) -> KeyRing:
    """The key ring the settings name (see the module's docstring). KeyRingError when
    it cannot be read."""
    if key:
        return KeyRing(parse_keys(key, separator=",", source=KEY_ENV), source=KEY_ENV)
    if key_file is not None:
        source = f"{KEY_FILE_ENV} ({key_file})"
        try:
            text = key_file.read_text()
        except OSError as exc:
            raise KeyRingError(f"{source} cannot be read: {exc.strerror or exc}") from None
        return KeyRing(parse_keys(text, source=source), path=key_file, source=source)
    path = data_dir / DEFAULT_KEY_FILE
    source = f"the data directory's key file {path} (no {KEY_FILE_ENV} or {KEY_ENV} set)"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Made aside and linked into place: two processes starting at once on one data
        # directory end up with the same key, whichever links first.
        temporary = data_dir / f".{DEFAULT_KEY_FILE}.{os.getpid()}.tmp"
        write_key_file(temporary, [new_key()])
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
        temporary.unlink()
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyRingError(f"{source} cannot be read: {exc.strerror or exc}") from None
    return KeyRing(parse_keys(text, source=source), path=path, source=source)
