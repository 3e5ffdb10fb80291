"""Start and stop a throwaway Elasticsearch node for tests.

The node is the bare Elasticsearch 8 server that es/start.sh builds from
Maven Central jars (see es/README.md for what it lacks, e.g. scripting).
``start_node`` runs es/start.sh on a free loopback port in a given folder and
returns the URL and a function that stops the node. When ``ETA1_ES_URL`` is
set, callers use that cluster instead and start nothing (``es_url_from_env``).

Only the standard library is used, so this works before the project's own
dependencies are installed.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from tempfile import TemporaryDirectory

ES_DIR = Path(__file__).resolve().parent.parent / "es"
ENV_URL = "ETA1_ES_URL"

# es/start.sh may first run Maven, which downloads about 70 MB on a fresh
# machine. This bounds that build on top of the node's own start timeout.
BUILD_TIMEOUT_S = 600


def es_url_from_env() -> str | None:
    """Return the cluster URL from ETA1_ES_URL without a trailing slash, or None when unset or empty."""
    url = os.environ.get(ENV_URL, "").strip().rstrip("/")
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{ENV_URL}={url!r} is not an http:// or https:// URL")
    return url


def wait_for_health(url: str, timeout: float = 60.0) -> dict:
    """Poll ``GET {url}/_cluster/health`` until the status is yellow or green and return the response body.

    Raises TimeoutError, naming the last error or status seen, when that does not happen within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_seen = "no response"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_cluster/health", timeout=5) as response:
                health = json.load(response)
            if health.get("status") in ("green", "yellow"):
                return health
            last_seen = f"status {health.get('status')!r}"
        except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors, bad JSON a ValueError
            last_seen = f"{type(error).__name__}: {error}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url}/_cluster/health not yellow or green after {timeout:.0f}s (last: {last_seen})")
        time.sleep(0.5)


def start_node(
    tmpdir: str | os.PathLike[str],
    *,
    port: int = 0,
    timeout: float = 120.0,
    node_args: Sequence[str] = (),
) -> tuple[str, Callable[[], None]]:
    """Start a node with ``tmpdir`` as its home and return ``(url, stop)``.

    ``port`` 0 lets the OS choose the HTTP port. ``timeout`` bounds the wait
    for yellow health in seconds, not counting a first Maven build.
    ``node_args`` go to the launcher, e.g. ``["-Eaction.destructive_requires_name=false"]``.
    JAVA_HOME, ES_HEAP and ES_JAVA_OPTS from the environment apply (see es/start.sh).
    ``stop()`` may be called more than once. It is also registered with atexit,
    so a node is not left running when the caller dies of an exception.
    Raises RuntimeError with es/start.sh's output (which includes the node log's tail) when the start fails.
    """
    data_dir = Path(tmpdir).resolve()
    pid_file = data_dir / "node.pid"
    command = [
        str(ES_DIR / "start.sh"),
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--timeout",
        str(int(timeout)),
    ]
    if node_args:
        command += ["--", *node_args]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout + BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        _stop(pid_file)
        raise RuntimeError(
            f"es/start.sh did not finish within {error.timeout:.0f}s; log: {data_dir / 'node.log'}"
        ) from error
    if result.returncode != 0:
        _stop(pid_file)  # es/start.sh stops the node on failure. This covers a start.sh that was killed midway.
        raise RuntimeError(f"es/start.sh failed with exit code {result.returncode}:\n{result.stderr.strip()}")

    url = result.stdout.strip().splitlines()[-1]
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            _stop(pid_file)

    atexit.register(stop)
    try:
        wait_for_health(url, timeout=30)
    except TimeoutError:
        stop()
        raise
    return url, stop


@contextmanager
def running_node(tmpdir: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Yield the URL from ETA1_ES_URL, or else start a node for the ``with`` block and stop it afterwards.

    Without ``tmpdir`` the node's home is a temporary folder that is removed afterwards.
    """
    env_url = es_url_from_env()
    if env_url:
        yield env_url
        return
    with TemporaryDirectory(prefix="eta1-es-") if tmpdir is None else nullcontext(tmpdir) as home:
        url, stop = start_node(home)
        try:
            yield url
        finally:
            stop()


def _stop(pid_file: Path) -> None:
    """Stop the node through es/stop.sh, and send SIGKILL (with a warning) if that fails or times out."""
    try:
        result = subprocess.run(
            [str(ES_DIR / "stop.sh"), "--pid-file", str(pid_file), "--timeout", "60"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if result.returncode == 0:
            return
        message = result.stderr.strip()
    except subprocess.TimeoutExpired:
        message = "es/stop.sh timed out after 90s"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise RuntimeError(f"failed to stop the Elasticsearch node: {message}") from None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    warnings.warn(f"Elasticsearch node (pid {pid}) did not stop on SIGTERM and was killed: {message}", stacklevel=2)
