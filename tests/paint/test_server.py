"""The ``asapnet paint`` server through an HTTP client: every route, every kind of bad upload,
concurrent tabs, latest-request-wins, disconnects; photos checked against the float64 reference."""

import functools
import json
import re
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from paint_support import (
    FACADES,
    error_of,
    expected_photo,
    png_bytes,
    read_png,
    request,
    running_server,
    save_random_model,
    translate_path,
)

from asapnet_triton.checkpoints import save_model
from asapnet_triton.cli import main
from asapnet_triton.paint.engine import MAX_UPLOAD_BYTES, Job, output_size, upsample_nearest
from asapnet_triton.testing import tiny_generator

NUM_CLASSES = FACADES.num_classes


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("paint") / "model.pt"
    return path, save_random_model(path, seed=1)


@pytest.fixture(scope="module")
def server(model_file):
    with running_server(model_file[0]) as server:
        yield server


def _labels(generator, height, width):
    return torch.randint(0, NUM_CLASSES, (height, width), generator=generator)


def _translate(server, labels, *, client="t", seq=1, size=256, mode="L"):
    return request(server, "POST", translate_path(client, seq, size), png_bytes(labels.numpy().astype(np.uint8), mode))


def _assert_photo(body, generator_model, labels, size):
    photo = read_png(body)
    expected = expected_photo(generator_model, labels, size)
    assert photo.shape == expected.shape
    assert np.abs(photo.astype(int) - expected.astype(int)).max() <= 1  # rounding of an fp32 result
    assert expected.std() > 5  # a photo with content, not a flat image


# -- helpers of the engine ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_hw, out_hw", [((37, 53), (256, 366)), ((64, 64), (256, 256)), ((300, 200), (256, 171)), ((7, 5), (7, 5))]
)
def test_upsample_nearest_matches_torch_nearest(generator, in_hw, out_hw):
    x = torch.randint(0, 1000, (2, *in_hw), generator=generator)
    expected = F.interpolate(x[:, None].double(), size=out_hw, mode="nearest")[:, 0].long()
    assert torch.equal(upsample_nearest(x, out_hw), expected)


def test_output_size_keeps_the_aspect_ratio():
    assert output_size((100, 50), 512) == (512, 256)
    assert output_size((50, 100), 512) == (256, 512)
    assert output_size((37, 53), 256) == (179, 256)


# -- GET routes ------------------------------------------------------------------------------------


def test_page_and_every_asset_it_names(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert {"/static/app.js", "/static/png.js", "/static/style.css"} <= set(assets)
    for asset in assets:
        status, headers, body = request(server, "GET", asset)
        assert status == 200 and len(body) > 100
        assert headers["content-type"].split(";")[0] in ("text/javascript", "text/css")
    # nothing on the page comes from elsewhere
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/../checkpoints.py",
        "/static/%2e%2e/__init__.py",
        "/static/",
        "/nope",
        "/api/examples/x",
    ],
)
def test_unknown_paths_are_404(server, path):
    status, headers, body = request(server, "GET", path)
    assert status == 404 and headers["content-type"] == "application/json"
    assert error_of(body)


def test_wrong_method_is_405(server):
    status, headers, body = request(server, "POST", "/api/model", b"x")
    assert status == 405 and headers["allow"] == "GET"
    status, headers, body = request(server, "GET", "/api/translate")
    assert status == 405 and headers["allow"] == "POST" and "POST" in error_of(body)
    status, _, body = request(server, "PUT", "/api/translate", b"x")
    assert status == 501 and error_of(body)


def test_model_description(server, model_file):
    status, _, body = request(server, "GET", "/api/model")
    assert status == 200
    info = json.loads(body)
    assert info["input"] == "labels" and info["dataset"] == "facades"
    assert info["num_classes"] == NUM_CLASSES == len(info["class_names"]) == len(info["colours"])
    assert info["class_names"] == list(FACADES.class_names)
    assert info["colours"] == FACADES.colours().tolist()
    assert [FACADES.encode(torch.tensor([v]), source="t").item() for v in info["raw_values"]] == list(
        range(NUM_CLASSES)
    )
    assert info["cell_size"] == model_file[1].shape.cell_size
    assert (info["min_size"], info["max_size"]) == (256, 2048)
    assert info["source"] == str(model_file[0])


