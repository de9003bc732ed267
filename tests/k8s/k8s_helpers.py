"""Helpers for the Kubernetes tests: the root test helpers, and a fake API server.

No cluster can be reached from the test machines, so the client is pointed (through a
kubeconfig the test writes) at a local ``http.server`` that records every request
(method, path, query, JSON body) and answers like the API server would.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TESTS = Path(__file__).resolve().parents[1]
GOLDEN_K8S = TESTS / "golden" / "k8s"
SCHEMAS = TESTS / "fixtures" / "schemas"


def _root_conftest() -> Any:
    """tests/support.py by path (the shared CLI helpers)."""
    name = "hpc_tests_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / "support.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


hpc_launch = _root_conftest().hpc_launch
check_golden = _root_conftest().check_golden
cli_env = _root_conftest().cli_env


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]


Handler = Callable[[Request], tuple[int, Any]]


@dataclass
class FakeApiServer:
    """A recording stand-in for the Kubernetes API server."""

    requests: list[Request] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> stored object
    overrides: dict[tuple[str, str], Handler] = field(default_factory=dict)
    mpijob_status: dict[str, Any] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    log_text: str = ""
    port: int = 0

    def start(self) -> FakeApiServer:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode()
                req = Request(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    body,
                    {k.lower(): v for k, v in self.headers.items()},
                )
                fake.requests.append(req)
                status, payload = fake.answer(req)
                data = (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                )
                self.send_response(status)
                ctype = "text/plain" if isinstance(payload, str) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    # -- behaviour ----------------------------------------------------------------------------
    def answer(self, req: Request) -> tuple[int, Any]:
        for (method, prefix), handler in self.overrides.items():
            if req.method == method and req.path.startswith(prefix):
                return handler(req)
        parts = req.path.strip("/").split("/")
        if req.method == "POST":
            obj = dict(req.body)
            obj["metadata"] = dict(obj["metadata"], uid=str(uuid.uuid4()))
            path = f"{req.path}/{obj['metadata']['name']}"
            if path in self.objects:
                return status(
                    409, "AlreadyExists", f"{parts[-1]} {obj['metadata']['name']!r} exists"
                )
            self.objects[path] = obj
            return 201, obj
        if req.method == "PATCH":
            if req.path not in self.objects:
                return status(404, "NotFound", f"{req.path} not found")
            obj = self.objects[req.path]
            obj["metadata"].update(req.body.get("metadata", {}))
            return 200, obj
        if req.method == "DELETE":
            if self.objects.pop(req.path, None) is None:
                return status(404, "NotFound", f"{req.path} not found")
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if req.method == "GET" and parts[-1] == "log":
            return 200, self.log_text
        if req.method == "GET" and parts[-1] == "pods":
            selector = req.query.get("labelSelector", [""])[0]
            wanted = dict(kv.split("=", 1) for kv in selector.split(",") if kv)
            items = [
                p
                for p in self.pods
                if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        if req.method == "GET" and req.path in self.objects:
            obj = dict(self.objects[req.path])
            if "mpijobs" in req.path:
                obj["status"] = self.mpijob_status
            return 200, obj
        return status(404, "NotFound", f"{req.path} not found")


def status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [
                    {
                        "name": "fake-ctx",
                        "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                    }
                ],
                "current-context": "fake-ctx",
            }
        )
    )
    return path


def pod(
    name: str,
    mpijob: str,
    role: str,
    *,
    waiting: str | None = None,
    exit_code: int | None = None,
    unschedulable: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}}
    if waiting:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} for image x"}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
    conditions = []
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    return {
        "metadata": {
            "name": name,
            "labels": {"hpc-launch/mpijob": mpijob, "hpc-launch/role": role},
            "creationTimestamp": "2026-11-26T10:00:00Z",
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": role,
                    "ready": True,
                    "restartCount": 0,
                    "image": "x",
                    "imageID": "",
                    "state": state,
                }
            ],
        },
    }
