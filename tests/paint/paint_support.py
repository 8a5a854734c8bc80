"""Shared pieces of the ``asapnet paint`` tests: small random models, their expected photos
(float64), PNG bytes, a server on a free port in a thread, and an HTTP client."""

from __future__ import annotations

import contextlib
import copy
import http.client
import io
import json
import threading

import numpy as np
import torch
from PIL import Image

import asapnet_triton as at
from asapnet_triton.checkpoints import save_model
from asapnet_triton.labels import label_convention
from asapnet_triton.paint import make_server, open_model
from asapnet_triton.paint.engine import output_size, upsample_nearest
from asapnet_triton.testing import tiny_generator

FACADES = label_convention("facades")


def random_generator(
    seed: int,
    *,
    num_classes: int = FACADES.num_classes,
    label_input: bool = True,
    cell_size: int = 16,
    input_independent_params: bool = False,
) -> at.ASAPNetGenerator:
    """A small generator with weights far from the published initialisation (whose tiny gain
    makes every photo nearly flat), so that different labels give clearly different photos.

    ``input_independent_params``: the LR stream's last conv has zero weights (random biases), so
    every cell gets the same MLP whatever the labels: a pixel's colour then depends on its own
    label and position only (the biases are scaled so that the photo is rarely clamped, so
    different labels give different colours almost everywhere). (With the LR stream's instance norms, any other model changes every
    pixel a little whenever any label changes.)"""
    torch.manual_seed(seed)
    model = tiny_generator(num_classes, noise=0.3, cell_size=cell_size, label_input=label_input)
    if input_independent_params:
        with torch.no_grad():
            model.lowres.to_params.weight.zero_()
            # small enough that few outputs reach the clamp at +-1, where two labels would look alike
            model.lowres.to_params.bias.copy_(0.3 * torch.randn_like(model.lowres.to_params.bias))
    return model


def save_random_model(path, seed: int = 0, **options) -> at.ASAPNetGenerator:
    generator = random_generator(seed, **options)
    save_model(path, generator, FACADES if generator.label_input else None)
    return generator


def expected_photo(generator, x: torch.Tensor, size: int) -> np.ndarray:
    """The photo the server should send for input ``x`` (class indices (H, W) or a float image
    (3, H, W) in [-1, 1]) at ``size``: upsampled to the output size (nearest), the generator run
    in float64 with the reference HR stream, as (H, W, 3) uint8."""
    reference = copy.deepcopy(generator).double()
    reference.highres.backend, reference.highres.precision = "reference", "fp64"
    x = upsample_nearest(x, output_size(tuple(x.shape[-2:]), size))[None]
    with torch.no_grad():
        image = reference(x if not x.dtype.is_floating_point else x.double())[0]
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """``array`` as PNG bytes, in PIL ``mode`` ("P": the values as palette indices)."""
    if mode == "P":
        image = Image.frombytes("P", array.shape[::-1], array.astype(np.uint8).tobytes())
        image.putpalette([value for index in range(256) for value in (index, 255 - index, index // 2)])
    else:
        image = Image.fromarray(array)
        if mode is not None and image.mode != mode:
            raise ValueError(f"an array of {array.dtype} {array.shape} gives PIL mode {image.mode}, not {mode}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@contextlib.contextmanager
def running_server(model_path, **options):
    """A paint server for ``model_path`` on a free port of 127.0.0.1, serving in a thread."""
    open_keys = ("examples", "official", "hidden_width", "depth")  # open_model's, the rest are make_server's
    open_options = {key: options.pop(key) for key in open_keys if key in options}
    server = make_server(open_model(model_path, **open_options), port=0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def request(
    server, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 120
):
    """(status, headers, body) of one request on a new connection."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_of(body: bytes) -> str:
    """The message of a JSON error answer (and never a traceback)."""
    text = body.decode()
    assert "Traceback" not in text and 'File "' not in text
    return json.loads(text)["error"]


def translate_path(client: str = "t", seq: int = 1, size: int = 256) -> str:
    return f"/api/translate?client={client}&seq={seq}&size={size}"
