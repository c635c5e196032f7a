"""Build the kata-debug node image from Debian packages and this project's wheel, offline.

`deploy/build-image [OUTPUT]` runs this. Why it exists instead of `podman build`: the image a
user's first `kubectl apply` pulls must be buildable on a machine that reaches only a Debian
mirror and a Python package index (no registry, no `FROM`), and two builds of the same inputs
must give the same digest, so that anyone can check a published image against its sources.

How: mmdebstrap installs a minimal Debian (the `essential` set plus python3 and systemd, whose
`journalctl` reads the node's journal) with SOURCE_DATE_EPOCH set; the project's wheel and its
dependencies (binary wheels only: no compiler in the build or the image) go into a venv at
/opt/kata-debug with the image's own Python; this module then writes the root filesystem as
one normalised layer (sorted, owners numeric, mtimes clamped, gzip without a timestamp) and an
OCI image layout around it, as a tar that `ctr images import`, `podman load` and
`skopeo copy oci-archive:` accept. The Debian and Python package versions are recorded in the
image (/opt/kata-debug/image-packages.json) and as image labels.

Builds are cached under ~/.cache/kata-debug-image/<input hash>: the hash covers this file, the
package's sources, the Debian sources configuration and the mirror's current InRelease files,
the pip configuration and SOURCE_DATE_EPOCH. Python dependencies are resolved (newest allowed)
on a real build and recorded; `--no-cache` re-resolves them.

deploy/Containerfile is generated from the same specification (`--containerfile`), for users
who build with a registry-based tool instead.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kata-debug-image"

# What the image is. The Containerfile is generated from these; keep them the only copy.
DEBIAN_SUITE = "bookworm"
DEBIAN_BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # the Containerfile's equivalent base
# python3: the interpreter the venv uses. systemd: journalctl (the collectors run
# `journalctl --root /host`). usr-is-merged: satisfies init-system-helpers without `usrmerge`,
# which would pull in perl (mmdebstrap's merged-usr hook merges /usr itself). libstdc++6: the
# C++ runtime that binary wheels' extensions link against (google-re2, grpcio, protobuf's upb,
# frozenlist) and that manylinux wheels may not bundle; check_shared_libraries() proves the
# list complete on every build.
DEBIAN_PACKAGES = ("python3", "systemd", "libstdc++6")
DEBIAN_BUILD_ONLY = ("usr-is-merged",)
VENV = "/opt/kata-debug"
RECORD = f"{VENV}/image-packages.json"
ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    # The root filesystem is read-only in the DaemonSet: no .pyc writes, logs unbuffered.
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
USER = "0:0"  # root without capabilities: the DaemonSet drops ALL and adds back DAC_READ_SEARCH
ENTRYPOINT = ["kata-debug"]
CMD = ["node-agent", "--host-root", "/host"]
# dpkg leaves these out of the image: documentation nobody reads in a node agent (copyright
# files stay, they are the licences).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
# Nothing that compiles may end up in the image (all Python dependencies are binary wheels).
COMPILERS = ("gcc", "cc", "c++", "g++", "cpp", "clang", "tcc", "ld", "as", "make")
# The image's interpreter is Debian bookworm's CPython 3.11 on glibc 2.36 (x86_64).
PY_VERSION = "3.11"
PLATFORMS = (
    [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    + ["any"]
)
SOURCE_DIRS = ("kata_debug", "collectors", "forwarder")
SOURCE_FILES = ("pyproject.toml", "README.md")


class BuildError(Exception):
    """A build that cannot go on; the message names the input or step and the problem."""


@dataclass(frozen=True)
class Inputs:
    """Everything the image is made of; its hash names the cache entry."""

    version: str
    source_date_epoch: int
    debian_sources: Path
    sources: Path  # the snapshot of the project's sources (snapshot_sources)


@dataclass
class BuildResult:
    """What a build produced, as recorded next to the cached archive (build.json)."""

    reference: str
    digest: str  # the manifest digest, what `ctr images ls` and registries show
    size: int  # bytes of the compressed layer: what a node pulls
    unpacked_size: int  # bytes of the root filesystem
    debian: dict[str, str]
    python: dict[str, str]
    input_hash: str
    cached: bool = False
    verified_reproducible: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "cached"}


# ---------------------------------------------------------------------------------------------
# The specification rendered as a Containerfile


def containerfile() -> str:
    """deploy/Containerfile: the same packages, venv, environment and command, for `podman build`."""
    pkgs = " ".join(DEBIAN_PACKAGES)
    env = " \\\n    ".join(f"{k}={v}" for k, v in ENV.items())
    return f"""\
