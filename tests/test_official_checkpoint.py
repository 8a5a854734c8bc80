"""Generators saved by the published ASAP-Net code load into ours and give its images.

"The published code" is ``reference/official_generator.py``, a re-implementation of the published
``ASAPNetsGenerator`` with its module names (we cannot run the published repository here). Its
weights are random, with perturbed instance norms, and scaled so that the parameter grid is the
size a trained network predicts. The published code needs images whose sides are multiples of the
cell size, so every comparison uses such sizes.
"""

import pytest
import torch

import asapnet_triton as at
from asapnet_triton.checkpoints import official_key_names
from asapnet_triton.reference import pixelwise_mlp_einsum
from asapnet_triton.reference.official_generator import OfficialASAPNetsGenerator, instance_edges, one_hot_semantics
from asapnet_triton.testing import official_generator, relative_error

MLP = dict(hidden_width=16, depth=3)

# (published options, height, width, loader arguments the file cannot tell)
CONFIGS = {
    # facades at 512: 13 -> 5 labels, cell 32 (input downsampled by 2), no instance channel
    "facades512": (dict(label_nc=5, crop_size=512, lr_instance=False), 64, 96, {}),
    # Cityscapes: instance edges to the LR stream only, 256 x 512 crops -> cell 16 (no input filter)
    "cityscapes": (dict(label_nc=5, no_instance_edge=False, crop_size=512, aspect_ratio=2.0), 48, 32, {}),
    # facades at 1024 as in test_facades1024.sh: --reflection_pad; cell 64 (input / 4); a dontcare class
    "facades1024_reflect": (
        dict(label_nc=4, contain_dontcare_label=True, crop_size=1024, lr_instance=False, reflection_pad=True),
        128,
        128,
        dict(lr_padding="reflect"),
    ),
    "replicate_edges": (
        dict(label_nc=3, no_instance_edge=False, crop_size=512, replicate_pad=True),
        64,
        64,
        dict(lr_padding="replicate"),
    ),
}


