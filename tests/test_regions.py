"""Grid cells, players and subset masks, against geometry written out by hand."""

import pytest
import torch

from regprim.core.regions import Grid, bitmask, cells_of, center_players, subset_masks


def test_grid_uneven_division_covers_every_pixel_once():
    grid = Grid(6, 6, 64, 50)
    masks = grid.cell_masks()
    assert torch.equal(masks.sum(0), torch.ones(64, 50, dtype=torch.long))
    sizes = masks.flatten(1).sum(1)
    assert sizes.min() >= 10 * 8 and sizes.max() <= 11 * 9


def test_cell_ids_are_row_major_on_a_non_square_grid():
    grid = Grid(2, 3, 4, 6)  # 2 rows x 3 columns of 2x2-pixel cells
    assert grid.cell_box(0) == (0, 2, 0, 2)
    assert grid.cell_box(1) == (0, 2, 2, 4)  # next column, same row
    assert grid.cell_box(3) == (2, 4, 0, 2)  # first column of the second row
    assert grid.cell_box(5) == (2, 4, 4, 6)
    masks = grid.cell_masks()
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[0:2, 2:4] = True
    assert torch.equal(masks[1], expected)


def test_center_players_on_the_default_grid():
    assert center_players(Grid(6, 6, 48, 48), 9) == [14, 15, 20, 21, 8, 9, 13, 16, 19]


def test_subset_masks_are_unions_of_player_cells():
    grid = Grid(2, 3, 4, 6)
    players = [5, 0, 4]  # an asymmetric player order
    pm = grid.cell_masks()[players]
    masks = subset_masks(pm, torch.tensor([0b000, 0b001, 0b110, 0b111]))
    assert not masks[0].any()
    assert torch.equal(masks[1], pm[0])
    assert torch.equal(masks[2], pm[1] | pm[2])
    assert torch.equal(masks[3], pm.any(0))


def test_bitmask_of_cells_follows_the_player_order():
    players = [5, 0, 4]
    assert bitmask(players, [0]) == 0b010
    assert bitmask(players, [4, 5]) == 0b101
    assert cells_of(0b101, players) == [4, 5]  # the cells a person reads: sorted grid ids
    assert cells_of(0b011, players) == [0, 5]
    with pytest.raises(ValueError, match=r"cells \[4\] are repeated"):
        bitmask(players, [4, 4])
    with pytest.raises(ValueError, match=r"cells \[2\] are not players"):
        bitmask(players, [2])