# GENERATED by `deploy/build-image --containerfile > deploy/Containerfile`: edit
# deploy/build_image.py, not this file (tests/test_image.py checks they agree).
#
# The kata-debug node image for users with a registry (also the image `collect --cluster`
# runs on each node). Without one, `deploy/build-image` makes the same image offline from
# Debian packages, reproducibly (see README "Node image").
#
#   podman build -f deploy/Containerfile -t REGISTRY/kata-debug:VERSION .
#   (or: docker build -f deploy/Containerfile ...; run from the repository root)
#
# Then push it and set the image in deploy/kustomization.yaml (`images:`).

FROM {DEBIAN_BASE_IMAGE} AS build
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \\
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kata_debug ./kata_debug
COPY collectors ./collectors
COPY forwarder ./forwarder
# Binary wheels only: no compiler is needed, and none is in the image.
RUN python3 -m venv --without-pip {VENV} \\
 && python3 -m pip --python {VENV}/bin/python install --no-cache-dir --only-binary=:all: . \\
 && {VENV}/bin/python -c "import kata_debug.cli.app"

FROM {DEBIAN_BASE_IMAGE}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends {pkgs} \\
 && rm -rf /var/lib/apt/lists/*
COPY --from=build {VENV} {VENV}
ENV {env}
USER {USER.split(":")[0]}
ENTRYPOINT {json.dumps(ENTRYPOINT)}
CMD {json.dumps(CMD)}
"""


# ---------------------------------------------------------------------------------------------
# Inputs and cache


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def default_source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH if set, else the time of the last commit, else the newest source file."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        if not env.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={env!r}: not a number of seconds")
        return int(env)
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return max(int(p.stat().st_mtime) for p in source_files())


def default_debian_sources() -> Path:
    """The Debian mirror apt is configured with on this machine (deb822 or one-line format)."""
    for candidate in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if candidate.is_file() and candidate.stat().st_size:
            return candidate
    raise BuildError("no Debian sources configured in /etc/apt: pass --debian-sources FILE")


def debian_release_urls(sources: Path) -> list[str]:
    """InRelease URLs of every Debian suite the sources file names (deb822 or one-line)."""
    text = sources.read_text()
    urls: list[str] = []
    if sources.suffix == ".sources":
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                urls += [f"{uri.rstrip('/')}/dists/{suite}/InRelease" for suite in fields.get("suites", "").split()]
    else:
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(parts) >= 3 and parts[0] == "deb":
                urls.append(f"{parts[1].rstrip('/')}/dists/{parts[2]}/InRelease")
    if not urls:
        raise BuildError(f"{sources}: names no `deb` repository")
    return urls


def source_files(tree: Path = REPO) -> Iterator[Path]:
    for name in SOURCE_FILES:
        yield tree / name
    for d in SOURCE_DIRS:
        for p in sorted((tree / d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                yield p


def snapshot_sources(dest: Path) -> None:
    """Copy exactly the files the input hash covers; the wheel is built from this copy.

    Why: building in the working tree made the image depend on more than its inputs. A tree
    that moves during a build (a merge, an edit) gave the first build and the
    --verify-reproducible rebuild different sources under one input hash (seen: an image whose
    package matched a commit two minutes newer than its SOURCE_DATE_EPOCH); setuptools' in-tree
    build/ kept modules deleted from the sources; and two builds of one tree collided there.
    """
    for p in source_files():
        target = dest / p.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)


def input_hash(inputs: Inputs) -> str:
    """What names the cache entry: everything that goes into the image, cheaply knowable."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    add("builder", Path(__file__).read_bytes())
    add("epoch", str(inputs.source_date_epoch).encode())
    for p in source_files(inputs.sources):
        add(str(p.relative_to(inputs.sources)), p.read_bytes())
    add("debian-sources", inputs.debian_sources.read_bytes())
    for url in debian_release_urls(inputs.debian_sources):
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                add(url, resp.read())
        except OSError as e:
            raise BuildError(f"Debian mirror {url}: {e}") from e
    for conf in (Path("/etc/pip.conf"), Path.home() / ".pip/pip.conf", Path.home() / ".config/pip/pip.conf"):
        if conf.is_file():
            add(str(conf), conf.read_bytes())
    add("pip-env", json.dumps(sorted((k, v) for k, v in os.environ.items() if k.startswith("PIP_"))).encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Root filesystem


def run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run a build step; its own output goes to the terminal, a failure to one BuildError line."""
    print(f"build-image: {what}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError as e:
        raise BuildError(f"{what}: {argv[0]} is not installed (Debian package {argv[0]})") from e
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {last}")
    print(f"build-image:   ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)


def fetch_wheels(dest: Path, epoch: int, sources: Path) -> None:
    """The project's wheel and every dependency as binary wheels for the image's Python."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # A fresh copy per build: setuptools builds in the tree it is given (build/, *.egg-info).
    tree = dest.parent / "src"
    shutil.copytree(sources, tree)
    run([*pip, "wheel", "--no-deps", "-w", str(dest), str(tree)], "building the kata-debug wheel", env)
    (wheel,) = dest.glob("kata_debug-*.whl")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    run(
        [
            *pip,
            "download",
            "-d",
            str(dest),
            "--only-binary=:all:",
            "--python-version",
            PY_VERSION,
            "--implementation",
            "cp",
            *[arg for abi in ("cp311", "abi3", "none") for arg in ("--abi", abi)],
            *platforms,
            str(wheel),
        ],
        "downloading the Python dependencies (binary wheels)",
        env,
    )


def pip_wheel() -> Path:
    """pip itself, run from its wheel inside the chroot (it stays out of the image)."""
    import ensurepip

    bundled = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if not bundled:
        raise BuildError(f"{sys.executable} has no bundled pip wheel (ensurepip): run with a python3 that has one")
    return bundled[-1]


def build_rootfs(root: Path, wheels: Path, inputs: Inputs) -> None:
    """mmdebstrap the Debian part and install the wheels into the venv (inside the chroot)."""
    stage = "/tmp/kata-debug-build"
    shutil.copy(pip_wheel(), wheels / "pip.whl")
    chroot_env = (
        f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SOURCE_DATE_EPOCH={inputs.source_date_epoch} PYTHONHASHSEED=0"
    )
    hooks = [
        f'chroot "$1" {chroot_env} python3 -m venv --without-pip {VENV}',
        f'mkdir -p "$1{stage}" && cp -a {wheels}/. "$1{stage}/"',
        # Checked-hash .pyc files (SOURCE_DATE_EPOCH makes py_compile choose them): no timestamps.
        f'chroot "$1" {chroot_env} {VENV}/bin/python {stage}/pip.whl/pip install --no-index --no-cache-dir '
        f"--disable-pip-version-check -q --find-links {stage} kata-debug=={inputs.version}",
        f'rm -rf "$1{stage}"',
        f'chroot "$1" {chroot_env} {VENV}/bin/kata-debug --help >/dev/null',
    ]
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=essential",
        "--format=directory",
        "--skip=output/dev",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--include={','.join(DEBIAN_BUILD_ONLY + DEBIAN_PACKAGES)}",
        *[f"--dpkgopt={o}" for o in DPKG_EXCLUDES],
        *[f"--customize-hook={h}" for h in hooks],
        DEBIAN_SUITE,
        str(root),
        str(inputs.debian_sources),
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(inputs.source_date_epoch)}
    run(argv, f"mmdebstrap {DEBIAN_SUITE} + {', '.join(DEBIAN_PACKAGES)} + kata-debug venv", env)


def installed_debian(root: Path) -> dict[str, str]:
    pkgs: dict[str, str] = {}
    for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status", "").endswith(" installed"):
            pkgs[fields["Package"]] = fields["Version"]
    return dict(sorted(pkgs.items()))


def installed_python(root: Path) -> dict[str, str]:
    pkgs: dict[str, str] = {}
    for meta in (root / VENV.lstrip("/")).glob("lib/python3*/site-packages/*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1)
            for line in meta.read_text(errors="replace").split("\n\n")[0].splitlines()
            if ": " in line
        )
        pkgs[fields["Name"]] = fields["Version"]
    return dict(sorted(pkgs.items(), key=lambda kv: kv[0].lower()))


def check_shared_libraries(root: Path) -> None:
    """Every native extension in the venv loads with the image's own libraries.

    Why: a wheel's extension that needs a Debian library the image lacks (libstdc++ for
    google-re2) imports fine on the build machine and fails only inside the container, and
    only when that module is first imported. The image's dynamic loader (`ld.so --list`, run
    in the root) resolves each one as the container would, without running Python code.
    """
    venv = root / VENV.lstrip("/")
    missing: list[str] = []
    for so in sorted(venv.rglob("*.so*")):
        if not re.search(r"\.so(\.[0-9]+)*$", so.name) or not so.is_file() or so.is_symlink():
            continue
        inside = "/" + str(so.relative_to(root))
        proc = subprocess.run(
            ["chroot", str(root), "/lib64/ld-linux-x86-64.so.2", "--list", inside],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or "not found" in text:
            problem = (text.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            missing.append(f"{inside}: {problem.removeprefix(inside + ': ')}")
    if missing:
        raise BuildError(
            "a Python extension needs a library the image lacks (add its Debian package to "
            f"DEBIAN_PACKAGES): {'; '.join(missing)}"
        )


def check_no_compilers(root: Path, debian: dict[str, str]) -> None:
    found = [f"/usr/bin/{c}" for c in COMPILERS if (root / "usr/bin" / c).exists()]
    found += [
        p
        for p in debian
        if re.fullmatch(r"(gcc|g\+\+|cpp|clang|tcc)(-[0-9.]+)?|binutils.*|build-essential|libc6?-dev|.*-dev", p)
    ]
    if found:
        raise BuildError(f"the image must hold no compiler, found: {', '.join(found)}")


# ---------------------------------------------------------------------------------------------
# OCI layout


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def tar_entries(root: Path, epoch: int) -> Iterator[tuple[tarfile.TarInfo, Path | None]]:
    """Every file under root, sorted, as normalised tar headers (clamped mtime, numeric owners)."""
    seen: dict[tuple[int, int], str] = {}

    def walk(d: Path, rel: str) -> Iterator[tuple[tarfile.TarInfo, Path | None]]:
        for name in sorted(os.listdir(d)):
            path = d / name
            arc = f"{rel}{name}"
            st = path.lstat()
            info = tarfile.TarInfo(arc)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = min(int(st.st_mtime), epoch)
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                yield info, None
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                yield info, None
                if arc != "dev":  # the runtime mounts /dev; mmdebstrap's nodes stay out
                    yield from walk(path, arc + "/")
            elif stat.S_ISREG(st.st_mode):
                if os.listxattr(path, follow_symlinks=False):
                    raise BuildError(f"{path}: extended attributes (file capabilities?) are not supported")
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                    yield info, None
                    continue
                seen[key] = arc
                info.size = st.st_size
                yield info, path
            elif stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue  # runtime leftovers; nothing in an image needs them
            else:
                raise BuildError(f"{path}: device nodes do not belong in the image (the runtime provides /dev)")

    yield from walk(root, "")


def write_layer(root: Path, blob: IO[bytes], epoch: int) -> tuple[str, str, int, int]:
    """(compressed digest, diff_id, compressed size, unpacked bytes) of root as a tar+gzip layer."""
    compressed = HashingWriter(blob)
    unpacked = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=6, mtime=0) as gz:
        raw = HashingWriter(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info, path in tar_entries(root, epoch):
                if path is None:
                    tar.addfile(info)
                else:
                    unpacked += info.size
                    with path.open("rb") as f:
                        tar.addfile(info, f)
    return f"sha256:{compressed.sha.hexdigest()}", f"sha256:{raw.sha.hexdigest()}", compressed.size, unpacked


def labels(inputs: Inputs, debian: dict[str, str], python: dict[str, str]) -> dict[str, str]:
    created = datetime.fromtimestamp(inputs.source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "org.opencontainers.image.title": "kata-debug",
        "org.opencontainers.image.description": "kata-debug node agent and node collector",
        "org.opencontainers.image.version": inputs.version,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "io.kata-debug.image.debian-suite": DEBIAN_SUITE,
        "io.kata-debug.image.debian-packages": " ".join(f"{k}={v}" for k, v in debian.items()),
        "io.kata-debug.image.python-packages": " ".join(f"{k}=={v}" for k, v in python.items()),
    }


def write_oci_archive(root: Path, output: Path, inputs: Inputs, reference: str) -> tuple[str, int, int]:
    """The OCI image layout tar: (manifest digest, compressed layer size, unpacked size)."""
    debian, python = installed_debian(root), installed_python(root)
    meta = labels(inputs, debian, python)
    with tempfile.TemporaryDirectory(prefix="kata-debug-oci-", dir=output.parent) as tmp:
        layer_path = Path(tmp) / "layer"
        with layer_path.open("wb") as blob:
            layer_digest, diff_id, layer_size, unpacked = write_layer(root, blob, inputs.source_date_epoch)
        config = {
            "created": meta["org.opencontainers.image.created"],
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": USER,
                "Env": [f"{k}={v}" for k, v in ENV.items()],
                "Entrypoint": ENTRYPOINT,
                "Cmd": CMD,
                "WorkingDir": "/",
                "Labels": meta,
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [
                {
                    "created": meta["org.opencontainers.image.created"],
                    "created_by": f"deploy/build-image: mmdebstrap {DEBIAN_SUITE} {' '.join(DEBIAN_PACKAGES)}"
                    f" + kata-debug {inputs.version} in {VENV}",
                }
            ],
        }
        config_blob = canonical(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", config_blob),
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
            "annotations": {k: v for k, v in meta.items() if k.startswith("org.opencontainers.")},
        }
        manifest_blob = canonical(manifest)
        manifest_desc = descriptor("application/vnd.oci.image.manifest.v1+json", manifest_blob)
        manifest_desc["annotations"] = {
            # OCI's own name for the image in a layout (podman load, skopeo oci-archive:) ...
            "org.opencontainers.image.ref.name": reference,
            # ... and containerd's (`ctr images import` names the image from it).
            "io.containerd.image.name": reference,
        }
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
        index["manifests"] = [manifest_desc]
        partial = output.with_name(output.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:

            def add(name: str, data: bytes | None = None, path: Path | None = None, size: int = 0) -> None:
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = inputs.source_date_epoch, 0, 0, "", ""
                if data is None and path is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    return
                info.mode = 0o644
                if path is not None:
                    info.size = size
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    assert data is not None
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

            add("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
            add("index.json", canonical(index))
            add("blobs")
            add("blobs/sha256")
            blobs = sorted(
                [
                    (manifest["config"]["digest"], config_blob, None),  # type: ignore[index]
                    (manifest_desc["digest"], manifest_blob, None),
                    (layer_digest, None, layer_path),
                ],
                key=lambda b: str(b[0]),
            )
            for digest, data, path in blobs:
                name = "blobs/sha256/" + str(digest).removeprefix("sha256:")
                add(name, data, path, layer_size)
        partial.rename(output)
    return str(manifest_desc["digest"]), layer_size, unpacked


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}", "size": len(blob)}


# ---------------------------------------------------------------------------------------------
# The build


def build_uncached(inputs: Inputs, output: Path, reference: str, ihash: str) -> BuildResult:
    if os.geteuid() != 0:
        raise BuildError("mmdebstrap --mode=root needs root (run deploy/build-image as root)")
    with tempfile.TemporaryDirectory(prefix="kata-debug-image-") as tmp:
        wheels, root = Path(tmp) / "wheels", Path(tmp) / "root"
        wheels.mkdir()
        fetch_wheels(wheels, inputs.source_date_epoch, inputs.sources)
        build_rootfs(root, wheels, inputs)
        debian, python = installed_debian(root), installed_python(root)
        check_no_compilers(root, debian)
        check_shared_libraries(root)
        record = {
            "reference": reference,
            "source_date_epoch": inputs.source_date_epoch,
            "debian_suite": DEBIAN_SUITE,
            "debian": debian,
            "python": python,
        }
        (root / RECORD.lstrip("/")).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.utime(root / RECORD.lstrip("/"), (inputs.source_date_epoch, inputs.source_date_epoch))
        print("build-image: writing the OCI archive", file=sys.stderr, flush=True)
        digest, size, unpacked = write_oci_archive(root, output, inputs, reference)
    return BuildResult(reference, digest, size, unpacked, debian, python, ihash)


def build(
    output: Path, *, use_cache: bool = True, verify: bool = False, debian_sources: Path | None = None
) -> BuildResult:
    """Build (or reuse) the image at output; with verify, prove a second build is identical."""
    with tempfile.TemporaryDirectory(prefix="kata-debug-src-") as snapshot:
        epoch = default_source_date_epoch()
        snapshot_sources(Path(snapshot))
        inputs = Inputs(
            version=project_version(),
            source_date_epoch=epoch,
            debian_sources=debian_sources or default_debian_sources(),
            sources=Path(snapshot),
        )
        return build_inputs(inputs, output, use_cache=use_cache, verify=verify)


def build_inputs(inputs: Inputs, output: Path, *, use_cache: bool, verify: bool) -> BuildResult:
    """build() for fixed inputs: the first build and the verifying rebuild use the same snapshot."""
    if not inputs.debian_sources.is_file():
        raise BuildError(f"--debian-sources {inputs.debian_sources}: no such file")
    reference = f"localhost/kata-debug:{inputs.version}"
    ihash = input_hash(inputs)
    entry = CACHE_ROOT / ihash
    cached_archive, cached_info = entry / "image.oci.tar", entry / "build.json"
    result: BuildResult | None = None
    if use_cache and cached_archive.is_file() and cached_info.is_file():
        result = BuildResult(**json.loads(cached_info.read_text()), cached=True)
        print(f"build-image: cached build {entry}", file=sys.stderr)
    else:
        entry.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        result = build_uncached(inputs, cached_archive, reference, ihash)
        print(f"build-image: built in {time.monotonic() - started:.0f}s", file=sys.stderr)
        cached_info.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if verify and not result.verified_reproducible:
        with tempfile.TemporaryDirectory(prefix="kata-debug-rebuild-") as tmp:
            again = build_uncached(inputs, Path(tmp) / "again.oci.tar", reference, ihash)
        if again.digest != result.digest:
            raise BuildError(
                f"not reproducible: a second build gave {again.digest}, the first {result.digest} "
                f"(compare the layers of {cached_archive} and a new build)"
            )
        result.verified_reproducible = True
        cached_info.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if output.resolve() != cached_archive.resolve():
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = output.with_name(output.name + ".partial")
        shutil.copyfile(cached_archive, tmp_out)
        tmp_out.rename(output)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/build-image", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", help="OCI archive to write (default kata-debug-<version>.oci.tar)")
    parser.add_argument("--no-cache", action="store_true", help="build even if a build of the same inputs is cached")
    parser.add_argument(
        "--verify-reproducible",
        action="store_true",
        help="build a second time from scratch and fail unless the digest is the same (once per input hash)",
    )
    parser.add_argument("--debian-sources", type=Path, help="apt sources file (default: this machine's)")
    parser.add_argument("--json", action="store_true", help="print the build record as JSON on stdout")
    parser.add_argument("--containerfile", action="store_true", help="print deploy/Containerfile and exit")
    args = parser.parse_args(argv)
    if args.containerfile:
        sys.stdout.write(containerfile())
        return 0
    try:
        output = Path(args.output or f"kata-debug-{project_version()}.oci.tar")
        result = build(
            output, use_cache=not args.no_cache, verify=args.verify_reproducible, debian_sources=args.debian_sources
        )
    except BuildError as e:
        print(f"build-image: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build-image: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({**result.to_json(), "cached": result.cached, "output": str(output)}, indent=2))
    else:
        print(
            f"{output}: {result.reference} {result.digest}\n"
            f"  layer {result.size / 2**20:.1f} MiB compressed, {result.unpacked_size / 2**20:.1f} MiB unpacked; "
            f"{len(result.debian)} Debian packages, {len(result.python)} Python packages"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
