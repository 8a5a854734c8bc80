"""Load generators saved by the published ASAP-Net implementation (github ``tamarott/ASAPNet``).

Its ``latest_net_G.pth`` is the ``state_dict`` of its ``ASAPNetsGenerator``: the weights of the LR
stream only (``lowres_stream.model.<i>...``; the HR stream and the input filter have none). Every 3x3
conv is an ``nn.Sequential(conv without bias, InstanceNorm2d(affine=True))`` at an index of the
stream's ``nn.Sequential`` that depends on the padding option; the last layer is a 1x1 conv with
bias. ``load_official_checkpoint`` reads the architecture off the tensor shapes, maps the names
onto :class:`~asapnet_triton.generator.ASAPNetGenerator` (whose forward is the published one) and
loads them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from .fileio import atomic_write, load_weights_file
from .generator import LR_DOWNSAMPLING, LR_PADDINGS, ASAPNetGenerator
from .labels import DATASET_CONVENTIONS, LabelConvention, label_convention
from .layout import MLPShape

__all__ = [
    "MODEL_FORMAT",
    "TrainedModel",
    "load_model",
    "load_official_checkpoint",
    "model_record",
    "official_key_names",
    "save_model",
    "shipped_model_path",
]

_PREFIX = "lowres_stream.model."
_STRIDED_CONVS = 4  # log2(LR_DOWNSAMPLING): the published learned_ds_factor 16
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "netG", "G", "generator", "model")
_MAX_CELL_LOG2 = 12


def official_key_names(lr_depth: int, padded: bool) -> list[str]:
    """The published generator's state_dict keys, in order, for ``lr_depth`` blocks.

    ``padded``: trained with ``--reflection_pad`` or ``--replicate_pad``, whose padding modules
    (no weights) precede every 3x3 conv and shift the indices. Each 3x3 conv contributes
    ``<conv>.0.weight`` (the conv), ``<conv>.1.weight`` and ``<conv>.1.bias`` (its instance norm);
    the final 1x1 conv ``weight`` and ``bias``.
    """
    per_conv = 3 if padded else 2  # [pad,] Sequential(conv, norm), ReLU
    first = 1 if padded else 0
    names = []
    for n in range(1 + _STRIDED_CONVS):
        index = per_conv * n + first
        names += [f"{_PREFIX}{index}.0.weight", f"{_PREFIX}{index}.1.weight", f"{_PREFIX}{index}.1.bias"]
    blocks = per_conv * (1 + _STRIDED_CONVS)
    inner = 1 if padded else 0  # ASAPNetsBlock.conv_block = [pad,] Sequential(conv, norm), ReLU
    for j in range(lr_depth):
        stem = f"{_PREFIX}{blocks + j}.conv_block.{inner}"
        names += [f"{stem}.0.weight", f"{stem}.1.weight", f"{stem}.1.bias"]
    final = blocks + lr_depth
    return names + [f"{_PREFIX}{final}.weight", f"{_PREFIX}{final}.bias"]


def _our_key_names(lr_depth: int) -> list[str]:
    names = []
    for n in range(1 + _STRIDED_CONVS + lr_depth):
        names += [f"lowres.body.{n}.0.weight", f"lowres.body.{n}.1.weight", f"lowres.body.{n}.1.bias"]
    return names + ["lowres.to_params.weight", "lowres.to_params.bias"]


def _is_tensor_dict(value) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _read_state_dict(checkpoint, map_location) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict and a name for messages: from a path, a state_dict, or a dict wrapping one."""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        loaded = load_weights_file(source, "checkpoint", map_location=map_location)
    elif isinstance(checkpoint, Mapping):
        source = "the given state_dict"
        loaded = checkpoint
        if isinstance(map_location, (str, torch.device)):
            loaded = {k: v.to(map_location) if isinstance(v, torch.Tensor) else v for k, v in loaded.items()}
    else:
        raise TypeError(
            f"checkpoint must be a path or a state_dict (a mapping of names to tensors), "
            f"got {type(checkpoint).__name__}"
        )
    if not _is_tensor_dict(loaded):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(loaded, Mapping) and _is_tensor_dict(loaded.get(k))]
        if not wrapped:
            found = list(loaded)[:10] if isinstance(loaded, Mapping) else type(loaded).__name__
            raise ValueError(
                f"{source}: expected a generator state_dict (names -> tensors) or a dict holding one "
                f"under one of {_WRAPPER_KEYS}, found {found}"
            )
        loaded = loaded[wrapped[0]]
    state = {}
    for key, value in loaded.items():
        name = key
        while name.startswith("module."):  # saved from (nested) DataParallel
            name = name[len("module.") :]
        if name in state:
            raise ValueError(f"{source}: key {key!r} appears both with and without a 'module.' prefix")
        state[name] = value
    return state, source


