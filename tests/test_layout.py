"""Parameter counts, grid sizes and the parameter layout, against hand-written formulas."""

import math

import pytest

import asapnet_triton as at


@pytest.mark.parametrize(
    "in_channels, cell_size, out_channels, hidden, depth, pe",
    [
        (35, 64, 3, 64, 5, True),
        (3, 32, 3, 64, 5, True),
        (1, 2, 1, 16, 2, True),
        (12, 8, 4, 128, 6, True),
        (7, 12, 2, 32, 3, False),
    ],
)
def test_param_count_matches_formula(in_channels, cell_size, out_channels, hidden, depth, pe):
    pe_channels = 4 * int(math.log2(cell_size)) if pe else 0
    first = (in_channels + pe_channels) * hidden + hidden
    middle = (depth - 2) * (hidden * hidden + hidden)
    last = hidden * out_channels + out_channels
    got = at.param_count(
        in_channels, cell_size=cell_size, out_channels=out_channels, hidden_width=hidden, depth=depth, pos_encoding=pe
    )
    assert got == first + middle + last


def test_layout_is_bias_then_input_major_weight():
    shape = at.MLPShape(5, 8, out_channels=2, hidden_width=16, depth=3)
    offset = 0
    widths = [5 + 12, 16, 16, 2]
    for layer, c_in, c_out in zip(shape.layers, widths[:-1], widths[1:]):
        assert (layer.in_features, layer.out_features) == (c_in, c_out)
        assert layer.bias_offset == offset
        assert layer.weight_offset == offset + c_out
        offset += c_out + c_in * c_out
        assert layer.end == offset
    assert shape.param_count == offset


@pytest.mark.parametrize(
    "height, width, cell, expected",
    [
        (64, 64, 16, (4, 4)),
        (70, 45, 16, (5, 3)),
        (1, 1, 64, (1, 1)),
        (65, 129, 64, (2, 3)),
    ],
)
def test_grid_size_is_ceil(height, width, cell, expected):
    assert at.grid_size(height, width, cell) == expected


def test_pos_encoding_channels():
    assert [at.pos_encoding_channels(2**k) for k in range(1, 7)] == [4, 8, 12, 16, 20, 24]
    assert at.pos_encoding_channels(12, pos_encoding=False) == 0


@pytest.mark.parametrize("cell_size", [0, 1, 3, 12, 48])
def test_non_power_of_two_cell_with_pe_raises(cell_size):
    with pytest.raises(ValueError, match="cell_size"):
        at.param_count(3, cell_size=cell_size)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(in_channels=0), "in_channels"),
        (dict(depth=1), "depth"),
        (dict(out_channels=0), "out_channels"),
        (dict(hidden_width=0), "hidden_width"),
        (dict(in_channels=2.0), "in_channels"),
    ],
)
def test_bad_shape_arguments_name_the_argument(kwargs, argument):
    args = dict(in_channels=3, cell_size=16) | kwargs
    with pytest.raises((ValueError, TypeError), match=argument):
        at.param_count(args.pop("in_channels"), **args)


def test_grid_size_rejects_bad_sizes():
    with pytest.raises(ValueError, match="height"):
        at.grid_size(0, 5, 4)
    with pytest.raises(TypeError, match="width"):
        at.grid_size(5, 5.0, 4)
