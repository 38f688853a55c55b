"""Where a language model's text comes from (`data.corpus`): the bundled documentation text, local files, a Hugging
Face dataset, or the text files of an installed, version-pinned package (the offline corpus large enough for the
hybrid-LM study's seed size).

A corpus is a sequence of documents `(name, text)` in a fixed order, read one at a time (never the whole corpus in
memory). What a tokenizer reads is each document followed by a blank line; `CorpusInfo` records the size and sha256 of
exactly those bytes, so summary.json says which text a run trained on whatever its source.

    bundled   Python's documentation topics (`pydoc_data.topics`, as `data=text`): one document, nothing to download
    files     `path`: one file (one document) or a folder (every file under it, by sorted path, one document each)
    hf        `datasets.load_dataset(name, config, split=..., streaming=...)`, one document per row's `text_field`
              (a hub name when online, or a local folder of json/csv/parquet/text files)
    package   the text files (by suffix) of an installed distribution of a pinned version, by sorted path: by default
              PACKAGE below, a dependency of the optional extra `lm-corpus`, never downloaded at run time

`source_key` names the corpus cheaply for caches (content hash for local text; distribution and version, and the hash
of its file list, for a package; the dataset's coordinates for Hugging Face); the sha256 of the text itself is computed
when it is first tokenised (datamodules.token_files) and kept with the tokens.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from core.errors import ConfigError, require

CORPORA = ("bundled", "files", "hf", "package")
SEPARATOR = "\n\n"  # after every document, so documents never run into each other
BUNDLED = "pydoc_data"


@dataclass(frozen=True)
class PackageCorpus:
    """The offline default: an installed distribution whose text files are the corpus."""

    name: str = "ansible"
    version: str = "12.3.0"
    licence: str = ("GPL-3.0-or-later (the bundled collections: mostly GPL-3.0-or-later, some BSD-2-Clause, MIT, "
                    "Apache-2.0)")
    suffixes: tuple[str, ...] = (".py", ".yml", ".yaml", ".md", ".rst", ".txt", ".ps1", ".psm1", ".j2", ".sh", ".cfg",
                                 ".ini", ".toml")
    extra: str = "lm-corpus"


PACKAGE = PackageCorpus()


@dataclass(frozen=True)
class CorpusInfo:
    """Which text a run trained on."""

    name: str  # "pydoc_data", the file's path as given, "hf:<name>[/<config>]:<split>", or "<package>==<version>"
    size_bytes: int  # of the text as tokenised (for `text`, the raw file)
    sha256: str  # first 16 hex digits of the sha256 of those bytes
    python_version: str | None  # the Python whose pydoc_data it is (the text differs between versions); else None
    documents: int | None = None
    licence: str | None = None  # where the source states one (the package corpus)
    tokenizer: str | None = None  # e.g. "bpe 8192 (a1b2c3d4e5f6a7b8)", "bytes"
    tokens: dict[str, int] | None = None  # per split, after tokenisation

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None or key == "python_version"}


@dataclass
class Corpus:
    """A corpus's documents (read lazily, in a fixed order) and what identifies it."""

    name: str
    source_key: str
    documents: Callable[[], Iterator[tuple[str, str]]]
    single: bool = False  # one document: splits cut it contiguously instead of assigning whole documents
    python_version: str | None = None
    licence: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def bundled_text() -> str:
    """The text of Python's documentation topics (`pydoc_data.topics`), values in sorted-key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def open_corpus(corpus: str, path: str | None = None, hf: dict | None = None, package: dict | None = None) -> Corpus:
    """The corpus a `data.corpus` setting names, checked (a missing file or package is one line naming the key)."""
    require(corpus in CORPORA, "corpus", corpus, " | ".join(CORPORA))
    if corpus == "bundled":
        text = bundled_text()
        return Corpus(BUNDLED, "bundled:" + sha16(text.encode()), lambda: iter([(BUNDLED, text)]), single=True,
                      python_version=".".join(str(part) for part in sys.version_info[:3]))
    if corpus == "files":
        return files_corpus(path)
    if corpus == "hf":
        return hf_corpus(**(hf or {}))
    return package_corpus(**(package or {}))


def files_corpus(path: str | None) -> Corpus:
    require(isinstance(path, (str, os.PathLike)) and str(path) != "", "path", path,
            "a file or a folder of text files (with corpus=files)", related=["corpus"])
    root = Path(path)
    require(root.exists(), "path", str(path), "an existing file or folder")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    require(len(files) > 0, "path", str(path), "a folder holding at least one file")
    digest = hashlib.sha256()
    for file in files:  # what identifies local text is its content (and each file's place in the folder)
        digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")

    def documents() -> Iterator[tuple[str, str]]:
        for file in files:
            yield str(file.relative_to(root) if root.is_dir() else file.name), read_text(file)

    return Corpus(str(path), "files:" + digest.hexdigest()[:32], documents, single=len(files) == 1)


def read_text(file: Path) -> str:
    """A file's text: UTF-8, undecodable bytes replaced (a corpus of text, not of raw bytes: that is `data=text`)."""
    return file.read_bytes().decode("utf-8", errors="replace")


