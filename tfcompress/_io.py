"""Atomic file and directory writes (a failed write leaves nothing behind), and the JSON file
methods of the documents tfcompress saves."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Dict, Iterator, Optional, Type, TypeVar, Union

#: What every tfcompress function accepts as a path: a string or an ``os.PathLike``.
PathLike = Union[str, "os.PathLike[str]"]


def output_path(path: PathLike, argument: str = "path") -> pathlib.Path:
    """Validates an output path and returns it as a ``pathlib.Path``.

    Raises:
      TypeError: if ``path`` is not a string or path.
      ValueError: if the parent folder does not exist or is not writable.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a str or os.PathLike, got {type(path).__name__}.")
    path = pathlib.Path(path).expanduser()
    parent = path.parent.resolve()
    if not parent.is_dir():
        raise ValueError(
            f"Cannot write {str(path)!r}: folder {str(parent)!r} does not exist. Create it first."
        )
    if not os.access(parent, os.W_OK):
        raise ValueError(
            f"Cannot write {str(path)!r}: folder {str(parent)!r} is not writable. "
            "Choose another output path."
        )
    return path


@contextlib.contextmanager
def atomic_file(path: PathLike, argument: str = "path") -> Iterator[pathlib.Path]:
    """Yields a temporary path in the target folder; renames it to ``path`` on success.

    If the body raises, the temporary file is removed and an existing ``path`` is untouched.
    """
    path = output_path(path, argument)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = pathlib.Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: PathLike, argument: str = "path") -> Iterator[pathlib.Path]:
    """Yields a temporary folder next to ``path``; swaps it in on success.

    An existing folder at ``path`` is replaced only after the body succeeded.
    """
    path = output_path(path, argument)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"Cannot write a folder at {str(path)!r}: a file is there. Remove it first."
        )
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = pathlib.Path(
                tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
            )
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: PathLike, text: str, argument: str = "path") -> pathlib.Path:
    """Writes ``text`` to ``path`` atomically and returns the path."""
    with atomic_file(path, argument) as tmp:
        tmp.write_text(text)
    return pathlib.Path(path)


_Document = TypeVar("_Document", bound="JsonDocument")


class JsonDocument:
    """``to_json``/``from_json``/``save``/``load`` for a class with ``get_config`` and
    ``from_config`` (:class:`~tfcompress.pruning.Masks`, sensitivity results).

    ``save`` is atomic; a text that is not JSON raises ``ValueError`` naming ``KIND``.
    """

    #: What the document is, for error messages.
    KIND = "Document"

    def get_config(self) -> Dict[str, Any]:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    @classmethod
    def from_config(cls: Type[_Document], config: Any) -> _Document:  # pragma: no cover
        raise NotImplementedError

    def to_json(self, indent: Optional[int] = None) -> str:
        """The document as a JSON string."""
        return json.dumps(self.get_config(), indent=indent)

    @classmethod
    def from_json(cls: Type[_Document], text: str) -> _Document:
        """The document from :meth:`to_json` output.

        Raises:
          ValueError: if ``text`` is not valid JSON or not a document of this kind.
        """
        try:
            config = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"{cls.KIND} JSON could not be parsed: {error}.") from error
        return cls.from_config(config)

    def save(self, path: PathLike) -> pathlib.Path:
        """Writes the document as JSON, atomically. Returns the path."""
        return write_text(path, self.to_json(indent=1))

    @classmethod
    def load(cls: Type[_Document], path: PathLike) -> _Document:
        """Reads a document written by :meth:`save`."""
        return cls.from_json(pathlib.Path(path).read_text())
