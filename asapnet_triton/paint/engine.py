"""The model side of ``asapnet paint``: uploads checked and decoded, frames translated one at a
time by a single worker thread, and the newest request of every client (browser tab) winning.

Nothing here knows about HTTP: :class:`PaintModel` turns PNG bytes into class-index maps (or
images) and a map into a photo with the time of each stream; :class:`FrameScheduler` owns the one
worker thread that runs the model, with at most one waiting request per client and at most
``max_waiting`` clients waiting. The server (``asapnet_triton.paint.server``) maps
:class:`UploadError` and :class:`Busy` to HTTP statuses.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import struct
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..fileio import image_to_uint8
from ..functional import resolve_backend

__all__ = [
    "Busy",
    "Frame",
    "FrameScheduler",
    "MAX_OUTPUT_SIDE",
    "MAX_UPLOAD_BYTES",
    "MIN_OUTPUT_SIDE",
    "PaintModel",
    "UploadError",
    "output_size",
    "upsample_nearest",
]

MIN_OUTPUT_SIDE = 256
MAX_OUTPUT_SIDE = 2048
# The largest upload: a 2048 x 2048 RGBA PNG stored without compression is ~16 MiB (+ chunk headers).
MAX_UPLOAD_BYTES = 17 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PIL modes a PNG of integer class values decodes to: 1-bit, 8-bit grey, palette (the index is the
# value, as in the CMP Facades files), 16-bit grey; "I" is how some PIL versions give 16-bit grey.
LABEL_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I")
# class names of a label convention that stand for no photo content (see PaintModel.unused_classes)
UNUSED_CLASS_NAMES = ("unused", "unknown")
IMAGE_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I")


class UploadError(ValueError):
    """An upload or request the server refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Busy(RuntimeError):
    """Too many clients are already waiting for a frame."""


