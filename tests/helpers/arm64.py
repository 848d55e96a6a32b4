"""A 64-bit ARM Debian userland under QEMU user-mode emulation, for running the device runtime
as a Raspberry Pi (Pi OS 64-bit is Debian arm64) would.

- The root filesystem is Debian ``stable`` for arm64, built once with ``mmdebstrap`` into a
  cache folder outside the clone (``KERAS_TRANSFORMER_ARM64_CACHE``, default
  ``/var/cache/keras-transformer/arm64``): about 6-10 minutes on 2 cores, then reused. It is
  built beside its final place and renamed when complete, under a lock, so a killed build is
  never reused.
- Commands run in a private mount namespace (``unshare --mount``): ``/proc``, ``/dev``, ``/sys``
  and the shared folders are mounted for that one command and vanish with it.
- QEMU 7.2 passes the host's x86 ``/proc/cpuinfo`` through, and LiteRT's CPU detection crashes
  on it: an ARM ``cpuinfo`` of the emulated CPU is bind-mounted over it. QEMU 7.2's default
  ``max`` CPU gave wrong int8 results with XNNPACK, so the CPU is always named
  (``cortex-a72``: Pi 4; ``cortex-a76``: Pi 5).
- pip inside reaches the same package index as the host's: its pip configuration files, the
  ``PIP_*`` environment, name resolution and CA bundle are carried in, and local folders the
  configuration names are mounted read-only at the same paths.

Timings under emulation mean nothing; outputs do.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

DEBIAN_SUITE = "stable"
# What the runtime needs on top of Debian's essential set: Python with venv (its ensurepip
# brings pip), the C++ library LiteRT links against, and the CA bundle. The essential variant
# and no documentation: the emulated dpkg is the slow part of the build.
PACKAGES = "python3-venv,libstdc++6,ca-certificates"
EXCLUDED = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*")
CACHE = Path(os.environ.get("KERAS_TRANSFORMER_ARM64_CACHE", "/var/cache/keras-transformer/arm64"))
HOST_TOOLS = ("mmdebstrap", "qemu-aarch64-static", "unshare", "chroot", "update-binfmts")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
PIP_CONFIG_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "~/.config/pip/pip.conf")
PIP_CONFIG_FILES += ("~/.pip/pip.conf",)
COMPLETE = ".complete"

# /proc/cpuinfo of a 4-core Cortex-A72 (Raspberry Pi 4) and Cortex-A76 (Raspberry Pi 5).
_CPU = {
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid", "Raspberry Pi 4 Model B Rev 1.4"),
    "cortex-a76": (
        "0xd0b",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp",
        "Raspberry Pi 5 Model B Rev 1.0",
    ),
}


def cpuinfo(cpu: str) -> str:
    part, features, model = _CPU[cpu]
    block = (
        "processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 3\n\n"
    )
    cores = "".join(block.format(n=n, features=features, part=part) for n in range(4))
    return cores + f"Model\t\t: {model}\n"


def unavailable() -> str | None:
    """Why this machine cannot run the arm64 userland, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root (chroot, mounts and mmdebstrap's root mode)"
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"missing {', '.join(missing)}: apt-get install qemu-user-static binfmt-support "
            "mmdebstrap"
        )
    try:
        enable_binfmt()
    except (OSError, subprocess.CalledProcessError) as error:
        return f"cannot register qemu-aarch64 with binfmt_misc: {error}"
    return None