def _solve_mlp(
    param_count: int,
    lr_inputs: int,
    *,
    num_classes,
    cell_size,
    instance_edges,
    hidden_width,
    depth,
    out_channels,
    source: str,
    final_key: str,
) -> tuple[int, int, bool]:
    """(num_classes, cell_size, instance_edges) whose per-pixel MLP has ``param_count`` parameters
    and whose LR stream has ``lr_inputs`` input channels."""
    cells = [cell_size] if cell_size is not None else [2**k for k in range(4, _MAX_CELL_LOG2 + 1)]
    edge_options = [instance_edges] if instance_edges is not None else [True, False]
    fits = []
    for edges in edge_options:
        classes = lr_inputs - int(edges)
        if classes < 1 or (num_classes is not None and classes != num_classes):
            continue
        for cell in cells:
            if MLPShape(classes, cell, out_channels, hidden_width, depth).param_count == param_count:
                fits.append((classes, cell, edges))
    given = f"hidden_width={hidden_width}, depth={depth}, out_channels={out_channels}" + "".join(
        f", {name}={value}"
        for name, value in (("num_classes", num_classes), ("cell_size", cell_size), ("instance_edges", instance_edges))
        if value is not None
    )
    if not fits:
        raise ValueError(
            f"{source}: its LR stream predicts P={param_count} parameters per cell ({final_key}) from {lr_inputs} input "
            f"channels, which fits no per-pixel MLP with {given} (cell_size a power of two 16..{2**_MAX_CELL_LOG2}, "
            f"with or without an instance-edge channel): pass hidden_width= and depth= as trained (the published "
            f"--hr_width, --hr_depth; defaults 64 and 5) and out_channels= (--output_nc)"
        )
    if len(fits) > 1:
        options = "; ".join(f"num_classes={c}, cell_size={s}, instance_edges={e}" for c, s, e in fits)
        raise ValueError(
            f"{source}: P={param_count} fits several generators with {given}: {options}; "
            f"pass cell_size= and instance_edges= to choose"
        )
    return fits[0]