def output_size(input_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """The photo's (height, width) for an input of ``input_hw``: ``size`` on the longer side, the
    input's aspect ratio on the shorter (rounded, at least 1)."""
    height, width = input_hw
    if height >= width:
        return size, max(1, round(size * width / height))
    return max(1, round(size * height / width)), size


def upsample_nearest(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of the last two dimensions of ``x`` to ``size_hw``: output pixel
    (i, j) takes input pixel (floor(i * H / H'), floor(j * W / W')), so an integer factor k turns
    every input pixel into a k x k block, exactly."""
    height, width = x.shape[-2:]
    out_h, out_w = size_hw
    if (height, width) == (out_h, out_w):
        return x
    rows = torch.arange(out_h, device=x.device) * height // out_h
    cols = torch.arange(out_w, device=x.device) * width // out_w
    return x[..., rows[:, None], cols[None, :]]


def decode_png(data: bytes) -> Image.Image:
    """Decode an uploaded PNG, refusing anything that is not one, is damaged, or is larger than
    ``MAX_OUTPUT_SIDE`` on a side, before its pixels are decompressed (decompression bombs)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(413, f"upload is {len(data)} bytes; the largest accepted is {MAX_UPLOAD_BYTES} bytes")
    if not data.startswith(PNG_SIGNATURE):
        raise UploadError(415, "upload is not a PNG (it does not start with the PNG signature); send a PNG file")
    # The PNG header (IHDR, first after the signature) gives the size: refuse oversized images
    # before PIL sees them, so a few KiB claiming a gigapixel never reach a decompressor.
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UploadError(400, "upload is a damaged PNG: it has no IHDR header chunk")
    width, height = struct.unpack(">II", data[16:24])
    if width > MAX_OUTPUT_SIDE or height > MAX_OUTPUT_SIDE:
        raise UploadError(
            413, f"upload is {width} x {height} pixels; the largest accepted is {MAX_OUTPUT_SIDE} on a side"
        )
    if width < 1 or height < 1:
        raise UploadError(400, f"upload is a damaged PNG: its header says {width} x {height} pixels")
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except UnidentifiedImageError as error:  # its message names a BytesIO object: say what it means
        raise UploadError(400, "upload is a damaged PNG: its header chunk cannot be read") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(400, f"upload is a damaged PNG: {error}") from error
    if image.size != (width, height):
        raise UploadError(400, f"upload is a damaged PNG: its header says {width} x {height} pixels")
    try:
        image.load()  # the header said at most MAX_OUTPUT_SIDE**2 pixels: this is the only allocation
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UploadError(400, f"upload is a damaged or truncated PNG: {error}") from error
    return image


@dataclasses.dataclass
class Frame:
    """A translated photo: (H, W, 3) uint8, and the milliseconds each stream took."""

    photo: np.ndarray
    lr_ms: float
    hr_ms: float


class PaintModel:
    """A loaded model as ``asapnet paint`` serves it (one instance per server).

    ``model``: an :class:`asapnet_triton.checkpoints.TrainedModel`. Label-map generators take
    single-channel PNGs of the raw values of their data set's label convention (``model.labels``;
    the values the data set's own files hold), image generators RGB PNGs. ``examples``: class-index
    maps (int64 (H, W)) the page offers as starting points.
    """

    def __init__(self, model, *, device: str | torch.device = "cpu", examples: list[torch.Tensor] | None = None):
        generator = model.generator
        if getattr(generator, "instance_edges", False):
            raise ValueError(
                f"{model.source}: this generator also reads an instance-edge map, which a painted "
                f"label map does not have; asapnet paint serves generators without instance edges"
            )
        if generator.label_input and model.labels is None:
            raise ValueError(f"{model.source}: a label-map generator without a label convention")
        if generator.label_input and model.labels.num_classes != generator.shape.in_channels:
            raise ValueError(
                f"{model.source}: its label convention has {model.labels.num_classes} classes, the "
                f"generator reads {generator.shape.in_channels}"
            )
        if not generator.label_input and generator.shape.in_channels != 3:
            raise ValueError(
                f"{model.source}: an image-input generator with {generator.shape.in_channels} channels; "
                f"asapnet paint uploads RGB images (3 channels)"
            )
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.labels = model.labels if generator.label_input else None
        self.source = model.source
        self.examples = list(examples or [])
        self.raw_values = self._raw_values() if self.labels is not None else None

    @property
    def label_input(self) -> bool:
        return self.labels is not None

    def _raw_values(self) -> list[int]:
        """The raw label value of each class, so that ``labels.encode(raw_values[c]) == c``: the
        page writes these into the PNGs it sends and downloads (the data set's own convention,
        readable by ``asapnet translate`` and the data loaders)."""
        labels = self.labels
        raw = torch.arange(labels.num_classes)
        if labels.unknown_class is not None and labels.unknown_value is not None:
            raw[labels.unknown_class] = labels.unknown_value
        encoded = labels.encode(raw, source=f"{self.source} (its label convention)")
        if not torch.equal(encoded, torch.arange(labels.num_classes)):
            raise ValueError(
                f"{self.source}: label convention {labels.dataset!r} does not store class c as the raw "
                f"value c (or unknown_value for unknown_class); asapnet paint cannot write its PNGs"
            )
        return raw.tolist()

    def info(self) -> dict:
        """What the page needs to know about the model (served as /api/model)."""
        g = self.generator
        info = {
            "source": self.source,
            "input": "labels" if self.label_input else "image",
            "cell_size": g.shape.cell_size,
            "in_channels": g.shape.in_channels,
            "backend": resolve_backend(g.highres.backend, self.device),
            "precision": g.precision,
            "device": str(self.device),
            "min_size": MIN_OUTPUT_SIDE,
            "max_size": MAX_OUTPUT_SIDE,
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "examples": [
                {"index": i, "height": int(e.shape[0]), "width": int(e.shape[1])} for i, e in enumerate(self.examples)
            ],
        }
        if self.label_input:
            labels = self.labels
            info |= {
                "dataset": labels.dataset,
                "num_classes": labels.num_classes,
                "class_names": list(labels.class_names),
                "colours": labels.colours().tolist(),
                "raw_values": self.raw_values,
                "background_class": self.background_class(),
                "unused_classes": self.unused_classes(),
            }
        return info

    def unused_classes(self) -> list[int]:
        """Classes that stand for no content of the data set's photos (named in
        ``UNUSED_CLASS_NAMES``: the facades convention's index 0, a don't-care channel); the page
        lists them last-resort (never pre-selected, never the background)."""
        return [index for index, name in enumerate(self.labels.class_names) if name.lower() in UNUSED_CLASS_NAMES]

    def background_class(self) -> int:
        """The class a new or cleared canvas is filled with: the first one that is not unused
        (facades: "background")."""
        unused = set(self.unused_classes())
        return next((index for index in range(self.labels.num_classes) if index not in unused), 0)

    @staticmethod
    def decode_labels(labels, image: Image.Image, *, source: str) -> torch.Tensor:
        """A decoded PNG (:func:`decode_png`) of raw values of the convention ``labels`` as class
        indices, int64 (H, W); :class:`UploadError` (422) naming ``source`` otherwise."""
        if image.mode not in LABEL_MODES:
            raise UploadError(
                422,
                f"{source} has PNG mode {image.mode}; a label map is a single-channel PNG of "
                f"class values (8- or 16-bit greyscale or palette), not a colour-coded image",
            )
        raw = torch.from_numpy(np.asarray(image).astype(np.int32))
        try:
            return labels.encode(raw, source=source)
        except ValueError as error:
            raise UploadError(422, str(error)) from error

    def read_labels(self, data: bytes) -> torch.Tensor:
        """An uploaded label-map PNG (raw values of the label convention) as class indices, int64
        (H, W); :class:`UploadError` for anything else."""
        if not self.label_input:
            raise UploadError(400, "this model translates images, not label maps")
        return self.decode_labels(self.labels, decode_png(data), source="upload")

    def read_image(self, data: bytes) -> Image.Image:
        """An uploaded image PNG as an RGB PIL image (8 bits a channel)."""
        if self.label_input:
            raise UploadError(400, "this model translates label maps, not images")
        image = decode_png(data)
        if image.mode not in IMAGE_MODES:
            raise UploadError(422, f"upload has PNG mode {image.mode}; expected an RGB, RGBA or greyscale image")
        if image.mode.startswith("I"):
            # 16-bit grey to 8-bit, rounded (65535 / 257 = 255)
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8), mode="L")
        return image.convert("RGB")

    def read_input(self, data: bytes):
        """The model's input read from an upload, compact while it waits for its turn: class
        indices (H, W) as uint8 (int16 above 256 classes), or an RGB PIL image."""
        if not self.label_input:
            return self.read_image(data)
        return self.read_labels(data).to(torch.uint8 if self.labels.num_classes <= 256 else torch.int16)

    def warm_up(self) -> None:
        """Translate one small blank input, so that one-time costs (allocator, kernels, caches)
        do not land on the first frame a user waits for."""
        side = 2 * self.generator.shape.cell_size
        if self.label_input:
            blank = torch.full((side, side), self.background_class(), dtype=torch.uint8)
        else:
            blank = Image.new("RGB", (side, side))
        self.translate(blank, max(MIN_OUTPUT_SIDE, side))

    @staticmethod
    def check_size(size) -> None:
        """``size`` (the photo's longer side) must be an integer in 256..2048."""
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_OUTPUT_SIDE <= size <= MAX_OUTPUT_SIDE:
            raise UploadError(400, f"size must be an integer from {MIN_OUTPUT_SIDE} to {MAX_OUTPUT_SIDE}, got {size!r}")

    def translate(self, x, size: int) -> Frame:
        """The photo of ``x`` (from :meth:`read_input`, or class indices (H, W)) with ``size``
        pixels on its longer side; ``x`` is upsampled (nearest neighbour) to that size first."""
        from ..data.transforms import image_to_tensor

        self.check_size(size)
        x = x.long() if self.label_input else image_to_tensor(x)
        x = upsample_nearest(x.to(self.device), output_size(tuple(x.shape[-2:]), size))[None]
        generator, cuda = self.generator, self.device.type == "cuda"
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                params = generator.lowres_params(x)
                if cuda:
                    torch.cuda.synchronize(self.device)
                middle = time.perf_counter()
                image = generator.highres(x, params)
                if cuda:
                    torch.cuda.synchronize(self.device)
                end = time.perf_counter()
        except ValueError as error:  # e.g. an output of one cell for a large-cell model
            raise UploadError(422, f"the model cannot translate this input: {error}") from error
        return Frame(image_to_uint8(image[0]), 1e3 * (middle - start), 1e3 * (end - middle))