def enable_binfmt() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered with the F (fix binary) flag, so the
    emulator runs inside a chroot that does not contain it."""
    if not (BINFMT / "register").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            check=True,
            capture_output=True,
        )
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(
            ["update-binfmts", "--enable", "qemu-aarch64"], check=True, capture_output=True
        )
    text = entry.read_text()
    flags = re.search(r"^flags: (\w*)", text, re.M)
    if "enabled" not in text or not flags or "F" not in flags.group(1):
        raise OSError(f"{entry} is not enabled with the F flag:\n{text}")


def debian_mirror() -> str:
    """The host's Debian archive (its apt sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def ensure_rootfs(cache: Path = CACHE, log=print) -> Path:
    """The cached arm64 root filesystem, built first if there is none (under a lock)."""
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "rootfs"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / COMPLETE).is_file():
            return root
        partial = cache / f"rootfs.partial-{os.getpid()}"
        for stale in cache.glob("rootfs.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)  # an incomplete one, from a killed build
        log(f"building the arm64 Debian {DEBIAN_SUITE} root filesystem in {root} (minutes)")
        started = time.monotonic()
        subprocess.run(
            [
                "mmdebstrap",
                "--arch=arm64",
                "--mode=root",
                "--variant=essential",
                f"--include={PACKAGES}",
                *(f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDED),
                DEBIAN_SUITE,
                str(partial),
                debian_mirror(),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=40 * 60,
        )
        (partial / COMPLETE).write_text(f"built in {time.monotonic() - started:.0f} s\n")
        os.replace(partial, root)
        return root


def _pip_paths(config_files: list[Path]) -> tuple[list[str], list[Path]]:
    """Local folders and files the pip configuration and environment name (to mount)."""
    values = [value for key, value in os.environ.items() if key.startswith("PIP_")]
    for file in config_files:
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error, OSError):
            parser.read(file)
            values += [value for section in parser.values() for value in section.values()]
    paths = []
    for value in values:
        for word in value.split():
            word = word.removeprefix("file://").rstrip("/")
            if word.startswith("/") and Path(word).exists():
                # A local index's pages link to files beside its simple/ folder.
                paths.append(Path(word).parent if word.endswith("/simple") else Path(word))
    return values, sorted(set(paths))


def carry_host_setup(root: Path) -> list[Path]:
    """Name resolution, CA bundle and pip configuration copied in; the paths to mount."""
    for name in ("etc/resolv.conf", "etc/hosts"):
        target = root / name
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(f"/{name}", target)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copyfile(bundle, root / str(bundle).lstrip("/"))
    configs = [Path(file).expanduser() for file in PIP_CONFIG_FILES]
    configs = [file for file in configs if file.is_file()]
    for file in configs:
        target = root / str(file).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    _, paths = _pip_paths(configs)
    return [path for path in paths if not str(path).startswith("/etc/ssl")]


def run_arm64(
    root: Path,
    command: str,
    cpu: str = "cortex-a72",
    mounts: tuple[Path, ...] = (),
    timeout: float = 1200,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``command`` (a shell line) inside the arm64 userland, emulating ``cpu``.

    ``mounts``: host folders bind-mounted at the same path inside, for this command only.
    """
    info = root.parent / f"cpuinfo-{cpu}"
    info.write_text(cpuinfo(cpu))
    q = shlex.quote
    script = [
        f"mount -t proc proc {q(str(root / 'proc'))}",
        f"mount --bind {q(str(info))} {q(str(root / 'proc/cpuinfo'))}",
    ]
    binds = [(Path("/dev"), "--rbind"), (Path("/sys"), "--rbind")]
    for path, how in binds + [(Path(path), "--bind") for path in mounts]:
        inside = q(str(root / str(path).lstrip("/")))
        if path.is_dir():
            script.append(f"mkdir -p {inside}")
        else:
            script.append(f"mkdir -p $(dirname {inside}) && touch {inside}")
        script.append(f"mount {how} {q(str(path))} {inside}")
    variables = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "QEMU_CPU": cpu,
        **{key: value for key, value in os.environ.items() if key.startswith("PIP_")},
        **(env or {}),
    }
    assignments = " ".join(f"{key}={q(value)}" for key, value in variables.items())
    script.append(
        f"exec chroot {q(str(root))} /usr/bin/env -i {assignments} /bin/sh -c {q(command)}"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "\n".join(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


if __name__ == "__main__":  # `python tests/helpers/arm64.py build`: .ci/run starts it early
    import sys

    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python tests/helpers/arm64.py build")
    reason = unavailable()
    if reason:
        sys.exit(f"arm64 emulation unavailable: {reason}")
    print(ensure_rootfs(), flush=True)
