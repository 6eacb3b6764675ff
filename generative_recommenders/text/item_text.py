"""Item text recipes: one metadata record in, the text to embed out.

Each recipe is a function ``(record: dict) -> str`` over one line of a
prepared dataset's ``item_metadata.jsonl``. :func:`item_texts` applies a
recipe to every item of a dataset, in item id order. Only the Amazon recipe
(the paper's Amazon datasets, byte-exact) replaces non-ASCII characters; the
others keep Unicode, in normal form C.
"""

from __future__ import annotations

import html
import math
import os
import re
import unicodedata
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from generative_recommenders.data.local import ITEM_METADATA_FILE, iter_item_records
from generative_recommenders.data.sequence_format import DatasetFormatError, prepare_command
from generative_recommenders.logs import get_logger

logger = get_logger(__name__)

AMAZON_FIELDS = ("title", "features", "categories", "description")
STEAM_FIELDS = ("app_name", "publisher", "developer", "genres", "tags", "specs")

_TAG = re.compile(r"<[^>]+>")
_NON_ASCII = re.compile(r"[^\x00-\x7F]")
_WHITESPACE = re.compile(r"\s+")
_SPACES = re.compile(" +")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    """Whether ``value`` is something :func:`clean_text` turns into text."""
    if isinstance(value, list):
        return all(_is_text(v) for v in value)
    return value is None or isinstance(value, str) or _is_number(value)


def _markup_free(value: Any) -> str:
    """The cleaning steps every recipe that cleans shares: a list joined with ", " (its elements as
    ``str``, None as ""); ``html.unescape``; strip; ``<...>`` tags removed (no space put in their
    place); newlines and tabs turned into spaces; runs of spaces collapsed to one."""
    if isinstance(value, list):
        value = ", ".join("" if v is None else str(v) for v in value)
    text = html.unescape(str(value)).strip()
    return _SPACES.sub(" ", _TAG.sub("", text).replace("\n", " ").replace("\t", " "))


def reference_clean(value: Any) -> str:
    """One metadata value cleaned exactly as the reference cleans Amazon item text.

    :func:`_markup_free`'s steps, then each non-ASCII character replaced by a
    space (after the collapse, so the runs this makes stay). None becomes "";
    another value becomes its ``str`` first. Only the paper's Amazon datasets
    use it (byte-exact parity): it empties a text written in another script.
    """
    if value is None:
        return ""
    return _NON_ASCII.sub(" ", _markup_free(value))


def nfc(text: str) -> str:
    """``text`` in Unicode normal form C: one code point per accented letter, however it was typed."""
    return unicodedata.normalize("NFC", text)