def random_case(model, height, width, generator, batch=2):
    """(labels, edges or None, the published generator's input) for ``model``."""
    classes = model.num_inputs - int(model.highres_stream.lr_instance)
    labels = torch.randint(0, classes, (batch, height, width), generator=generator)
    edges = None
    if model.highres_stream.lr_instance:
        instances = torch.randint(0, 4, (batch, 1, height // 4, width // 4), generator=generator)
        edges = instance_edges(instances.repeat_interleave(4, 2).repeat_interleave(4, 3))
    return labels, edges, one_hot_semantics(labels, classes, edges)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_images_as_the_published_generator(name, generator):
    options, height, width, arguments = CONFIGS[name]
    official = official_generator(options, generator)
    model = at.load_official_checkpoint(official.state_dict(), precision="fp32", **MLP, **arguments)
    classes = options["label_nc"] + int(options.get("contain_dontcare_label", False))
    assert (model.shape.in_channels, model.shape.cell_size) == (classes, official.downsampling)
    assert model.instance_edges == (not options.get("no_instance_edge", True))
    assert not model.training and model.precision == "fp32" and model.lr_precision == "fp32"

    labels, edges, semantics = random_case(official, height, width, generator)
    with torch.no_grad():
        expected, expected_grid = official(semantics)
        grid = model.lowres_params(labels, edges)
        image = model(labels, edges)
    assert expected.abs().max() > 0.3  # a non-trivial image, not a saturated or vanishing one
    assert relative_error(grid, expected_grid) <= 1e-5
    assert relative_error(image, expected) <= at.TOLERANCES["fp32"]


def test_image_input(generator):
    """label_input=False (the published --no_one_hot): the input is a float image, here a soft label map."""
    official = official_generator(CONFIGS["facades512"][0], generator)
    model = at.load_official_checkpoint(official.state_dict(), label_input=False, **MLP)
    image = torch.rand(2, 5, 64, 96, generator=generator)
    with torch.no_grad():
        assert relative_error(model(image), official(image)[0]) <= at.TOLERANCES["fp32"]


def test_published_reference_hr_stream_is_the_einsum(generator):
    """The stand-in's HR stream (unfold + matmul, its own encoding) against our einsum reference, in
    float64 but for the encoding, which the published code computes in float32; the instance
    channel is dropped as published."""
    official = official_generator(CONFIGS["cityscapes"][0], generator).double()
    labels, edges, semantics = random_case(official, 32, 48, generator, batch=1)
    grid = 0.3 * torch.randn(1, official.highres_stream.num_params, 2, 3, generator=generator, dtype=torch.float64)
    out = official.highres_stream(semantics.double(), grid)
    expected = pixelwise_mlp_einsum(labels, grid, cell_size=16, num_classes=5, **MLP)
    assert relative_error(out, expected) <= 2e-6


def test_published_key_names():
    """Names as the published code registers them (read from its source), and the stand-in's."""
    plain = official_key_names(7, padded=False)
    assert plain[:4] == [
        "lowres_stream.model.0.0.weight",
        "lowres_stream.model.0.1.weight",
        "lowres_stream.model.0.1.bias",
        "lowres_stream.model.2.0.weight",
    ]
    assert "lowres_stream.model.8.0.weight" in plain and "lowres_stream.model.10.conv_block.0.0.weight" in plain
    assert plain[-2:] == ["lowres_stream.model.17.weight", "lowres_stream.model.17.bias"]
    padded = official_key_names(7, padded=True)
    assert padded[0] == "lowres_stream.model.1.0.weight" and "lowres_stream.model.13.0.weight" in padded
    assert "lowres_stream.model.15.conv_block.1.1.bias" in padded and padded[-1] == "lowres_stream.model.22.bias"
    for pad in (dict(), dict(reflection_pad=True)):
        model = OfficialASAPNetsGenerator(
            label_nc=3, lr_width=4, lr_max_width=8, lr_depth=3, hr_width=8, hr_depth=2, **pad
        )
        assert list(model.state_dict()) == official_key_names(3, padded=bool(pad))


def test_saved_file_round_trip(tmp_path, generator):
    """A .pth on disk, as saved by the published code, by DataParallel, or wrapped in a dict."""
    official = official_generator(CONFIGS["facades512"][0], generator)
    state = official.state_dict()
    labels, _, semantics = random_case(official, 64, 64, generator)
    with torch.no_grad():
        expected, _ = official(semantics)
    saved = {
        "latest_net_G.pth": state,
        "data_parallel.pth": {f"module.{k}": v for k, v in state.items()},
        "wrapped.pth": {"epoch": 3, "state_dict": state},
    }
    for name, content in saved.items():
        torch.save(content, tmp_path / name)
        model = at.load_official_checkpoint(tmp_path / name, map_location="cpu", **MLP)
        with torch.no_grad():
            assert relative_error(model(labels), expected) <= at.TOLERANCES["fp32"], name


def test_missing_key(generator):
    state = official_generator(CONFIGS["facades512"][0], generator).state_dict()
    del state["lowres_stream.model.4.1.weight"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['lowres_stream\.model\.4\.1\.weight'\]"):
        at.load_official_checkpoint(state, **MLP)


def test_wrong_shape(generator):
    state = official_generator(CONFIGS["facades512"][0], generator).state_dict()
    key = "lowres_stream.model.10.conv_block.0.0.weight"
    state[key] = torch.randn(16, 8, 3, 3, generator=generator)
    with pytest.raises(ValueError, match=rf"{key} has shape \(16, 8, 3, 3\), expected \(16, 16, 3, 3\)"):
        at.load_official_checkpoint(state, **MLP)


def test_unexpected_key(generator):
    official = official_generator(CONFIGS["facades512"][0], generator)
    state = dict(official.state_dict(), **{"netD.model.0.weight": torch.randn(3, generator=generator)})
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['netD\.model\.0\.weight'\]"):
        at.load_official_checkpoint(state, **MLP)
    with pytest.warns(UserWarning, match="ignored"):
        model = at.load_official_checkpoint(state, strict=False, **MLP)
    labels, _, semantics = random_case(official, 64, 64, generator)
    with torch.no_grad():
        assert relative_error(model(labels), official(semantics)[0]) <= at.TOLERANCES["fp32"]


def test_arguments_the_file_cannot_tell(generator):
    # the MLP's width and depth: many combinations give one parameter count
    state = official_generator(CONFIGS["facades512"][0], generator).state_dict()
    with pytest.raises(ValueError, match=r"P=\d+ .* hidden_width=64, depth=5, .* pass hidden_width= and depth="):
        at.load_official_checkpoint(state)
    # reflection or replication padding: their modules have no weights
    padded = official_generator(CONFIGS["facades1024_reflect"][0], generator).state_dict()
    with pytest.raises(ValueError, match="pass lr_padding='reflect' or lr_padding='replicate'"):
        at.load_official_checkpoint(padded, **MLP)
    with pytest.raises(ValueError, match="pads with zeros"):
        at.load_official_checkpoint(state, lr_padding="reflect", **MLP)


def test_arguments_that_contradict_the_file(generator):
    state = official_generator(CONFIGS["cityscapes"][0], generator).state_dict()
    with pytest.raises(ValueError, match="num_classes=6"):
        at.load_official_checkpoint(state, num_classes=6, **MLP)
    with pytest.raises(ValueError, match="cell_size=32"):
        at.load_official_checkpoint(state, cell_size=32, **MLP)
    with pytest.raises(ValueError, match="instance_edges=False"):
        at.load_official_checkpoint(state, instance_edges=False, **MLP)
    model = at.load_official_checkpoint(state, num_classes=5, cell_size=16, instance_edges=True, **MLP)
    assert model.shape.in_channels == 5


def test_unreadable_checkpoints(tmp_path, generator):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        at.load_official_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        at.load_official_checkpoint(tmp_path / "text.pth")
    with pytest.raises(ValueError, match="expected a generator state_dict"):
        at.load_official_checkpoint({"epoch": 3, "weights": [1, 2]})
    spectral = {"lowres_stream.model.0.0.weight_orig": torch.randn(4, 3, 3, 3, generator=generator)}
    with pytest.raises(ValueError, match="spectral-norm"):
        at.load_official_checkpoint(spectral)
