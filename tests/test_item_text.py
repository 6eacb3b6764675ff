import gzip
import json
from pathlib import Path

import pytest

from generative_recommenders.data.local import write_item_metadata
from generative_recommenders.data.sequence_format import DatasetFormatError
from generative_recommenders.text.item_text import (
    RECIPES,
    amazon_item_text,
    clean_text,
    count_empty_texts,
    item_texts,
    local_item_text,
    movielens_item_text,
    read_item_metadata,
    reference_clean,
    steam_item_text,
)

# An Amazon Reviews 2023 metadata line, in the release's format.
AMAZON_RECORD = {
    "item_id": "B01N1037CV",
    "main_category": "Video Games",
    "title": "Mario Kart&trade; 8 Deluxe - Nintendo Switch",
    "average_rating": 4.8,
    "rating_number": 20941,
    "features": [
        "Hit the road with the definitive version of Mario Kart 8",
        "Includes all 48 courses &amp; 42 characters<br/>",
    ],
    "description": ["Race your friends.", "<p>Battle on the go!</p>"],
    "price": 49.99,
    "images": [],
    "videos": [],
    "store": "Nintendo",
    "categories": ["Video Games", "Nintendo Switch", "Games"],
    "details": {"Release date": "April 28, 2017", "Rated": "Everyone"},
    "parent_asin": "B01N1037CV",
    "bought_together": None,
}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Tom &amp; Jerry&#39;s &quot;Best&quot;", 'Tom & Jerry\'s "Best"'),
        ("<b>Bold</b> move", "Bold move"),
        # Tags go without a space, as in the reference.
        ("Line one<br/>Line two", "Line oneLine two"),
        ("&lt;i&gt;escaped tag&lt;/i&gt;", "escaped tag"),
        # Unicode is kept (the Amazon recipe alone drops non-ASCII), in normal form C.
        ("caf\u00e9 \u2122 \U0001F600 ok", "caf\u00e9 \u2122 \U0001F600 ok"),
        ("cafe\u0301", "caf\u00e9"),
        ("a\n\tb\r\n   c  ", "a b c"),
        (["Great &amp; fun", "", None, "Two<b>x</b>"], "Great & fun, Twox."),
        (["Already ends."], "Already ends.."),
        ([], ""),
        (["", None], ""),
        (None, ""),
        (float("nan"), ""),
        (4.5, "4.5"),
        (12, "12"),
    ],
)
def test_clean_text(value, expected) -> None:
    assert clean_text(value) == expected


def test_clean_text_rejects_objects() -> None:
    with pytest.raises(TypeError, match="dict"):
        clean_text({"a": 1})


def test_amazon_real_record() -> None:
    assert amazon_item_text(AMAZON_RECORD) == (
        "Mario Kart  8 Deluxe - Nintendo Switch "
        "Hit the road with the definitive version of Mario Kart 8, "
        "Includes all 48 courses & 42 characters. "
        "Video Games, Nintendo Switch, Games. "
        "Race your friends., Battle on the go!. "
    )


# The fixture's Amazon items and their texts, derived by hand from the reference's recipe:
# per field, a non-empty list -> elements cleaned, joined with ", ", ended with "."; anything
# else cleaned; each field followed by one space. Cleaning: unescape, strip, tags out (no
# space), newlines/tabs -> spaces, runs of spaces collapsed, then each non-ASCII char -> space.
FIXTURE_AMAZON_TEXTS = {
    # Empty description: the categories' "." then two spaces.
    "B00002STXN": "The Legend of Zelda: Ocarina of Time Nintendo 64 classic. "
    "Video Games, Legacy Systems, Nintendo Systems, Nintendo 64.  ",
    # "&trade;" unescapes to a non-ASCII char: a space next to the one before "8".
    "B01N1037CV": "Mario Kart  8 Deluxe - Nintendo Switch  Video Games, Nintendo Switch.  ",
    # "é" -> space, "&amp;" -> "&", "<br>" and "<p>" leave no space, "." after the list's own ".".
    "B07DJWBYKP": "Pok mon Sword - Nintendo Switch Catch Pok mon & battle trainers, "
    "Dynamax battleswith up to 4 players. Video Games, Nintendo Switch, Games. "
    "A new generation of Pok mon.. ",
    "B0886P3N8Q": "Rare Collector's Edition Steelbook case. Video Games, PlayStation 4, Games. Limited run.. ",
    # Empty features and categories: three spaces; the em dash -> a third space around it.
    "B08FC5L3RG": 'Xbox Wireless Headset   "Superb" sound   15 hours. ',
    "B0BN942894": "Controller Charging Dock Charges 2 controllers, LED indicator. "
    "Video Games, PlayStation 5, Accessories, Chargers. Fits DualSense.. ",
    # Tab and newline -> spaces; empty categories and description: three spaces at the end.
    "B07SZJZV88": "The Legend of Zelda: Link's Awakening Relive a classic with a fresh look.   ",
}