def clean_text(value: Any) -> str:
    """One metadata field as tidy text: :func:`_markup_free`'s steps, Unicode kept, whitespace normalized.

    A list has each element cleaned, the non-empty ones joined with ", " and
    ended with "." (even when the last element already ends with one). A
    string is HTML-unescaped, stripped of tags (with no space in their place),
    NFC-normalized, and then every whitespace run (newlines and tabs
    included) collapsed to one space and the ends stripped. Numbers become
    ``str(value)``; None and NaN become "".
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list):
        parts = [part for part in map(clean_text, value) if part]
        return ", ".join(parts) + "." if parts else ""
    if _is_number(value):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot clean a {type(value).__name__} as text: {value!r:.80}")
    return _WHITESPACE.sub(" ", nfc(_markup_free(value))).strip()


def amazon_item_text(record: Dict[str, Any]) -> str:
    """The reference's Amazon item text, byte for byte: AMAZON_FIELDS in order.

    Per field: a non-empty list becomes its elements, each
    :func:`reference_clean`-ed, joined with ", " and ended with "."; a float
    becomes its ``str`` plus "."; anything else (a string, an empty list, a
    missing field or None) is :func:`reference_clean`-ed, so an empty list or
    a missing field gives "". Every field, empty or not, is followed by one
    space: the text ends with a space and an empty field leaves two. A record
    whose text is blank (the reference's four spaces, or more) gives "", so
    that :func:`item_texts` falls back to its item id as for every recipe.
    """
    fields = []
    for key in AMAZON_FIELDS:
        value = record.get(key)
        if isinstance(value, list) and value:
            fields.append(", ".join(map(reference_clean, value)) + ".")
        elif isinstance(value, float):
            fields.append(f"{value}.")
        else:
            fields.append(reference_clean(value))
    text = "".join(f"{field} " for field in fields)
    return text if text.strip() else ""


def _joined(value: Any) -> str:
    """A metadata field as one string: a list's elements joined with a space, None as ""."""
    if isinstance(value, list):
        return " ".join(str(part) for part in value)
    return "" if value is None else str(value)


def greb_amazon_item_text(record: Dict[str, Any]) -> str:
    """GRE-B's Amazon item text (``data/AmazonReviews2023/filter.py``): ``title + ". " + features +
    description``, then cleaned (:func:`clean_text`: HTML, non-ASCII, whitespace).

    GRE-B concatenates the three fields with nothing between features and description; its
    cleaning also drops URLs, e-mail addresses and near-duplicate sentences (TF-IDF), which this
    recipe does not. Lists (Amazon 2023's ``features`` and ``description``) are joined with a space.
    """
    text = _joined(record.get("title")) + ". " + _joined(record.get("features")) + _joined(record.get("description"))
    return clean_text(text)


def steam_item_text(record: Dict[str, Any]) -> str:
    """The reference's Steam text: the non-empty fields of STEAM_FIELDS joined with " | ".

    Lists are joined with ", "; no further cleaning, as the reference, but for
    the NFC normalization of every non-Amazon recipe (Unicode is kept).
    """
    fields = []
    for key in STEAM_FIELDS:
        value = record.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        if value is not None and str(value).strip():
            fields.append(str(value).strip())
    return nfc(" | ".join(fields))


def _squeeze(value: Any) -> str:
    return "" if value is None else _WHITESPACE.sub(" ", str(value)).strip()


def movielens_item_text(record: Dict[str, Any]) -> str:
    """Title, year and genres, e.g. ``Toy Story (1995). Genres: Animation, Comedy.``, NFC-normalized.

    Absent parts are left out.
    """
    title, year = _squeeze(record.get("title")), _squeeze(record.get("year"))
    head = " ".join(part for part in (title, f"({year})" if year else "") if part)
    genres = record.get("genres") or []
    if isinstance(genres, str):
        genres = [genres]
    genre_text = ", ".join(g for g in map(_squeeze, genres) if g)
    sentences = [head + "." if head else "", f"Genres: {genre_text}." if genre_text else ""]
    return nfc(" ".join(s for s in sentences if s))


def local_item_text(record: Dict[str, Any], fields: Optional[Sequence[str]] = None) -> str:
    """The record's text fields, each cleaned with :func:`clean_text`, joined by a space.

    Without ``fields``, every field but ``item_id`` whose value is text
    (strings, numbers or lists of them) is used, in the record's key order;
    other values (objects, booleans) are skipped. With ``fields``, exactly
    those are used, in that order; a missing one counts as empty and one that
    is not text is an error.
    """
    if fields is None:
        fields = [k for k, v in record.items() if k != "item_id" and _is_text(v)]
    texts = []
    for field in fields:
        value = record.get(field)
        if not _is_text(value):
            raise DatasetFormatError(
                f"item {record.get('item_id')!r}: field {field!r} holds a "
                f"{type(value).__name__}, not text (strings, numbers or lists of them)"
            )
        texts.append(clean_text(value))
    return " ".join(text for text in texts if text)


RECIPES: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "amazon": amazon_item_text,
    "greb_amazon": greb_amazon_item_text,
    "steam": steam_item_text,
    "movielens": movielens_item_text,
    "local": local_item_text,
}


def _recipe(recipe: str, fields: Optional[Sequence[str]]) -> Callable[[Dict[str, Any]], str]:
    if recipe not in RECIPES:
        raise ValueError(f"unknown item text recipe {recipe!r}; choose from {sorted(RECIPES)}")
    if fields is not None:
        if recipe != "local":
            raise ValueError(f"fields= selects fields of the 'local' recipe only, not {recipe!r}")
        return partial(local_item_text, fields=fields)
    return RECIPES[recipe]


def _field_names(records: Sequence[Dict[str, Any]]) -> List[str]:
    """Every field of the records but ``item_id``, in order of first appearance."""
    return list(dict.fromkeys(key for record in records for key in record if key != "item_id"))