def load_official_checkpoint(
    checkpoint,
    *,
    num_classes: int | None = None,
    cell_size: int | None = None,
    hidden_width: int = 64,
    depth: int = 5,
    out_channels: int = 3,
    instance_edges: bool | None = None,
    label_input: bool = True,
    lr_padding: str | None = None,
    precision: str = "fp32",
    lr_precision: str | None = None,
    backend: str = "auto",
    map_location="cpu",
    strict: bool = True,
) -> ASAPNetGenerator:
    """An :class:`ASAPNetGenerator` holding a generator saved by the published ASAP-Net code.

    For inputs whose height and width are multiples of the cell size (all the published code
    accepts) the returned generator computes the published generator's image, with labels in
    ``[0, num_classes)`` (the published datasets map the "don't care" label 255 to ``label_nc``,
    the last class, with ``--contain_dontcare_label``) and, if it was trained with instance edges,
    ``edges=`` (B, 1, H, W): 1.0 where a pixel's instance id differs from a 4-neighbour's.

    Args:
        checkpoint: a path to the published ``*_net_G.pth``, or its state_dict; a dict wrapping the
            state_dict (under "state_dict", "model_state_dict", "netG", "G", "generator" or
            "model") and ``module.`` prefixes (DataParallel) are accepted.
        num_classes: the one-hot channels (``label_nc``, + 1 with ``--contain_dontcare_label``), or
            the image channels with ``label_input=False``; inferred from the shapes, checked if given.
        cell_size: the published ``crop_size // (16 * aspect_ratio)``; inferred, checked if given.
        hidden_width, depth, out_channels: the per-pixel MLP (``--hr_width``, ``--hr_depth``,
            ``--output_nc``): not inferable from the shapes alone (many combinations give one
            parameter count), so the published defaults 64, 5, 3 unless given; a checkpoint they
            do not fit raises an error saying so.
        instance_edges: whether the LR stream has an extra instance-edge channel (the published
            ``lr_instance`` with instance edges, as for Cityscapes); inferred, checked if given.
            (A published generator built with ``lr_instance`` but no instance channel, whose HR
            stream ignores the last class, has the same shapes and is read as one with edges.)
        label_input: the generator takes integer label maps (True) or images (the published
            ``--no_one_hot``); the shapes cannot tell.
        lr_padding: "zeros", "reflect" (``--reflection_pad``) or "replicate" (``--replicate_pad``).
            The file tells zeros from the other two, not reflect from replicate (the padding
            modules have no weights): required then, checked otherwise.
        precision, lr_precision, backend: passed to :class:`ASAPNetGenerator`.
        map_location: where the tensors are loaded (``torch.load``'s argument); the generator is
            returned on their device.
        strict: when False, keys that belong to no part of the published generator are ignored
            with a warning; missing keys and shape mismatches raise either way.

    Returns the generator in eval mode. Raises ``ValueError`` naming the key or argument at fault
    (unknown or missing keys, shapes that do not match, an argument that contradicts the file or
    is needed), ``FileNotFoundError`` for a missing file.
    """
    state, source = _read_state_dict(checkpoint, map_location)
    _reject_spectral_norm(state, source)
    padded = _padding_modules(state, source, lr_padding)
    lr_depth, expected = _published_keys(state, source, padded, strict)
    first, final = (_conv_weight(state, key, source) for key in (expected[0], expected[-2]))
    lr_width, lr_inputs = first.shape[:2]
    param_count, lr_max_width = final.shape[:2]
    num_classes, cell_size, instance_edges = _solve_mlp(
        param_count,
        lr_inputs,
        num_classes=num_classes,
        cell_size=cell_size,
        instance_edges=instance_edges,
        hidden_width=hidden_width,
        depth=depth,
        out_channels=out_channels,
        source=source,
        final_key=expected[-2],
    )
    model = ASAPNetGenerator(
        num_classes,
        cell_size=cell_size,
        out_channels=out_channels,
        hidden_width=hidden_width,
        depth=depth,
        lr_width=lr_width,
        lr_max_width=lr_max_width,
        lr_depth=lr_depth,
        label_input=label_input,
        instance_edges=instance_edges,
        precision=precision,
        backend=backend,
        lr_padding=lr_padding or "zeros",
        lr_precision=lr_precision,
    )
    described = (
        f"the published generator with lr_width={lr_width}, lr_max_width={lr_max_width}, "
        f"{lr_inputs} input channels and P={param_count}"
    )
    model.load_state_dict(_to_our_names(state, expected, lr_depth, model, source, described), strict=True)
    return model.to(first.device).eval()


def _reject_spectral_norm(state: dict, source: str) -> None:
    spectral = [k for k in state if re.search(r"\.weight_(orig|u|v)$", k)]
    if spectral:
        raise ValueError(
            f"{source}: {spectral[0]!r} is a spectral-norm parameter (--norm_G spectral...): only the "
            f"published generator's default norm, instanceaffine, is supported"
        )


