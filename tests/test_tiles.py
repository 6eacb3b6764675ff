import pytest

from generative_recommenders.ops.tiles import MIN_TILE, tile_bounds


@pytest.mark.parametrize(
    "total, size, expected",
    [
        (0, 32, []),
        (5, 32, [(0, 5)]),  # narrower than MIN_TILE, but all there is
        (64, 32, [(0, 32), (32, 64)]),
        (70, 32, [(0, 32), (32, 70)]),  # a last piece of 6 joins the one before
        (80, 32, [(0, 32), (32, 64), (64, 80)]),  # 16 is wide enough
        (40, 1, [(0, 16), (16, 40)]),  # no piece narrower than MIN_TILE
    ],
)
def test_tiles_cover_everything_and_none_is_too_narrow(total, size, expected):
    assert MIN_TILE == 16
    assert tile_bounds(total, size) == expected