def test_stats_count_frames(server, generator):
    before = json.loads(request(server, "GET", "/api/stats")[2])
    assert _translate(server, _labels(generator, 20, 30), client="stats")[0] == 200
    after = json.loads(request(server, "GET", "/api/stats")[2])
    assert after["served"] == before["served"] + 1 and after["errors"] == before["errors"]


# -- examples and label uploads --------------------------------------------------------------------


def test_examples_from_a_folder(tmp_path, model_file, generator):
    folder = tmp_path / "examples"
    folder.mkdir()
    maps = [_labels(generator, 40, 24), _labels(generator, 17, 33)]
    for index, labels in enumerate(maps):
        (folder / f"{index}.png").write_bytes(png_bytes(labels.numpy().astype(np.uint8), "L"))
    with running_server(model_file[0], examples=folder) as server:
        info = json.loads(request(server, "GET", "/api/model")[2])
        assert [(e["height"], e["width"]) for e in info["examples"]] == [(40, 24), (17, 33)]
        for index, labels in enumerate(maps):
            status, headers, body = request(server, "GET", f"/api/examples/{index}")
            assert status == 200
            shape = (int(headers["x-label-height"]), int(headers["x-label-width"]))
            assert torch.equal(torch.from_numpy(np.frombuffer(body, "<u2").reshape(shape).astype(np.int64)), labels)
        status, _, body = request(server, "GET", "/api/examples/2")
        assert status == 404 and "2" in error_of(body)


def test_examples_folder_with_a_bad_map_is_refused(tmp_path, model_file):
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / "bad.png").write_bytes(png_bytes(np.full((20, 20), 99, np.uint8), "L"))
    with pytest.raises(ValueError, match="bad.png"):
        with running_server(model_file[0], examples=folder):
            pass


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_label_upload_returns_the_class_indices(server, generator, mode):
    labels = _labels(generator, 31, 45)
    array = labels.numpy().astype(np.uint16 if mode == "I;16" else np.uint8)
    status, headers, body = request(server, "POST", "/api/labels", png_bytes(array, mode))
    assert status == 200 and (headers["x-label-height"], headers["x-label-width"]) == ("31", "45")
    assert torch.equal(torch.from_numpy(np.frombuffer(body, "<u2").reshape(31, 45).astype(np.int64)), labels)


# -- translation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hw, size", [((37, 53), 256), ((64, 48), 300), ((96, 80), 512)])
def test_translate_gives_the_generators_photo(server, model_file, generator, hw, size):
    labels = _labels(generator, *hw)
    status, headers, body = _translate(server, labels, size=size, seq=int(time.time() * 1e3))
    assert status == 200 and headers["content-type"] == "image/png"
    assert (int(headers["x-photo-height"]), int(headers["x-photo-width"])) == output_size(hw, size)
    assert float(headers["x-lr-stream-ms"]) > 0 and float(headers["x-hr-stream-ms"]) > 0
    assert float(headers["x-queue-ms"]) >= 0
    # the model's time for the latest frame (this one: the tests send one at a time), which paces the page
    assert float(headers["x-frame-ms"]) >= float(headers["x-lr-stream-ms"]) + float(headers["x-hr-stream-ms"]) - 0.02
    _assert_photo(body, model_file[1], labels, size)