def _padding_modules(state: dict, source: str, lr_padding: str | None) -> bool:
    """Whether the LR stream has padding modules (reflect / replicate: its first conv is module 1),
    checked against ``lr_padding``, which the file cannot tell for those two."""
    padded = f"{_PREFIX}1.0.weight" in state
    if not padded and f"{_PREFIX}0.0.weight" not in state:
        raise ValueError(
            f"{source}: missing key {_PREFIX}0.0.weight (or {_PREFIX}1.0.weight with padding modules): "
            f"the first conv of the published LR stream; found keys {sorted(state)[:8]}"
        )
    if padded and lr_padding not in ("reflect", "replicate"):
        raise ValueError(
            f"{source}: the LR stream was trained with padding modules (--reflection_pad or "
            f"--replicate_pad; its first conv is {_PREFIX}1.0.weight), which the file cannot tell "
            f"apart: pass lr_padding='reflect' or lr_padding='replicate', got {lr_padding!r}"
        )
    if not padded and lr_padding not in (None, "zeros"):
        raise ValueError(
            f"{source}: the LR stream pads with zeros (no padding modules: its first conv is "
            f"{_PREFIX}0.0.weight), but lr_padding={lr_padding!r} was given; pass lr_padding=None or "
            f"'zeros' (one of {LR_PADDINGS})"
        )
    return padded


def _published_keys(state: dict, source: str, padded: bool, strict: bool) -> tuple[int, list[str]]:
    """(lr_depth, the published generator's key names in order), read off the residual blocks
    present; missing keys raise, unexpected ones raise (strict) or warn."""
    block_pattern = re.compile(re.escape(_PREFIX) + r"(\d+)\.conv_block\.")
    lr_depth = len({m.group(1) for k in state if (m := block_pattern.match(k))})
    strided = len({m.group(1) for k in state if (m := re.match(re.escape(_PREFIX) + r"(\d+)\.0\.weight$", k))}) - 1
    if strided != _STRIDED_CONVS:
        raise ValueError(
            f"{source}: its LR stream has {strided} strided convs (learned_ds_factor {2 ** max(strided, 0)}); "
            f"only the published learned_ds_factor {LR_DOWNSAMPLING} ({_STRIDED_CONVS} convs) is supported"
        )
    expected = official_key_names(lr_depth, padded)
    described = f"the published generator with lr_depth={lr_depth}{' and padding modules' if padded else ''}"
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing} of {described}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        message = (
            f"{source}: unexpected key(s) {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}: not part "
            f"of {described}"
        )
        if strict:
            raise ValueError(message + " (strict=False ignores them)")
        warnings.warn(message + "; ignored (strict=False)", stacklevel=3)
    return lr_depth, expected


def _conv_weight(state: dict, key: str, source: str) -> torch.Tensor:
    if state[key].dim() != 4:
        raise ValueError(f"{source}: {key} must be a conv weight (4 dimensions), got shape {tuple(state[key].shape)}")
    return state[key]


def _to_our_names(
    state: dict, expected: list[str], lr_depth: int, model: ASAPNetGenerator, source: str, described: str
) -> dict:
    """The published tensors under our module names, each checked against our generator's shape."""
    ours = model.state_dict()
    mapped = {}
    for official, name in zip(expected, _our_key_names(lr_depth), strict=True):
        tensor = state[official]
        if tensor.shape != ours[name].shape:
            raise ValueError(
                f"{source}: {official} has shape {tuple(tensor.shape)}, expected {tuple(ours[name].shape)} for {described}"
            )
        mapped[name] = tensor
    return mapped


# --- model files: a generator with its label convention, whatever trained it -------------------

MODEL_FORMAT = "asapnet-triton-model/1"
SHIPPED_MODEL_FILE = "procedural-facades-256.pt"  # in asapnet_triton/pretrained/, with MODEL_CARD.md
_RUNTIME_KWARGS = ("precision", "backend", "lr_precision")  # how to run it, not what it computes


@dataclasses.dataclass
class TrainedModel:
    """A generator ready to translate, with the label convention its inputs must follow.

    ``labels`` is None for image-input generators; ``card`` is what the model file records about
    how it was made (data, settings, steps, scores), empty when unknown; ``source`` names where it
    came from.
    """

    generator: ASAPNetGenerator
    labels: LabelConvention | None
    source: str
    card: dict = dataclasses.field(default_factory=dict)

    def encode(self, raw: torch.Tensor, *, source: str) -> torch.Tensor:
        """Stored label values -> the class indices this model reads (see :meth:`LabelConvention.encode`)."""
        if self.labels is None:
            raise ValueError(f"{source}: this model translates images, not label maps")
        return self.labels.encode(raw, source=source)


