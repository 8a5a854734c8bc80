"""``translate``: files in, the generator's own outputs out as PNGs; inputs never overwritten."""

import numpy as np
import pytest
import torch
from PIL import Image

from asapnet_triton.checkpoints import TrainedModel
from asapnet_triton.labels import label_convention
from asapnet_triton.testing import tiny_generator
from asapnet_triton.translate import read_label_map, translate


def _tiny_generator(num_classes=5, label_input=True):
    model = tiny_generator(num_classes, noise=0.2, label_input=label_input)
    labels = label_convention("folder", num_classes) if label_input else None
    return TrainedModel(model, labels, "a tiny random generator")


def _write_labels(path, labels: torch.Tensor):
    Image.fromarray(labels.numpy().astype(np.uint8), mode="L").save(path)


def test_translate_writes_the_generator_output(tmp_path, generator):
    model = _tiny_generator()
    inputs = []
    for name, (height, width) in {"a": (40, 37), "b": (21, 50)}.items():  # not multiples of the cell
        labels = torch.randint(0, 5, (height, width), generator=generator)
        _write_labels(tmp_path / f"{name}.png", labels)
        inputs.append((tmp_path / f"{name}.png", labels))
    outputs = translate(model, [p for p, _ in inputs], tmp_path / "out", progress=False)
    for (path, labels), output in zip(inputs, outputs):
        assert output == tmp_path / "out" / path.name
        with torch.no_grad():
            expected = model.generator(labels[None])[0]
        written = torch.from_numpy(np.array(Image.open(output))).permute(2, 0, 1).float() / 127.5 - 1
        assert written.shape == expected.shape
        assert (written - expected.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6


def test_translate_refuses_to_overwrite(tmp_path, generator):
    model = _tiny_generator()
    path = tmp_path / "a.png"
    _write_labels(path, torch.randint(0, 5, (32, 32), generator=generator))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="would overwrite the input"):
        translate(model, [path], tmp_path, progress=False)
    assert path.read_bytes() == before
    translate(model, [path], tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        translate(model, [path], tmp_path / "out", progress=False)
    translate(model, [path], tmp_path / "out", overwrite=True, progress=False)
    (tmp_path / "x").mkdir()
    _write_labels(tmp_path / "x" / "a.png", torch.randint(0, 5, (32, 32), generator=generator))
    with pytest.raises(ValueError, match="would both be written"):
        translate(model, [path, tmp_path / "x" / "a.png"], tmp_path / "out2", progress=False)


def test_label_map_errors_name_the_file(tmp_path, generator):
    path = tmp_path / "bad.png"
    _write_labels(path, torch.randint(5, 9, (20, 20), generator=generator))
    folder = label_convention("folder", 5)
    with pytest.raises(ValueError, match=r"bad\.png.*value\(s\) .* expected class indices 0\.\.4"):
        read_label_map(path, folder)
    Image.new("RGB", (20, 20)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png.*single-channel"):
        read_label_map(tmp_path / "rgb.png", folder)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"junk\.png.*cannot be read"):
        read_label_map(tmp_path / "junk.png", folder)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        translate(_tiny_generator(), [tmp_path / "missing.png"], tmp_path / "out", progress=False)
    with pytest.raises(TypeError, match="TrainedModel"):
        translate(_tiny_generator().generator, [path], tmp_path / "out", progress=False)