@dataclasses.dataclass(eq=False)
class Job:
    """One request for a frame. ``status`` ends as "done" (``frame`` set), "stale" (a newer request
    of the same client replaced it before it ran), "gone" (its client had disconnected when its
    turn came) or "error" (``error`` set); ``done`` is set then."""

    client: str
    seq: int
    work: Callable[[], Frame]
    client_gone: Callable[[], bool] = lambda: False
    status: str = "waiting"
    frame: Frame | None = None
    error: BaseException | None = None
    queued_at: float = dataclasses.field(default_factory=time.perf_counter)
    started_at: float | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def finish(self, status: str) -> None:
        self.status = status
        self.done.set()


class FrameScheduler:
    """Runs jobs one at a time on one worker thread (the model is not shared between threads).

    Every client has at most one waiting job: a newer one (higher ``seq``) replaces it, and the
    replaced job finishes as "stale" at once, so a tab that paints faster than the model runs
    gets the newest frame next and never a backlog. A job whose ``seq`` is not above the newest
    the client has submitted is stale on arrival. Clients take turns in the order they started
    waiting. At most ``max_waiting`` clients wait at once; one more raises :class:`Busy`.
    """

    def __init__(self, *, max_waiting: int = 16, remembered_clients: int = 1024):
        self.max_waiting = max_waiting
        self._remembered = remembered_clients
        self._waiting: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._newest_seq: collections.OrderedDict[str, int] = collections.OrderedDict()  # bounded LRU
        self._lock = threading.Condition()
        self._closed = False
        self.counts = collections.Counter()
        self.last_work_ms = 0.0  # how long the latest job took (the model's time for one frame)
        self._thread = threading.Thread(target=self._run, name="asapnet-paint-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (or finish it as stale); returns it. Raises :class:`Busy`."""
        with self._lock:
            if self._closed:
                raise Busy("the server is shutting down")
            newest = self._newest_seq.get(job.client)
            if newest is not None and job.seq <= newest:
                self.counts["stale"] += 1
                job.finish("stale")
                return job
            replaced = self._waiting.get(job.client)
            if replaced is None and len(self._waiting) >= self.max_waiting:
                self.counts["busy"] += 1
                raise Busy(f"{len(self._waiting)} other tabs are waiting for a frame (at most {self.max_waiting})")
            self._newest_seq[job.client] = job.seq
            self._newest_seq.move_to_end(job.client)
            while len(self._newest_seq) > self._remembered:
                self._newest_seq.popitem(last=False)
            if replaced is not None:
                self.counts["stale"] += 1
                replaced.finish("stale")
            self._waiting[job.client] = job  # a replacement keeps the client's place in line
            self._lock.notify()
        return job

    def _finish(self, job: Job, status: str) -> None:
        with self._lock:  # the handler threads count under the same lock
            self.counts[status] += 1
        job.finish(status)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                _, job = self._waiting.popitem(last=False)
            if job.client_gone():
                self._finish(job, "gone")
                continue
            job.started_at = time.perf_counter()
            try:
                job.frame = job.work()
                self.last_work_ms = 1e3 * (time.perf_counter() - job.started_at)
            except BaseException as error:  # the job's own error; the worker carries on
                job.error = error
                self._finish(job, "error")
            else:
                self._finish(job, "done")

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        """Stop the worker after its current job; waiting jobs finish as "stale"."""
        with self._lock:
            self._closed = True
            for job in self._waiting.values():
                job.finish("stale")
            self._waiting.clear()
            self._lock.notify_all()
        self._thread.join(timeout=60)