def model_record(generator: ASAPNetGenerator, labels: LabelConvention | None) -> dict:
    """What a file needs to rebuild ``generator`` and feed it: its constructor arguments and label
    convention (plain types). Training checkpoints hold it under "model" beside the weights."""
    if not isinstance(generator, ASAPNetGenerator):
        raise TypeError(f"generator must be an ASAPNetGenerator, got {type(generator).__name__}")
    if generator.label_input != (labels is not None):
        raise ValueError(
            "labels: a label-map generator needs its LabelConvention, an image generator None; got "
            f"{'None' if labels is None else labels.dataset} for label_input={generator.label_input}"
        )
    if labels is not None and labels.num_classes != generator.shape.in_channels:
        raise ValueError(
            f"labels: the convention has {labels.num_classes} classes, the generator reads "
            f"{generator.shape.in_channels}"
        )
    return {"generator_kwargs": dict(generator.init_kwargs), "labels": None if labels is None else labels.to_dict()}


def save_model(
    path: str | os.PathLike, generator: ASAPNetGenerator, labels: LabelConvention | None, *, card: dict | None = None
) -> None:
    """Write ``generator`` (weights on the CPU), its label convention and a model card (a dict of
    plain values: data, settings, steps, scores) to ``path`` atomically; :func:`load_model` reads it."""
    state = {
        "format": MODEL_FORMAT,
        **model_record(generator, labels),
        "card": dict(card or {}),
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }
    atomic_write(path, lambda file: torch.save(state, file))


def _rebuild(record: dict, weights: dict, *, source: str, backend, precision, map_location) -> TrainedModel:
    kwargs = dict(record["generator_kwargs"])
    if backend is not None:
        kwargs["backend"] = backend
    if precision is not None:
        kwargs["precision"], kwargs["lr_precision"] = precision, None
    labels = None if record["labels"] is None else LabelConvention.from_dict(record["labels"])
    generator = ASAPNetGenerator(**kwargs)
    try:
        generator.load_state_dict(weights)
    except RuntimeError as error:  # missing/unexpected keys or shapes: the file is not this architecture
        raise ValueError(f"{source}: the weights do not fit the generator the file describes ({error})") from None
    if labels is not None and labels.num_classes != generator.shape.in_channels:
        raise ValueError(
            f"{source}: its label convention has {labels.num_classes} classes, its generator reads "
            f"{generator.shape.in_channels}"
        )
    device = map_location if isinstance(map_location, (str, torch.device)) else None
    return TrainedModel(generator.to(device).eval() if device is not None else generator.eval(), labels, source)


def _official_labels(generator: ASAPNetGenerator, dataset: str | None, source: str) -> LabelConvention | None:
    """The published convention of the data set a published checkpoint was trained on: given, or
    read off its class count (13: facades, 35: cityscapes, 36: cityscapes with don't-care)."""
    if not generator.label_input:
        return None
    classes = generator.shape.in_channels
    if dataset is None:
        dataset = {13: "facades", 35: "cityscapes", 36: "cityscapes"}.get(classes)
        if dataset is None:
            raise ValueError(
                f"{source}: a published generator with {classes} classes belongs to no data set this "
                f"package can tell by its class count (13 facades, 35 or 36 cityscapes); pass dataset= "
                f"(one of {', '.join(DATASET_CONVENTIONS)})"
            )
    default, fixed = DATASET_CONVENTIONS.get(dataset, (None, False))
    if fixed:  # one more channel than the data set's classes: the published --contain_dontcare_label
        labels = label_convention(dataset, dontcare=classes == default + 1)
    else:
        labels = label_convention(dataset, classes)
    if labels.num_classes != classes:
        raise ValueError(
            f"{source}: the generator reads {classes} classes, but dataset={dataset!r} has {labels.num_classes}"
        )
    return labels


