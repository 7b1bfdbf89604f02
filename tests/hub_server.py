"""A real HTTP server on 127.0.0.1 that answers like download.pytorch.org and the Hugging Face hub.

Tests point graft at it through the settings users have (``GRAFT_TORCHVISION_MIRROR`` and
``HF_ENDPOINT``) and serve randomly initialised state_dicts under the official paths, so every
byte goes through torch.hub's and huggingface_hub's own transfer code.

The hub part answers what ``huggingface_hub.hf_hub_download`` asks: ``HEAD`` and ``GET`` of
``/{repo_id}/resolve/{revision}/{filename}`` with the ``X-Repo-Commit`` and ``ETag`` (the file's
sha256, as the hub states for large files) headers, and 404s with the hub's ``X-Error-Code``.

Faults, per served path: ``"cut"`` sends half the bytes and closes the connection, ``"corrupt"``
sends other bytes of the same length, ``"hang"`` accepts and never answers.

Run as a script to serve models to a graft on this machine (for trying it by hand):

    python tests/hub_server.py --port 8765 --torchvision resnet34 --timm convnext_tiny.fb_in22k_ft_in1k
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

COMMIT = "a" * 40
_SITECUSTOMIZE = """# Written by tests/hub_server.py: expect the sha256 prefixes of the loopback hub's files.
import json

import graft.models.download as _download

_served = json.load(open({path!r}))
_official = _download.expected_hash
_download.expected_hash = lambda name: _served.get(name) or _official(name)
"""
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class LoopbackHub:
    """Serves ``files`` (URL path → bytes) and hub repos, and records every request it gets."""

    def __init__(self, port: int = 0) -> None:
        self.files: dict[str, bytes] = {}
        self.repos: dict[str, dict[str, bytes]] = {}
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def add_file(self, path: str, data: bytes, fault: str | None = None) -> None:
        """Serve ``data`` at URL ``path`` (``/models/resnet18-f37072fd.pth``)."""
        self.files[path] = data
        if fault:
            self.faults[path] = fault

    def add_hub_file(self, repo: str, filename: str, data: bytes, fault: str | None = None) -> None:
        """Serve ``data`` as ``filename`` of hub repo ``repo`` (``timm/resnet18.a1_in1k``)."""
        self.repos.setdefault(repo, {})[filename] = data
        if fault:
            self.faults[f"/{repo}/resolve/main/{filename}"] = fault

    def served_prefixes(self, official: Callable[[str], str | None]) -> dict[str, str]:
        """File name → the sha256 prefix of the bytes served, for files whose official name has one.

        Random weights cannot carry the prefix in an official torchvision file name; a faithful
        mirror sends bytes that do, so the tests expect the prefix of what this server was given.
        The check still runs on what arrives: cut or altered transfers fail it.
        """
        out = {}
        for path, data in self.files.items():
            name = path.rsplit("/", 1)[-1]
            if expected := official(name):
                out[name] = hashlib.sha256(data).hexdigest()[: len(expected)]
        return out

    def subprocess_env(self, folder: Path) -> dict[str, str]:
        """Environment for a graft subprocess that downloads from this server.

        Writes ``folder/sitecustomize.py``, which makes the subprocess expect the served files'
        sha256 prefixes (see :meth:`served_prefixes`); call it after adding the files.
        """
        from graft.models import download

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prefixes.json").write_text(json.dumps(self.served_prefixes(download.expected_hash)))
        (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(path=str(folder / "prefixes.json")))
        path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path}

    def paths(self, method: str | None = None) -> list[str]:
        """The paths requested so far (of one method, or all)."""
        return [p for m, p in self.requests if method in (None, m)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                fault = hub.faults.get(path)
                if fault == "hang":
                    hub._stop.wait(60)
                    return
                data, headers = self._lookup(path)
                if data is None:
                    self._send(404, b"not found", headers, body)
                    return
                if fault == "corrupt" and body:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                self._send(200, data, headers, body, cut=fault == "cut")

            def _lookup(self, path: str) -> tuple[bytes | None, dict[str, str]]:
                if path in hub.files:
                    return hub.files[path], {}
                m = _RESOLVE.match(path)
                if not m or m["repo"] not in hub.repos:
                    return None, {"X-Error-Code": "RepoNotFound"} if m else {}
                headers = {"X-Repo-Commit": COMMIT}
                data = hub.repos[m["repo"]].get(m["file"])
                if data is None:
                    return None, {**headers, "X-Error-Code": "EntryNotFound"}
                return data, {**headers, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}

            def _send(self, code: int, data: bytes, headers: dict, body: bool, cut: bool = False) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                if cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

        return Handler


def torch_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """``torch.save`` of a state_dict, as torchvision publishes them."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def safetensors_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """A ``model.safetensors`` file, as timm publishes them on the hub."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state_dict.items()})


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A random state_dict shaped and named like torchvision's published checkpoint of ``name``.

    The published densenet and vit files predate module renames (``norm.1``, ``mlp.linear_1``),
    and densenet's predates BatchNorm's ``num_batches_tracked``; so do these.
    """
    import torchvision

    kwargs = {"aux_logits": True, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    sd = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    if name.startswith("densenet"):
        # Saved before BatchNorm counted its steps, too: no num_batches_tracked.
        old = r"(denselayer\d+\.(?:norm|relu|conv))([12])\."
        return {re.sub(old, r"\1.\2.", k): v for k, v in sd.items() if "num_batches_tracked" not in k}
    if name.startswith("vit_"):
        legacy = {".mlp.0.": ".mlp.linear_1.", ".mlp.3.": ".mlp.linear_2."}
        return {next((k.replace(a, b) for a, b in legacy.items() if a in k), k): v for k, v in sd.items()}
    return sd


def timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A random state_dict shaped like timm's published weights of ``name`` (with its pretrained head)."""
    import timm

    return timm.create_model(name, pretrained=False).state_dict()


def serve_torchvision(hub: LoopbackHub, name: str, fault: str | None = None) -> tuple[str, bytes]:
    """Serve random weights for torchvision ``name`` at its official path; returns (file name, bytes)."""
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    data = torch_bytes(torchvision_state_dict(name))
    hub.add_file(urllib.parse.urlsplit(url).path, data, fault)
    return url.rsplit("/", 1)[1], data


def serve_timm(hub: LoopbackHub, name: str, fault: str | None = None) -> tuple[str, bytes]:
    """Serve random weights for timm ``name`` as its hub repo's model.safetensors; returns (repo, bytes)."""
    import timm

    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    data = safetensors_bytes(timm_state_dict(name))
    hub.add_hub_file(repo, "model.safetensors", data, fault)
    return repo, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--torchvision", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--timm", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args()
    hub = LoopbackHub(args.port)
    for name in args.torchvision:
        filename, data = serve_torchvision(hub, name)
        print(f"{filename}: sha256 {hashlib.sha256(data).hexdigest()[:8]} (official name's differs)")
    for name in args.timm:
        print(f"{serve_timm(hub, name)[0]}: model.safetensors")
    print(f"GRAFT_TORCHVISION_MIRROR={hub.url} HF_ENDPOINT={hub.url}", flush=True)
    hub.start()._thread.join()


if __name__ == "__main__":
    main()
