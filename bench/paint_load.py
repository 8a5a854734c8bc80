"""Load run of ``asapnet paint``: simulated browser tabs painting at once against one server.

Each output size gets its own server (``python -m asapnet_triton paint``, a subprocess on a free
port of 127.0.0.1) and ``--clients`` simulated tabs painting for ``--duration`` seconds. A tab
behaves like the page (``asapnet_triton/paint/static/app.js``): it keeps painting (one brush dab
of a random class at a random walk's position per frame on a ``--canvas`` x ``--canvas`` label
map), sends the whole map as a label PNG at most every 40 ms (or a quarter of the model's time
for its latest frame, the server's ``X-Frame-Ms``, when longer, up to 1 s), with at most three
requests out at once, each on its own keep-alive connection; a photo older than the one on show
is not shown.

Counted per size: requests sent, served (200), dropped as stale by the server (204), errors
(anything else, or a failed connection: must be 0; the script exits 1 otherwise), photos that
arrived after a newer one (not shown); the round-trip latency (p50, p95, max) of requests served
while the tabs paint, and apart from them of each tab's last request after all stop at once
(it waits its turn behind the others' with nothing newer to replace it); the server's own LR /
HR stream and queue times from its headers; the server process's
peak resident memory (``VmHWM`` of ``/proc/<pid>/status``, read before it is stopped).

The model: ``--checkpoint`` (a model file), else the published architecture (13 facades classes,
cell 32, the 5-layer 64-wide MLP, the 7-level LR stream up to 1024 channels) randomly
initialised and saved to a temporary folder: the time of a frame does not depend on the weights.

Writes bench/results/<machine>/paint/paint_load.json and paint_load.png (``--name`` changes the
file names).

    python bench/paint_load.py [--clients 8] [--duration 60] [--sizes 512,1024] [--canvas 256]
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import queue
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, results_dir, write_json  # noqa: E402

MIN_INTERVAL_S, MAX_INTERVAL_S = 0.040, 1.0  # the page's MIN_INTERVAL_MS, MAX_INTERVAL_MS
OUTSTANDING = 3  # the page's MAX_OUTSTANDING: requests out at once
BRUSH = 12  # label pixels, the page's default brush


def default_model(folder: Path) -> Path:
    """The published architecture for facades, randomly initialised, saved as a model file."""
    import torch

    import asapnet_triton as at
    from asapnet_triton.checkpoints import save_model
    from asapnet_triton.labels import label_convention

    torch.manual_seed(0)
    labels = label_convention("facades")
    generator = at.ASAPNetGenerator(labels.num_classes, cell_size=32)
    path = folder / "published-architecture-random.pt"
    save_model(path, generator, labels, card={"note": "random weights, for timing only"})
    return path


class Server:
    """``asapnet paint`` in a subprocess; ``url`` once it serves."""

    def __init__(self, checkpoint: Path, log_path: Path, start_timeout_s: float = 600):
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asapnet_triton", "paint", "--checkpoint", str(checkpoint), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=start_timeout_s)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"asapnet paint printed no URL within {start_timeout_s} s (log: {log_path})") from None
        found = re.search(r"http://([\d.]+):(\d+)/", line)
        if found is None:
            self.stop()
            raise RuntimeError(f"asapnet paint did not start: {line!r} (log: {log_path})")
        self.host, self.port = found.group(1), int(found.group(2))

    def peak_rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")

    def stats(self) -> dict:
        import json

        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request("GET", "/api/stats")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Tab:
    """One simulated painting tab: its label map, its request numbers, what it saw."""

    def __init__(self, name: str, canvas: int, num_classes: int, seed: int):
        self.name = name
        self.random = random.Random(seed)
        self.labels = np.full((canvas, canvas), 1, np.uint8)  # facades "background" (raw value = class)
        self.num_classes = num_classes
        self.x, self.y = canvas / 2, canvas / 2
        self.lock = threading.Lock()
        self.seq = 0
        self.shown_seq = 0
        self.last_send = 0.0
        self.frame_s = 0.0  # the server's X-Frame-Ms: the model's time for its latest frame
        self.results: list[dict] = []

    def next_frame(self) -> tuple[int, bytes] | None:
        """Wait for the page's send interval, paint one dab, and number the request."""
        with self.lock:
            now = time.perf_counter()
            interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, self.frame_s / 4))  # the page's sendInterval()
            wait = self.last_send + interval - now
            self.last_send = max(now, self.last_send + interval)
        if wait > 0:
            time.sleep(wait)
        with self.lock:
            canvas = self.labels.shape[0]
            self.x = min(canvas - 1, max(0, self.x + self.random.uniform(-8, 8)))
            self.y = min(canvas - 1, max(0, self.y + self.random.uniform(-8, 8)))
            cls = self.random.randrange(1, self.num_classes)
            ys, xs = np.ogrid[:canvas, :canvas]
            self.labels[(xs + 0.5 - self.x) ** 2 + (ys + 0.5 - self.y) ** 2 <= (BRUSH / 2) ** 2] = cls
            self.seq += 1
            seq, snapshot = self.seq, self.labels.copy()
        buffer = io.BytesIO()
        Image.fromarray(snapshot, mode="L").save(buffer, format="PNG")
        return seq, buffer.getvalue()

    def record(self, result: dict) -> None:
        with self.lock:
            if result["status"] == 200:
                result["shown"] = result["seq"] > self.shown_seq
                if result["shown"]:
                    self.shown_seq = result["seq"]
            self.results.append(result)


