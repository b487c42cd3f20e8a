"""A framework's HTTP server, started as a user types it, and the load the serve tests send it.

Shared by ``vllm_omni/test_serve.py``, ``sglang/test_serve.py`` and ``serve_burst.py``. Only the
standard library: the requests go through ``urllib`` like any HTTP client's, and the server is a
child process in its own process group, bound to 127.0.0.1 on a free port, which ``stop()`` always
ends (SIGTERM to the group, then SIGKILL).
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HOST = "127.0.0.1"
ENDPOINT = "/v1/images/generations"  # OpenAI-style image generation, served by both frameworks
PROMPTS = ("a cat", "a red car", "two dogs", "a house by the sea")
START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 300
STOP_GRACE_S = 30

# The burst: 16 requests, up to 4 in flight, step counts and seeds mixed so that neighbours in the
# queue never share a step count (each one would need a context sized for the other's steps).
BURST_STEPS = (4, 8, 13, 28)
BURST_SIZE = 16
MAX_IN_FLIGHT = 4


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def burst_requests(extra: Callable[[int], Dict[str, Any]] = lambda index: {}) -> List[Dict[str, Any]]:
    """The 16 request bodies' varying fields: steps cycle through BURST_STEPS, seeds all differ."""
    return [
        {"num_inference_steps": BURST_STEPS[index % len(BURST_STEPS)], "seed": 100 + 7 * index, **extra(index)}
        for index in range(BURST_SIZE)
    ]


@dataclasses.dataclass
class Response:
    status: int
    body: Dict[str, Any]

    def image_pixels(self) -> Tuple[Tuple[int, int], bytes]:
        """(size, RGB bytes) of the one image of an OpenAI-style ``data[0].b64_json`` answer."""
        from PIL import Image

        (item,) = self.body["data"]
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB")
        return image.size, image.tobytes()


def _json_or_text(payload: bytes) -> Dict[str, Any]:
    """An error answer's JSON, or ``{"text": ...}`` for a plain-text one (e.g. a bare 500)."""
    try:
        return json.loads(payload)
    except ValueError:
        return {"text": payload.decode(errors="replace")}


class Server:
    """One server process; ``start()`` returns once ``health_path`` answers 200."""

    def __init__(self, argv: Sequence[str], env: Dict[str, str], port: int, log_path: Path, health_path: str) -> None:
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.log_path = log_path
        self.health_path = health_path
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> "Server":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.log_path.parent,  # where the server writes files of its own (SGLang: outputs/)
                start_new_session=True,  # its own process group: stop() reaches every child it spawns
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-6000:]}")
            if self._healthy():
                return self
            time.sleep(1)
        raise TimeoutError(f"server not healthy after {START_TIMEOUT_S} s:\n{self.log()[-6000:]}")

    def wait_exit(self, timeout: float) -> int:
        """For a server expected to fail at start-up: its exit status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=5) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(STOP_GRACE_S)
        try:  # children that outlived the leader
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def post(self, path: str, body: Dict[str, Any]) -> Response:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
                return Response(answer.status, json.loads(answer.read()))
        except urllib.error.HTTPError as error:
            return Response(error.code, _json_or_text(error.read()))

    def post_and_disconnect(self, path: str, body: Dict[str, Any], after_s: float) -> None:
        """Send a complete request, then close the connection ``after_s`` later, before the answer."""
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection((HOST, self.port), timeout=10) as connection:
            connection.sendall(head + payload)
            time.sleep(after_s)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN


def send_all(send: Callable[[Dict[str, Any]], Response], bodies: Sequence[Dict[str, Any]],
             in_flight: int) -> Tuple[List[Response], float]:  # fmt: skip
    """Responses in request order, and the wall time; ``in_flight=1`` sends one after the other."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=in_flight) as pool:
        responses = list(pool.map(send, bodies))
    return responses, time.perf_counter() - start


# -- what every serve test asserts of its two servers ---------------------------------------------


def assert_every_answer_is_an_image(responses: Sequence[Response], log: str, size: Tuple[int, int]) -> None:
    """Every request answered 200 with one image of ``size`` (the server log's tail otherwise)."""
    assert [response.status for response in responses] == [200] * len(responses), log[-3000:]
    assert {response.image_pixels()[0] for response in responses} == {size}


def assert_burst_equals_solo(
    solo: Sequence[Response], burst: Sequence[Response], bodies: Sequence[Dict[str, Any]], log: str
) -> None:
    """Each burst answer is 200 and pixel-equal to the same request's answer sent alone."""
    assert [response.status for response in burst] == [200] * len(burst), log[-3000:]
    for index, (alone, in_burst) in enumerate(zip(solo, burst)):
        assert in_burst.image_pixels() == alone.image_pixels(), f"request {index}: {bodies[index]}"
