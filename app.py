"""Serves a local web page that segments dermoscopy images with a saved model.

    python app.py                             # the pre-trained model at http://127.0.0.1:8000/
    python app.py runs/my_run --port 8080     # a run folder's best.keras
    python app.py best.onnx                   # ONNX Runtime: starts without TensorFlow

Drop images on the page (or click an example): each gets the lesion outline, the mask, a probability
heat map, the lesion's area, the expected Dice ("check this mask" when it is low) and the time taken,
with switches for flip TTA and post-processing, and downloads of the mask (the same file `predict.py` writes) and of the overlay.
The server is `webapp.py`; it loads the model once and stops with Ctrl+C.
"""

import os
import signal
import threading

from lesion_unet import cliargs
from lesion_unet import settings
from lesion_unet.errors import exit_script, run_cli


def build_parser():
    parser = cliargs.ArgumentParser(
        description="Serve a local web page that segments lesions in dermoscopy images.",
        usage="%(prog)s [MODEL_OR_RUN] [--host HOST] [--port N]")
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL_OR_RUN",
                        help="a .keras or .onnx model, or a run folder (its best.keras); default: the "
                             "pre-trained model")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this computer only; 0.0.0.0 lets "
                             "anyone on your network use it)")
    parser.add_argument("--port", type=cliargs.int_range(0, 65535), default=8000,
                        help="port to listen on; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--threshold", type=cliargs.float_range(0, 1), default=settings.DEFAULT_THRESHOLD,
                        help="probability threshold, 0 to 1, as predict.py's (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=cliargs.int_range(1, 100_000), default=200,
                        help="largest image file accepted, in MB (default: %(default)s)")
    return parser


def serve(model_path, host="127.0.0.1", port=8000, threshold=settings.DEFAULT_THRESHOLD, max_upload_mb=200):
    """Loads a model and serves the page until Ctrl+C (or SIGTERM).

    Args:
        model_path: a `.keras` or `.onnx` file.
        host: address to listen on.
        port: port, or 0 for any free one.
        threshold: probability threshold.
        max_upload_mb: largest upload accepted, in MB.

    Raises:
        InputError: the model cannot be loaded, or the address cannot be used.
    """
    from lesion_unet import inference
    from lesion_unet import webapp

    model = inference.load_model(model_path)
    server = webapp.make_server(model, os.path.basename(model_path), host, port, threshold, max_upload_mb,
                                inference.load_quality_model(model_path))
    print(f"Serving {model_path} at {server.url}  (open it in a browser; Ctrl+C stops)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}: anyone who can reach this machine can use the page", flush=True)
    previous = _stop_on_signals(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # serving outside the main thread, where no handler could be set
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        server.server_close()
    print("stopped", flush=True)


def _stop_on_signals(server):
    """Makes Ctrl+C (SIGINT) and SIGTERM stop `server.serve_forever()` cleanly; returns the handlers replaced.

    A KeyboardInterrupt can be lost: raised while a garbage-collector callback or a finalizer runs, it
    is printed as "Exception ignored" and the server keeps serving. A handler that asks the server
    to shut down cannot be lost that way. `shutdown()` waits for the serving loop, which runs in this
    (the main) thread, so it is called from another one.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    stopping = threading.Event()

    def stop(number, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    return {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}


def main(argv=None):
    args = build_parser().parse_args(argv)
    from lesion_unet import runfolder

    model_path = runfolder.model_file(args.model, settings.DEFAULT_MODEL)
    if not model_path.lower().endswith(".onnx"):  # ONNX Runtime runs an exported model without Keras
        from lesion_unet import quiet  # Keras loads only now that the arguments are known to be good

        quiet.import_keras()
    serve(model_path, args.host, args.port, args.threshold, args.max_upload_mb)


if __name__ == "__main__":
    exit_script(run_cli(main))
