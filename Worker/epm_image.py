"""The EPM image: the local base image (Debian, python3, pyroute2 0.7.2) with the agent copied in.

Tagged ``rswarm/epm:<hash of the agent's code>``, so a change to Worker/epm/ is a new image and a running
EPM keeps the code it started with. Built locally (``FROM rswarm/epm-base:1`` plus one COPY: no network
needed) by ``dependences.sh`` and, when missing, by the Worker before it runs its first EPM.

    .venv/bin/python -m Worker.epm_image     # build if missing; print the tag
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import tarfile
import threading
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound

log = logging.getLogger(__name__)

BASE_IMAGE = "rswarm/epm-base:1"
REPO = "rswarm/epm"
AGENT_DIR = Path(__file__).resolve().parent / "epm"
LABEL = "rswarm.epm-agent"
_lock = threading.Lock()


class ImageError(Exception):
    """The EPM image cannot be made on this engine (the base image is missing, the build failed)."""


def _sources() -> list[Path]:
    return sorted(p for p in AGENT_DIR.glob("*.py"))


def code_hash() -> str:
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def image_tag() -> str:
    return f"{REPO}:{code_hash()}"


def _context(tag_hash: str) -> io.BytesIO:
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        "COPY epm /opt/rswarm/epm\n"
        "ENV PYTHONPATH=/opt/rswarm PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1\n"
        f"LABEL {LABEL}={tag_hash}\n"
        'CMD ["python3", "-m", "epm.supervisor"]\n'
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for p in _sources():
            data = p.read_bytes()
            info = tarfile.TarInfo(f"epm/{p.name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def ensure(api: docker.APIClient) -> str:
    """The EPM image's tag, built on this engine first if it is not there yet."""
    tag = image_tag()
    with _lock:
        try:
            api.inspect_image(tag)
            return tag
        except ImageNotFound:
            pass
        try:
            api.inspect_image(BASE_IMAGE)
        except ImageNotFound:
            raise ImageError(f"the EPM base image {BASE_IMAGE} is not on this engine: run dependences.sh") from None
        log.info("building the EPM image %s", tag)
        try:
            for chunk in api.build(fileobj=_context(code_hash()), custom_context=True, tag=tag, rm=True,
                                   forcerm=True, decode=True, pull=False):
                if "error" in chunk:
                    raise ImageError(f"building {tag}: {chunk['error'].strip()}")
        except APIError as exc:
            raise ImageError(f"building {tag}: {exc.explanation or exc}") from None
        return tag


def main() -> int:
    try:
        print(ensure(docker.APIClient(base_url=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
                                           timeout=120)))
    except (ImageError, docker.errors.DockerException) as exc:
        print(f"epm image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
