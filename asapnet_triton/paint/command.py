"""The ``asapnet paint`` subcommand: its arguments and what it runs."""

from __future__ import annotations

__all__ = ["add_paint_parser", "run_paint"]


def add_paint_parser(sub) -> None:
    """Add ``paint`` to the ``asapnet`` subcommands ``sub``."""
    from ..cli import add_model_run_arguments  # the parser being built is the CLI's

    p = sub.add_parser(
        "paint",
        help="a local web page: paint a label map, see the photo live",
        description="Start a local web server with a painting page: paint a label map with the "
        "model's classes (or upload an image, for image-input models) and watch the "
        "translated photo update while you paint, at 256 to 2048 pixels on a side. "
        "Prints the page's URL; Ctrl-C stops it.",
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a model file (save_model) or a checkpoint of asapnet train (default: the model shipped in the "
        "package, trained on the procedural facades)",
    )
    model.add_argument("--official", metavar="PATH", help="a latest_net_G.pth of the published ASAP-Net implementation")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free port)")
    p.add_argument(
        "--examples",
        metavar="FOLDER",
        help="label-map PNGs to offer as starting points (default: held-out procedural facades for facades models)",
    )
    add_model_run_arguments(p)
    p.add_argument("--verbose", action="store_true", help="log every request")


def run_paint(args) -> int:
    """Serve until interrupted. User errors (no model, a bad file, a port that cannot be used) are
    raised as ValueError / FileNotFoundError: ``asapnet``'s ``main`` prints them as one line, exit
    status 2."""
    import logging

    from ..allocator import apply_malloc_mode
    from . import make_server, open_model

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 0..65535, got {args.port}")
    apply_malloc_mode(args.malloc, args.device)  # every request's forward re-uses the last one's memory
    model = open_model(  # no model given: the shipped one (missing from the installation: ModelRequired)
        args.official or args.checkpoint,
        official=args.official is not None,
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        examples=args.examples,
    )
    model.warm_up()
    try:
        server = make_server(model, host=args.host, port=args.port, verbose=args.verbose)
    except OSError as error:  # the port is taken, the address is not this machine's, ...
        raise ValueError(
            f"--host/--port: cannot listen on {args.host}:{args.port}: {error.strerror or error}"
        ) from error
    print(f"asapnet paint: serving {model.source} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