def hf_corpus(name: str | None = None, config: str | None = None, split: str = "train", text_field: str = "text",
              streaming: bool = True, max_documents: int | None = None) -> Corpus:
    """A Hugging Face dataset through `datasets.load_dataset` (online for a hub name; offline for a local folder)."""
    require(isinstance(name, str) and name != "", "hf.name", name,
            "a dataset on the Hugging Face hub (e.g. wikitext) or a local folder of data files (with corpus=hf)")
    require(max_documents is None or (isinstance(max_documents, int) and max_documents > 0), "hf.max_documents",
            max_documents, "null (every row) or a positive integer")
    try:
        import datasets
    except ImportError:
        raise ConfigError("corpus", "hf", "an installed `datasets` (pip install -e '.[lm]')") from None
    settings = {"name": name, "config": config, "split": split, "text_field": text_field,
                "max_documents": max_documents}
    if os.path.isdir(name):  # a local dataset: its content names it (a hub dataset: its coordinates)
        settings["content"] = files_corpus(name).source_key

    def documents() -> Iterator[tuple[str, str]]:
        try:
            rows = datasets.load_dataset(name, config, split=split, streaming=streaming)
        except Exception as err:  # the datasets library raises many kinds; the user needs the one line
            raise ConfigError("hf.name", name, f"a dataset `datasets.load_dataset` can load ({type(err).__name__}: "
                                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
        for index, row in enumerate(rows):
            if max_documents is not None and index >= max_documents:
                return
            if text_field not in row:
                raise ConfigError("hf.text_field", text_field, f"a column of {name}: {', '.join(row)}")
            yield f"{split}/{index}", str(row[text_field])

    label = f"hf:{name}{'/' + config if config else ''}:{split}"
    key = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:32]
    return Corpus(label, "hf:" + key, documents, details=settings)


def package_corpus(name: str = PACKAGE.name, version: str | None = PACKAGE.version,
                   suffixes: list[str] | tuple[str, ...] = PACKAGE.suffixes) -> Corpus:
    """The text files of an installed distribution; `version` must be the installed one (null: any)."""
    hint = (f"pip install -e '.[{PACKAGE.extra}]' (the offline corpus {PACKAGE.name}=={PACKAGE.version})"
            if name == PACKAGE.name else f"pip install {name}{'==' + version if version else ''}")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("package.name", name, f"an installed distribution: {hint}") from None
    require(version is None or dist.version == version, "package.version", version,
            f"the installed version of {name}, {dist.version} (to train on {version}: {hint})")
    wanted = tuple(suffixes)
    files = sorted(str(f) for f in (dist.files or []) if str(f).endswith(wanted) and ".dist-info/" not in str(f))
    require(len(files) > 0, "package.suffixes", list(wanted), f"suffixes of some of {name}'s files")
    listing = hashlib.sha256()
    for f in (dist.files or []):  # the wheel's own record of every file's hash: the content, without reading it
        if str(f) in files:
            listing.update(f"{f}\0{f.hash.value if f.hash else ''}\0{f.size}\n".encode())

    def documents() -> Iterator[tuple[str, str]]:
        for f in files:
            yield f, read_text(Path(dist.locate_file(f)))

    licence = PACKAGE.licence if name == PACKAGE.name else (dist.metadata.get("License") or None)
    return Corpus(f"{name}=={dist.version}", f"package:{name}=={dist.version}:{listing.hexdigest()[:32]}", documents,
                  licence=licence, details={"files": len(files)})