def paint(tab: Tab, server: Server, size: int, deadline: float) -> None:
    """One of a tab's request slots: send frames until the deadline, one at a time."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=600)
    try:
        while time.perf_counter() < deadline:
            seq, body = tab.next_frame()
            start = time.perf_counter()
            result = {"seq": seq, "sent_s": start}
            try:
                connection.request(
                    "POST",
                    f"/api/translate?client={tab.name}&seq={seq}&size={size}",
                    body=body,
                    headers={"Content-Type": "image/png"},
                )
                response = connection.getresponse()
                data = response.read()
                result["status"] = response.status
                if response.getheader("X-Frame-Ms") is not None:
                    tab.frame_s = float(response.getheader("X-Frame-Ms")) / 1e3  # as the page does
                if response.status == 200:
                    result |= {
                        "lr_ms": float(response.getheader("X-LR-Stream-Ms")),
                        "hr_ms": float(response.getheader("X-HR-Stream-Ms")),
                        "queue_ms": float(response.getheader("X-Queue-Ms")),
                        "photo_bytes": len(data),
                    }
                elif response.status != 204:
                    result["error"] = data[:300].decode(errors="replace")
            except (OSError, http.client.HTTPException) as error:
                result |= {"status": None, "error": f"{type(error).__name__}: {error}"}
                connection.close()
                connection = http.client.HTTPConnection(server.host, server.port, timeout=600)
            finished = time.perf_counter()
            result |= {"latency_ms": 1e3 * (finished - start), "while_painting": finished <= deadline}
            tab.record(result)
    finally:
        connection.close()


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
        "max": round(float(array.max()), 1),
    }


def run_size(checkpoint: Path, size: int, args, log_folder: Path) -> dict:
    load_before = os.getloadavg()
    server = Server(checkpoint, log_folder / f"server-{size}.log")
    try:
        tabs = [Tab(f"tab{i}", args.canvas, 13, seed=1000 * size + i) for i in range(args.clients)]
        start = time.perf_counter()
        deadline = start + args.duration
        threads = [
            threading.Thread(target=paint, args=(tab, server, size, deadline), daemon=True)
            for tab in tabs
            for _ in range(OUTSTANDING)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - start
        server_stats = server.stats()
        peak = server.peak_rss_bytes()
    finally:
        server.stop()
    results = [r for tab in tabs for r in tab.results]
    served = [r for r in results if r["status"] == 200]
    errors = [r for r in results if r["status"] not in (200, 204)]
    per_tab = [sum(r["status"] == 200 for r in tab.results) for tab in tabs]
    return {
        "size": f"{size}x{size}",
        "canvas": f"{args.canvas}x{args.canvas}",
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": round(wall_s, 1),
        "requests": len(results),
        "served": len(served),
        "served_per_s": round(len(served) / wall_s, 2),
        "served_per_tab": {"min": min(per_tab), "max": max(per_tab)},
        "dropped_stale": sum(r["status"] == 204 for r in results),
        "arrived_after_a_newer_photo": sum(not r["shown"] for r in served),
        "errors": len(errors),
        "error_examples": [r["error"] for r in errors[:5]],
        # served while the tabs were painting (their waiting request kept being replaced) ...
        "latency_ms": _percentiles([r["latency_ms"] for r in served if r["while_painting"]]),
        # ... and the last photo of each tab after they all stopped at once: it waits its turn
        # behind the other tabs' last photos, with nothing newer to replace it
        "after_painting_stopped": {
            "served": sum(not r["while_painting"] for r in served),
            "latency_ms": _percentiles([r["latency_ms"] for r in served if not r["while_painting"]]),
        },
        "server_lr_stream_ms": _percentiles([r["lr_ms"] for r in served]),
        "server_hr_stream_ms": _percentiles([r["hr_ms"] for r in served]),
        "server_queue_ms": _percentiles([r["queue_ms"] for r in served]),
        "server_stats": server_stats,
        "server_peak_rss_mib": round(peak / 2**20, 1),
        # the machine's 1-minute load average before the server started and after the run (other
        # work on a shared machine competes with the server and the simulated tabs)
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "latencies_ms": [round(r["latency_ms"], 1) for r in served if r["while_painting"]],
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for row in rows:
        latencies = np.sort(row["latencies_ms"])
        if latencies.size:
            axis.plot(latencies, np.arange(1, latencies.size + 1) / latencies.size, label=f"{row['size']}")
    axis.set_xlabel("round trip of a frame served while painting (ms)")
    axis.set_ylabel("fraction of served frames")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a model file (default: the published architecture, random weights)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60, help="seconds of painting per size")
    parser.add_argument("--sizes", default="512,1024", help="output sizes (the longer side), comma-separated")
    parser.add_argument("--canvas", type=int, default=256, help="side of the painted label map (the page's default)")
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded with the results)")
    parser.add_argument("--name", default="paint_load", help="file names of the results: NAME.json, NAME.png")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    folder_name = f"{machine_name()}/paint"
    out = results_dir(folder_name)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(args.checkpoint) if args.checkpoint else default_model(Path(folder))
        rows = []
        for size in sizes:
            print(f"{size}x{size}: {args.clients} tabs painting for {args.duration:g} s ...", flush=True)
            row = run_size(checkpoint, size, args, Path(folder))
            rows.append(row)
            print(
                f"  served {row['served']} ({row['served_per_s']}/s), dropped as stale {row['dropped_stale']}, "
                f"errors {row['errors']}, latency p50 {row['latency_ms']['p50']} ms p95 {row['latency_ms']['p95']} "
                f"ms, server peak RSS {row['server_peak_rss_mib']} MiB",
                flush=True,
            )
    command = "python bench/paint_load.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command.strip(),
        "model": args.checkpoint or "published architecture (facades, 13 classes, cell 32), random weights",
        "torch_threads_in_server": os.environ.get("OMP_NUM_THREADS", "torch default"),
        "note": args.note,
        "rows": rows,
    }
    path = write_json(f"{args.name}.json", payload, folder=folder_name)
    title = f"asapnet paint, {args.clients} tabs x {args.duration:g} s, {out.parent.name}" + (
        f"\n{args.note}" if args.note else ""
    )
    plot(rows, out / f"{args.name}.png", title)
    print(f"wrote {path} and {out / f'{args.name}.png'}")
    errors = sum(row["errors"] for row in rows)
    if errors:
        print(f"{errors} request(s) failed: see error_examples in {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