def test_amazon_fixture_texts_byte_for_byte() -> None:
    path = Path(__file__).resolve().parent / "fixtures" / "raw" / "meta_Video_Games.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert {r["parent_asin"]: amazon_item_text(r) for r in records} == FIXTURE_AMAZON_TEXTS


@pytest.mark.parametrize(
    "record, expected",
    [
        # A float title: its str plus "."; "&nbsp;" unescapes to a non-ASCII space, replaced after
        # the strip; blank lines collapse; a missing field (categories) leaves two spaces; a
        # string is cleaned without a ".".
        (
            {
                "title": 12.5,
                "features": ["  <b>Bold</b>&nbsp;move  ", "two\n\nlines"],
                "description": "Only a string\tvalue",
            },
            "12.5. Bold move, two lines.  Only a string value ",
        ),
        # Non-ASCII characters become spaces after the collapse, so their runs stay; an empty list
        # element stays (", " before it); the space left by a removed tag stays; an int is cleaned.
        (
            {
                "title": "<i>Caf\u00e9\u00a0</i>\u00a0Mug",
                "features": ["", "<p> lead</p>"],
                "categories": [],
                "description": 7,
            },
            "Caf   Mug ,  lead.  7 ",
        ),
        # Nothing but blanks: "" (the item then gets its id as text), not the reference's spaces.
        ({"title": "", "features": [], "categories": None}, ""),
        ({"title": "\u2122", "features": [], "description": " <br> "}, ""),
    ],
)
def test_amazon_recipe_edge_cases(record, expected) -> None:
    assert amazon_item_text(record) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        # Strip comes before the tags and newlines: their spaces stay.
        ("  x\n<br>", "x "),
        ("<p> a</p>", " a"),
        (["a &amp; b", None, 3], "a & b, , 3"),
        ("tab\t\tand\r\nline", "tab and\r line"),
        (None, ""),
    ],
)
def test_reference_clean(value, expected) -> None:
    assert reference_clean(value) == expected


def test_steam() -> None:
    record = {
        "id": "35140",
        "app_name": "Batman: Arkham Asylum Game of the Year Edition",
        "publisher": "Warner Bros. Interactive",
        "developer": "Rocksteady Studios, Feral Interactive (Mac)",
        "genres": ["Action"],
        "tags": ["Action", "Batman", "Stealth"],
        "specs": ["Single-player", "Steam Achievements"],
    }
    assert steam_item_text(record) == (
        "Batman: Arkham Asylum Game of the Year Edition | Warner Bros. Interactive | "
        "Rocksteady Studios, Feral Interactive (Mac) | Action | Action, Batman, Stealth | "
        "Single-player, Steam Achievements"
    )


def test_steam_apostrophes_and_missing_fields() -> None:
    record = {
        "app_name": "Tom Clancy's Rainbow Six\u00ae Siege",
        "publisher": "",
        "developer": None,
        "genres": [],
        "tags": ["Tactical", "Shooter"],
    }
    assert steam_item_text(record) == "Tom Clancy's Rainbow Six\u00ae Siege | Tactical, Shooter"


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            {"title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"]},
            "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        ),
        ({"title": "Heat", "year": None, "genres": []}, "Heat."),
        ({"title": "Heat\n", "genres": "Action"}, "Heat. Genres: Action."),
        ({"year": "1995", "genres": ["Drama"]}, "(1995). Genres: Drama."),
        ({"item_id": "5"}, ""),
    ],
)
def test_movielens(record, expected) -> None:
    assert movielens_item_text(record) == expected