def test_translate_a_16_bit_palette_and_keepalive(server, model_file, generator):
    import http.client

    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    for seq, mode in enumerate(["I;16", "P", "L"], start=1):  # three requests on one connection
        labels = _labels(generator, 24, 40)
        array = labels.numpy().astype(np.uint16 if mode == "I;16" else np.uint8)
        connection.request("POST", translate_path("keepalive", seq, 256), body=png_bytes(array, mode))
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200
        _assert_photo(body, model_file[1], labels, 256)
    connection.close()


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_header(width, height, *, bit_depth=8, colour_type=0, idat=b""):
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@functools.cache
def _bad_uploads():
    rng = np.random.default_rng(0)
    good = png_bytes(rng.integers(0, NUM_CLASSES, (40, 40)).astype(np.uint8), "L")
    bomb = _png_with_header(100_000, 100_000, idat=zlib.compress(b"\0" * 1_000_000, 9))  # ~1 KiB file
    # a 200 MB compressed text chunk in a ~200 KiB file (PIL refuses text past its MAX_TEXT_CHUNK)
    text_bomb = good[:33] + _chunk(b"zTXt", b"note\0\0" + zlib.compress(b"a" * 200_000_000, 9)) + good[33:]
    rgb16 = zlib.compress(b"".join(b"\0" + rng.integers(0, 256, 48).astype(np.uint8).tobytes() for _ in range(8)))
    jpeg = __import__("io").BytesIO()
    __import__("PIL.Image").Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(jpeg, "JPEG")
    return {
        "a JPEG": (jpeg.getvalue(), 415, "not a PNG"),
        "text": (b"hello, this is not an image", 415, "not a PNG"),
        "a truncated PNG": (good[: len(good) // 2], 400, "damaged"),
        "a PNG with a corrupt stream": (_png_with_header(40, 40, idat=b"garbage!" * 10), 400, "damaged"),
        "a signature only": (good[:8], 400, "damaged"),
        "a decompression bomb": (bomb, 413, "100000 x 100000"),
        "too wide": (png_bytes(np.zeros((2, 2049), np.uint8), "L"), 413, "2049 x 2"),
        "RGB": (png_bytes(rng.integers(0, 12, (20, 20, 3)).astype(np.uint8), "RGB"), 422, "mode RGB"),
        "RGBA": (png_bytes(rng.integers(0, 12, (20, 20, 4)).astype(np.uint8), "RGBA"), 422, "mode RGBA"),
        "grey with alpha": (png_bytes(rng.integers(0, 12, (20, 20, 2)).astype(np.uint8), "LA"), 422, "mode LA"),
        "class values out of range": (png_bytes(np.full((30, 30), NUM_CLASSES, np.uint8), "L"), 422, str(NUM_CLASSES)),
        "16-bit values out of range": (png_bytes(np.full((30, 30), 1000, np.uint16), "I;16"), 422, "1000"),
        "an empty body": (b"", 400, "no body"),
        "JSON": (b'{"labels": [[1, 2], [3, 4]]}', 415, "not a PNG"),
        "a zero-height header": (_png_with_header(40, 0, idat=zlib.compress(b"")), 400, "40 x 0"),
        "a header chunk with a bad checksum": (good[:29] + bytes(4) + good[33:], 400, "damaged"),
        "a text-chunk bomb": (text_bomb, 400, "too large"),
        "16-bit RGB": (_png_with_header(8, 8, bit_depth=16, colour_type=2, idat=rgb16), 422, "mode RGB"),
    }


@pytest.mark.parametrize("name", list(_bad_uploads()))
@pytest.mark.parametrize("route", ["/api/labels", translate_path("bad", 1, 256)])
def test_bad_uploads_get_a_4xx_and_the_server_carries_on(server, model_file, generator, name, route):
    body, status, message = _bad_uploads()[name]
    got_status, headers, answer = request(server, "POST", route, body)
    assert got_status == status, error_of(answer)
    assert headers["content-type"] == "application/json" and message in error_of(answer)
    labels = _labels(generator, 20, 24)
    ok_status, _, photo = _translate(server, labels, client="after-bad", seq=int(time.time() * 1e6))
    assert ok_status == 200
    _assert_photo(photo, model_file[1], labels, 256)


def test_a_stream_inflating_past_its_header_is_read_to_the_header_only(server):
    # 500 MB of zeros behind a 64 x 64 header, ~0.5 MiB on the wire: PIL stops at 64 x 64
    data = _png_with_header(64, 64, idat=zlib.compress(b"\0" * 500_000_000, 9))
    status, headers, body = request(server, "POST", "/api/labels", data)
    assert status == 200 and (headers["x-label-height"], headers["x-label-width"]) == ("64", "64")
    assert len(body) == 2 * 64 * 64 and not any(body)  # class 0 everywhere, as the stream says


def test_an_oversized_body_is_413_before_it_is_decoded(server):
    status, _, body = request(server, "POST", translate_path("big", 1, 256), b"\x89PNG" + b"\0" * MAX_UPLOAD_BYTES)
    assert status == 413 and str(MAX_UPLOAD_BYTES) in error_of(body)


@pytest.mark.parametrize(
    "query, message",
    [
        ("client=a&seq=1&size=100", "size"),
        ("client=a&seq=1&size=4096", "size"),
        ("client=a&seq=1&size=abc", "size"),
        ("client=a&seq=1", "size"),
        ("client=a&size=256", "seq"),
        ("seq=1&size=256", "client"),
        ("client=a%20b&seq=1&size=256", "client"),
        ("client=a&seq=-1&size=256", "seq"),
        ("client=a&client=b&seq=1&size=256", "client"),
        ("client=a&seq=1&size=256.0", "size"),
        ("client=a&seq=1.5&size=256", "seq"),
        ("client=a&seq=1&size=1e3", "size"),
        ("client=a&seq=1&size=", "size"),
    ],
)
def test_bad_query_is_400(server, generator, query, message):
    body = png_bytes(_labels(generator, 20, 20).numpy().astype(np.uint8), "L")
    status, _, answer = request(server, "POST", f"/api/translate?{query}", body)
    assert status == 400 and message in error_of(answer)


def _raw_exchange(server, data: bytes, *, close_after_send=False) -> bytes:
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(data)
        if close_after_send:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_missing_length_and_chunked_bodies_are_411(server):
    answer = _raw_exchange(server, f"POST {translate_path()} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 411") and b"Content-Length" in answer
    answer = _raw_exchange(
        server,
        (
            f"POST {translate_path()} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ).encode(),
    )
    assert answer.startswith(b"HTTP/1.1 411") and b"chunked" in answer


def test_a_garbage_request_line_gets_json_not_a_traceback(server):
    answer = _raw_exchange(server, b"THIS IS NOT HTTP\r\n\r\n")
    assert answer.startswith(b"HTTP/") and b" 400 " in answer.split(b"\r\n")[0]
    assert b"Traceback" not in answer and b'"error"' in answer


def test_unexpected_errors_are_500_without_a_traceback(model_file, generator, monkeypatch):
    with running_server(model_file[0]) as server:

        def broken(x, size):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(server.model, "translate", broken)
        status, _, body = _translate(server, _labels(generator, 20, 20))
        assert status == 500 and "secret" not in error_of(body)
        assert request(server, "GET", "/api/model")[0] == 200


# -- image-input models ----------------------------------------------------------------------------


def test_image_model_translates_rgb_uploads(tmp_path, generator):
    path = tmp_path / "image-model.pt"
    model = save_random_model(path, seed=3, num_classes=3, label_input=False)
    with running_server(path) as server:
        info = json.loads(request(server, "GET", "/api/model")[2])
        assert info["input"] == "image" and "class_names" not in info
        rgb = torch.randint(0, 256, (40, 56, 3), generator=generator, dtype=torch.uint8).numpy()
        for mode, array in (("RGB", rgb), ("RGBA", np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))):
            status, _, body = request(
                server, "POST", translate_path("img", int(time.time() * 1e6), 256), png_bytes(array, mode)
            )
            assert status == 200
            image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double() / 127.5 - 1
            photo, expected = read_png(body), expected_photo(model, image, 256)
            assert np.abs(photo.astype(int) - expected.astype(int)).max() <= 1
        grey16 = torch.randint(0, 65536, (40, 56), generator=generator).numpy().astype(np.uint16)
        status, _, body = request(
            server, "POST", translate_path("img", int(time.time() * 1e6), 256), png_bytes(grey16, "I;16")
        )
        assert status == 200
        grey = torch.from_numpy(grey16.astype(np.float64) / 257).round().expand(3, -1, -1) / 127.5 - 1
        assert np.abs(read_png(body).astype(int) - expected_photo(model, grey, 256).astype(int)).max() <= 1
        status, _, body = request(server, "POST", "/api/labels", png_bytes(rgb[..., 0], "L"))
        assert status == 400 and "images" in error_of(body)


def test_a_published_checkpoint_is_served_with_the_facades_convention(tmp_path, generator):
    from asapnet_triton.reference.official_generator import OfficialASAPNetsGenerator, one_hot_semantics

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    official = OfficialASAPNetsGenerator(
        lr_width=8, lr_max_width=16, lr_depth=2, hr_width=16, hr_depth=3, label_nc=13, crop_size=512, lr_instance=False
    )
    with torch.no_grad():  # weights far from the published initialisation, whose photos are nearly flat
        for parameter in official.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    official.eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(official.state_dict(), path)
    with running_server(path, official=True, hidden_width=16, depth=3) as server:
        info = json.loads(request(server, "GET", "/api/model")[2])
        assert info["dataset"] == "facades" and info["num_classes"] == 13 and info["cell_size"] == 32
        labels = _labels(generator, 48, 64)
        status, _, body = _translate(server, labels, size=512)
        assert status == 200
    with torch.no_grad():  # the published generator itself, on the map upsampled to 384 x 512
        image, _ = official(one_hot_semantics(upsample_nearest(labels, (384, 512))[None], 13))
    expected = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    photo = read_png(body)
    assert photo.shape == expected.shape == (384, 512, 3) and expected.std() > 5
    assert np.abs(photo.astype(int) - expected.astype(int)).max() <= 1


# -- concurrency, latest request wins, disconnects -------------------------------------------------


def test_concurrent_tabs_each_get_their_own_photo(server, model_file, generator):
    maps = {f"tab{i}": _labels(generator, 24 + 4 * i, 40 - 2 * i) for i in range(6)}
    results = {}

    def tab(client):
        results[client] = _translate(server, maps[client], client=client, seq=1)

    threads = [threading.Thread(target=tab, args=(client,)) for client in maps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for client, labels in maps.items():
        status, _, body = results[client]
        assert status == 200
        _assert_photo(body, model_file[1], labels, 256)


class _Blocker:
    """Holds the model's worker thread busy until released, so requests wait deterministically."""

    def __init__(self, server):
        self.release = threading.Event()
        self.started = threading.Event()

        def work():
            self.started.set()
            self.release.wait(60)
            raise RuntimeError("blocker")

        self.job = server.scheduler.submit(Job(f"blocker{id(self)}", 1, work))
        assert self.started.wait(30)


def _wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_newer_requests_replace_waiting_ones(server, model_file, generator):
    blocker = _Blocker(server)
    counts = server.scheduler.counts
    stale_before = counts["stale"]
    maps = [_labels(generator, 20, 28) for _ in range(4)]
    results = {}

    def send(seq):
        results[seq] = _translate(server, maps[seq - 1], client="painter", seq=seq)

    threads = []
    for seq in (1, 2, 3):
        threads.append(threading.Thread(target=send, args=(seq,)))
        threads[-1].start()
        _wait_for(lambda: server.scheduler.waiting() == 1 and counts["stale"] == stale_before + seq - 1)
    # an older request arriving late is stale at once, while the newest still waits
    send(2)
    assert results[2][0] == 204 and results[2][1]["x-paint-dropped"] == "stale"
    blocker.release.set()
    for thread in threads:
        thread.join(timeout=120)
    assert results[1][0] == 204 and results[1][1]["x-paint-dropped"] == "stale" and results[1][1]["x-seq"] == "1"
    assert float(results[1][1]["x-frame-ms"]) >= 0
    assert results[3][0] == 200
    _assert_photo(results[3][2], model_file[1], maps[2], 256)
    assert counts["stale"] == stale_before + 3


def test_tabs_take_turns_and_a_full_queue_is_503(model_file, generator):
    with running_server(model_file[0], max_waiting=2) as server:
        blocker = _Blocker(server)
        results = {}

        def send(client):
            results[client] = _translate(server, _labels(generator, 20, 20), client=client)

        threads = [threading.Thread(target=send, args=(c,)) for c in ("a", "b")]
        for index, thread in enumerate(threads):
            thread.start()
            _wait_for(lambda: server.scheduler.waiting() == index + 1)
        status, headers, body = _translate(server, _labels(generator, 20, 20), client="c")
        assert status == 503 and headers["retry-after"] == "1" and "busy" in error_of(body)
        blocker.release.set()
        for thread in threads:
            thread.join(timeout=120)
        assert results["a"][0] == results["b"][0] == 200


def test_a_client_that_disconnects_is_not_computed_and_the_server_carries_on(model_file, generator):
    with running_server(model_file[0]) as server:
        counts = server.scheduler.counts
        blocker = _Blocker(server)
        body = png_bytes(_labels(generator, 20, 20).numpy().astype(np.uint8), "L")
        head = f"POST {translate_path('leaver', 1, 256)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        _raw_exchange(server, head.encode() + body, close_after_send=True)  # gone while waiting
        _wait_for(lambda: server.scheduler.waiting() == 1)
        _raw_exchange(server, head.encode() + body[: len(body) // 2], close_after_send=True)  # gone mid-upload
        blocker.release.set()
        _wait_for(lambda: counts["gone"] == 1)
        assert counts["done"] == 0
        labels = _labels(generator, 20, 24)
        status, _, photo = _translate(server, labels, client="stayer")
        assert status == 200
        _assert_photo(photo, model_file[1], labels, 256)


def test_a_client_that_disconnects_while_its_photo_is_sent(model_file, generator):
    with running_server(model_file[0]) as server:
        counts = server.scheduler.counts
        body = png_bytes(_labels(generator, 200, 200).numpy().astype(np.uint8), "L")
        head = f"POST {translate_path('reader', 1, 2048)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(server.server_address[:2], timeout=120) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(head.encode() + body)
            assert sock.recv(100).startswith(b"HTTP/1.1 200")  # the photo is on its way: leave
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        _wait_for(lambda: counts["done"] == 1)
        labels = _labels(generator, 20, 24)
        status, _, photo = _translate(server, labels, client="next")
        assert status == 200
        _assert_photo(photo, model_file[1], labels, 256)


def test_connections_beyond_the_cap_get_503(model_file):
    with running_server(model_file[0], max_connections=2) as server:
        idle = [socket.create_connection(server.server_address[:2], timeout=30) for _ in range(2)]
        try:
            _wait_for(lambda: server.connection_slots._value == 0)
            answer = _raw_exchange(server, b"GET /api/model HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503") and b"connections" in answer
        finally:
            for sock in idle:
                sock.close()
        _wait_for(lambda: server.connection_slots._value == 2)
        assert request(server, "GET", "/api/model")[0] == 200


# -- the command line ------------------------------------------------------------------------------


def _cli_user_error(argv, capsys) -> str:
    """``asapnet`` with ``argv`` must exit 2 with one line on stderr (main's policy); that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asapnet paint: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_paint_without_a_model_serves_the_shipped_one():
    from asapnet_triton.checkpoints import load_model, shipped_model_path
    from asapnet_triton.paint import open_model

    model = open_model(None)
    shipped = load_model(shipped_model_path())
    assert model.labels == shipped.labels and model.labels.dataset == "procedural" and model.labels.num_classes == 13
    for ours, theirs in zip(model.generator.state_dict().values(), shipped.generator.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_paint_without_a_model_in_an_installation_without_one_exits_2_with_one_line(capsys, monkeypatch):
    from asapnet_triton import checkpoints

    def missing():
        raise FileNotFoundError("the shipped model /x/procedural-facades-256.pt is missing from this installation")

    monkeypatch.setattr(checkpoints, "shipped_model_path", missing)
    err = _cli_user_error(["paint"], capsys)
    assert "--checkpoint" in err and "missing from this installation" in err


def test_paint_with_a_missing_checkpoint_exits_2(tmp_path, capsys):
    assert "nope.pt" in _cli_user_error(["paint", "--checkpoint", str(tmp_path / "nope.pt")], capsys)


def test_paint_with_a_file_that_is_no_model_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a model\nat all\n")
    assert "notes.pt" in _cli_user_error(["paint", "--checkpoint", str(tmp_path / "notes.pt")], capsys)


def test_paint_refuses_an_instance_edge_generator(tmp_path, capsys):
    edges = tiny_generator(NUM_CLASSES, instance_edges=True)
    save_model(tmp_path / "edges.pt", edges, FACADES)
    assert "instance-edge" in _cli_user_error(["paint", "--checkpoint", str(tmp_path / "edges.pt")], capsys)


def test_paint_on_a_bad_or_taken_port_exits_2(model_file, capsys):
    assert "--port" in _cli_user_error(["paint", "--checkpoint", str(model_file[0]), "--port", "70000"], capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _cli_user_error(["paint", "--checkpoint", str(model_file[0]), "--port", str(port)], capsys)
        assert f"127.0.0.1:{port}" in err and "--host/--port" in err


def test_paint_serves_and_prints_its_url(model_file):
    import subprocess
    import sys
    import urllib.request

    process = subprocess.Popen(
        [sys.executable, "-m", "asapnet_triton", "paint", "--checkpoint", str(model_file[0]), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "api/model", timeout=60) as response:
            assert json.loads(response.read())["num_classes"] == NUM_CLASSES
    finally:
        process.terminate()
        process.wait(timeout=30)