def _recipe_texts(
    records: Sequence[Dict[str, Any]], recipe: str, fields: Optional[Sequence[str]]
) -> List[str]:
    """The recipe's text of every record, empty ones included.

    Raises DatasetFormatError for ``fields`` that no record has, listing the
    fields the records do have (a typo would otherwise embed empty texts).
    """
    make_text = _recipe(recipe, fields)
    if fields is not None:
        present = _field_names(records)
        absent = [field for field in fields if field not in present]
        if absent:
            raise DatasetFormatError(
                f"no item has the text field(s) {', '.join(map(repr, absent))} (--text_fields); "
                f"the items' fields are {', '.join(present) or 'none but item_id'}"
            )
    return [make_text(record) for record in records]


def item_texts(
    records: Sequence[Dict[str, Any]],
    recipe: str,
    fields: Optional[Sequence[str]] = None,
    to_embed: bool = True,
) -> List[str]:
    """The text of every item, ``texts[k]`` from ``records[k]``, with recipe ``recipe``.

    An item whose recipe text is empty gets its ``item_id`` string instead:
    an empty text would give every such item the same embedding, the item id
    at least tells them apart. When the texts are ``to_embed``, how many did
    is logged as a warning, and texts that are all empty (nothing to embed)
    raise DatasetFormatError. ``fields`` chooses the fields of the ``local``
    recipe.
    """
    texts = _recipe_texts(records, recipe, fields)
    empty = [k for k, text in enumerate(texts) if not text]
    if to_embed and texts and len(empty) == len(texts):
        chosen = f"fields {', '.join(fields)}" if fields is not None else f"the {recipe!r} recipe"
        raise DatasetFormatError(
            f"every item's text is empty with {chosen}: there is nothing to embed; "
            f"choose fields that hold text (the items' fields are "
            f"{', '.join(_field_names(records)) or 'none but item_id'})"
        )
    for k in empty:
        if "item_id" not in records[k]:
            raise DatasetFormatError(f"item {k} has an empty text and no item_id to fall back on")
        texts[k] = str(records[k]["item_id"])
    if to_embed and empty:
        logger.warning(
            f"warning: {len(empty):,} of {len(texts):,} items have an empty text (the first: item_id "
            f"{records[empty[0]]['item_id']!r}): {_why_empty(records, empty, recipe)}; their item ids stand in "
            "as their texts"
        )
    return texts


def _why_empty(records: Sequence[Dict[str, Any]], empty: Sequence[int], recipe: str) -> str:
    """Why the texts of ``records[k]``, k in ``empty``, came out empty, for the warning."""
    if recipe == "amazon":
        non_ascii = sum(
            1 for k in empty if any(_NON_ASCII.search(str(records[k].get(key) or "")) for key in AMAZON_FIELDS)
        )
        if non_ascii:
            return (
                f"{non_ascii:,} of them hold only characters outside ASCII, which the Amazon recipe replaces "
                f"by spaces as the paper's code does, the others no text in {', '.join(AMAZON_FIELDS)}"
            )
        return f"they hold no text in {', '.join(AMAZON_FIELDS)}"
    return f"they hold no text in the fields the {recipe!r} recipe reads"


def count_empty_texts(
    records: Sequence[Dict[str, Any]], recipe: str, fields: Optional[Sequence[str]] = None
) -> int:
    """How many items get their item id as text from :func:`item_texts` (empty recipe text)."""
    return sum(1 for text in _recipe_texts(records, recipe, fields) if not text)


def read_item_metadata(data_dir: os.PathLike) -> List[Dict[str, Any]]:
    """Reads ``item_metadata.jsonl`` of a prepared dataset: element k describes item id k.

    Raises DatasetFormatError naming the file (and line) for a missing file,
    a blank or malformed line, a line that is not an object or one without
    ``item_id``.
    """
    path = Path(data_dir) / ITEM_METADATA_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found: prepare the dataset first ({prepare_command(data_dir)})")
    # Blank lines are errors: a skipped line would shift every later item id by one.
    records = [record for _, record in iter_item_records(path, skip_blank_lines=False)]
    if not records:
        raise DatasetFormatError(f"{path} holds no items")
    return records