LOCAL_RECORD = {
    "item_id": "i1",
    "name": "Blue mug",
    "tags": ["kitchen", "caf\u00e9"],
    "price": 12,
    "weight": 0.5,
    "meta": {"color": "blue"},
    "in_stock": True,
    "notes": None,
    "desc": "Holds <b>350</b>&nbsp;ml\n",
}


def test_local_uses_text_fields_in_key_order() -> None:
    assert local_item_text(LOCAL_RECORD) == "Blue mug kitchen, caf\u00e9. 12 0.5 Holds 350 ml"


def test_local_fields_selection() -> None:
    selected = local_item_text(LOCAL_RECORD, fields=["desc", "name", "absent"])
    assert selected == "Holds 350 ml Blue mug"
    with pytest.raises(ValueError, match="'meta' holds a dict"):
        local_item_text(LOCAL_RECORD, fields=["meta"])


def test_item_texts_fall_back_to_item_id_and_say_how_many(caplog) -> None:
    records = [{"item_id": "A", "title": ""}, {"item_id": 7, "features": []}, AMAZON_RECORD]
    texts = item_texts(records, "amazon")
    assert texts[:2] == ["A", "7"]
    assert texts[2] == amazon_item_text(AMAZON_RECORD)
    assert count_empty_texts(records, "amazon") == 2
    assert "2 of 3 items have an empty text (the first: item_id 'A')" in caplog.text


def test_all_empty_texts_are_an_error_naming_the_fields() -> None:
    records = [{"item_id": "i1", "x": "  ", "n": 3}, {"item_id": "i2", "x": ""}]
    with pytest.raises(DatasetFormatError, match="every item's text is empty with fields x: .*fields are x, n"):
        item_texts(records, "local", fields=["x"])


def test_text_fields_no_item_has_are_an_error_listing_the_fields() -> None:
    records = [{"item_id": "i1", "title": "Mug"}, {"item_id": "i2", "title": "Cup", "brand": "B"}]
    with pytest.raises(DatasetFormatError) as error:
        item_texts(records, "local", fields=["titel", "brand"])
    assert str(error.value) == (
        "no item has the text field(s) 'titel' (--text_fields); the items' fields are title, brand"
    )
    # A field some items lack is fine: they get the others.
    assert item_texts(records, "local", fields=["brand", "title"]) == ["Mug", "B Cup"]


def test_item_texts_local_fields_and_bad_arguments() -> None:
    assert item_texts([LOCAL_RECORD], "local", fields=["name"]) == ["Blue mug"]
    assert set(RECIPES) == {"amazon", "greb_amazon", "steam", "movielens", "local"}
    with pytest.raises(ValueError, match="unknown item text recipe"):
        item_texts([LOCAL_RECORD], "books")
    with pytest.raises(ValueError, match="'local' recipe only"):
        item_texts([AMAZON_RECORD], "amazon", fields=["title"])
    with pytest.raises(ValueError, match="no item_id"):
        item_texts([{"title": ""}, AMAZON_RECORD], "amazon")


def test_read_item_metadata_round_trip(tmp_path: Path) -> None:
    items = {"b": {"title": "B\u00e9", "tags": ["x"]}, "a": {"title": "A"}}
    write_item_metadata(tmp_path, items, ["b", "a"])
    assert read_item_metadata(tmp_path) == [
        {"item_id": "b", "title": "B\u00e9", "tags": ["x"]},
        {"item_id": "a", "title": "A"},
    ]


@pytest.mark.parametrize(
    "lines, message",
    [
        ([json.dumps({"item_id": "a"}), "{not json"], "line 2: malformed JSON"),
        ([json.dumps({"item_id": "a"}), "", json.dumps({"item_id": "b"})], "line 2: empty line"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        ([json.dumps({"title": "t"})], "line 1: no item_id"),
        ([], "holds no items"),
    ],
)
def test_read_item_metadata_errors(tmp_path: Path, lines, message) -> None:
    path = tmp_path / "item_metadata.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=message) as error:
        read_item_metadata(tmp_path)
    assert str(path) in str(error.value)


def test_read_item_metadata_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="not found.*preprocess_public_data.py"):
        read_item_metadata(tmp_path)