def shipped_model_path() -> Path:
    """The model file shipped inside the package (``asapnet_triton/pretrained/``): ASAP-Net trained
    on the embedded procedural facades at 256x256 (its card: ``load_model(path).card`` and
    ``pretrained/MODEL_CARD.md``). Raises FileNotFoundError when this installation lacks it."""
    path = Path(__file__).resolve().parent / "pretrained" / SHIPPED_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped model {path} is missing from this installation of asapnet-triton (a build "
            f"without package data?): reinstall the package, or pass a model file or checkpoint of your own"
        )
    return path


def load_model(
    path: str | os.PathLike | None = None,
    *,
    official: bool = False,
    dataset: str | None = None,
    map_location="cpu",
    backend: str | None = None,
    precision: str | None = None,
    **official_kwargs,
) -> TrainedModel:
    """A trained generator and the label convention it expects, from any file this project reads.

    Args:
        path: a model file (:func:`save_model`), a training checkpoint (``OUT/checkpoints/step_N.pt``
            of ``asapnet train``), None for the model shipped in the package
            (:func:`shipped_model_path`), or, with ``official=True``, a generator saved by the published
            ASAP-Net code (``latest_net_G.pth``).
        official: read ``path`` with :func:`load_official_checkpoint`; ``official_kwargs`` go to it.
        dataset: (official only) the data set the published model was trained on, for its label
            convention; by default read off the class count (13: facades, 35/36: cityscapes).
        map_location: where the weights are loaded and the generator placed.
        backend, precision: override how the generator runs (e.g. ``backend="triton"`` on a GPU).

    Raises ValueError naming the file for anything it cannot read, FileNotFoundError when missing.
    """
    if path is None:
        if official:
            raise TypeError("load_model: official=True needs the path of a published checkpoint, got path=None")
        path = shipped_model_path()
    source = str(path)
    if official:
        kwargs = dict(official_kwargs)
        if backend is not None:
            kwargs["backend"] = backend
        if precision is not None:
            kwargs["precision"] = precision
        generator = load_official_checkpoint(path, map_location=map_location, **kwargs)
        return TrainedModel(
            generator,
            _official_labels(generator, dataset, source),
            source,
            {"trained_by": "the published ASAP-Net code"},
        )
    if official_kwargs or dataset is not None:
        given = sorted(official_kwargs) + (["dataset"] if dataset is not None else [])
        raise TypeError(f"load_model: {', '.join(given)} only apply to official=True (a published checkpoint)")
    state = load_weights_file(source, "model file", map_location=map_location)
    if not isinstance(state, dict):
        raise ValueError(
            f"{source} is not an asapnet-triton model file or training checkpoint (it holds a {type(state).__name__})"
        )
    if state.get("format") == MODEL_FORMAT:
        model = _rebuild(
            state, state["state_dict"], source=source, backend=backend, precision=precision, map_location=map_location
        )
        model.card = dict(state.get("card") or {})
        return model
    if "model" in state and "generator" in state:  # a training checkpoint: the weights beside their record
        model = _rebuild(
            state["model"],
            state["generator"],
            source=source,
            backend=backend,
            precision=precision,
            map_location=map_location,
        )
        model.card = {"trained_by": "asapnet train", "step": state.get("step"), "config": state.get("config")}
        return model
    if "generator" in state:
        raise ValueError(
            f"{source} is a training checkpoint written before checkpoints recorded their model and "
            f"label convention (asapnet-triton 0.1; its facades labels were shifted by one): retrain it"
        )
    if any(key.startswith(_PREFIX) or key.startswith("module." + _PREFIX) for key in state):
        raise ValueError(
            f"{source} holds a generator saved by the published ASAP-Net code: pass official=True (--official)"
        )
    raise ValueError(
        f"{source} is not an asapnet-triton model file (format {state.get('format')!r}, expected "
        f"{MODEL_FORMAT!r}) or training checkpoint"
    )
