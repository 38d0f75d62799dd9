from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Subprocesses (`python -m blockmae ...`, torchrun) must import this tree's sources too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dataset samples in ../shared/data (see its README)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may write to the user's ~/.cache: caches go to a session temp folder."""
    os.environ["BLOCKMAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("blockmae-cache"))


def transformers_or_skip():
    """transformers when installed and able to use this torch (releases >= 5.14 need torch >= 2.5), else skip."""
    transformers = pytest.importorskip("transformers")
    if not transformers.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} cannot use the torch installed here (it needs a newer one)",
                    allow_module_level=True)
    return transformers


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves server.files[path]; honours `Range: bytes=N-`; server.cut[path] = bytes to send before hanging up."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        self.server.requests.append((self.path, requested))
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
        if start >= len(body) and requested:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = body[start:]
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = self.server.cut.pop(self.path, None)
        self.wfile.write(payload if cut is None else payload[:cut])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def http_server():
    """A throw-away HTTP server on 127.0.0.1: put bodies in server.files[path]; server.url is its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.files, server.requests, server.cut = {}, [], {}
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
