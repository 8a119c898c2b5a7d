"""The CUDA image's Python set, checked from any machine (no GPU, no Docker): docker/cuda-requirements.txt and the
project's own requirements, resolved together by pip for the image's platform (Linux x86-64, the image's CPython,
PyPI only, as the cuda stage installs them in one pip call). Against pip's report: every pin in the file is what pip
resolves; torch is exactly the one vLLM's wheel requires and of the CUDA build vLLM's kernels are built for;
FlashInfer is vLLM's version and any cubin or jit-cache package matches it; one CUDA major across the whole set.
`make cuda-deps-check` runs this file."""
from __future__ import annotations

import copy
import json
import os
import platform
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import Specifier
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
CUDA_REQS = DOCKER / "cuda-requirements.txt"
INDEX = "https://pypi.org/simple"
# python:3.11.7-slim-bookworm: glibc 2.36, so every manylinux tag up to 2_36 installs there
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 37))]
# In the set but on PyPI only as source: built here into wheels (their metadata is what the image's build computes)
SDIST_ONLY = ["deepspeed", "antlr4-python3-runtime==4.9.3"]  # antlr4: hydra-core and omegaconf ask ==4.9.*
# Packages whose version is the CUDA release they belong to (the CUDA 13 libraries themselves, cuBLAS 13.1, cuFFT
# 12.0, ..., carry their own numbering and no -cuNN suffix, so neither tells a CUDA major)
CUDA_VERSIONED = {"cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-cupti", "nvidia-cuda-nvcc",
                  "nvidia-nvjitlink", "nvidia-nvtx", "cuda-bindings"}
# CUTLASS's DSL always installs its CUDA 12 compiler libraries and adds CUDA 13's with its [cu13] extra; it picks
# one by the toolkit at run time and brings no CUDA runtime of its own
FLAVOURS = re.compile(r"nvidia-cutlass-dsl-libs-cu(\d+)$")
CU_SUFFIX = re.compile(r"-cu(\d+)$")


# ------------------------------------------------------------------------------------------- files
def cuda_stage() -> str:
    text = (DOCKER / "Dockerfile").read_text()
    return text[text.index("FROM base AS cuda"):text.index("FROM base AS cpu")]


def image_python() -> str:
    return re.search(r"^FROM python:(\d+\.\d+\.\d+)-", (DOCKER / "Dockerfile").read_text(), re.M).group(1)


def pinned() -> dict[str, Specifier]:
    """docker/cuda-requirements.txt: canonical name -> its pin (`==version`, or `===version`: that very string)."""
    lines = [line.split("#")[0].strip() for line in CUDA_REQS.read_text().splitlines()]
    pins = {canonicalize_name(r.name): list(r.specifier) for r in map(Requirement, filter(None, lines))}
    assert all(len(spec) == 1 and spec[0].operator in ("==", "===") for spec in pins.values()), pins
    return {name: spec for name, [spec] in pins.items()}


def project_requirements() -> list[str]:
    """pyproject's dependencies plus the extras the cuda stage installs (`-e "./[vllm,server,s3]"`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = re.search(r'-e "\./\[([\w,-]+)\]"', cuda_stage()).group(1).split(",")
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


def pin_of(requirements: list[str], name: str) -> str:
    [spec] = [Requirement(r).specifier for r in requirements if canonicalize_name(Requirement(r).name) == name]
    return str(spec)


# ---------------------------------------------------------------------------------------- resolve
def pip(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """pip as a docker build on a bare image runs it: PyPI only, no pip.conf, no PIP_* variables of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run([sys.executable, "-m", "pip", *args, "--isolated", "--disable-pip-version-check"],
                          env=env, capture_output=True, text=True, **kwargs)


def resolve(workdir: Path) -> dict:
    """pip's installation report for the cuda stage's install, resolved for the image's platform."""
    requirements = project_requirements()
    sdists = [name if "==" in name else f"{name}{pin_of(requirements, name)}" for name in SDIST_ONLY]
    built = pip("wheel", "--no-deps", "--no-binary=:all:", "--index-url", INDEX, "-w", str(workdir / "wheels"), *sdists)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    report = workdir / "report.json"
    result = pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                 "--target", str(workdir / "never-written"), "--index-url", INDEX,
                 "--find-links", str(workdir / "wheels"), "--only-binary=:all:",
                 "--implementation", "cp", "--python-version", image_python(),
                 *(f"--platform={tag}" for tag in PLATFORMS), "-r", str(CUDA_REQS), *requirements)
    assert result.returncode == 0, "pip cannot resolve the CUDA set for the image:\n" + result.stderr[-5000:]
    return json.loads(report.read_text())


# ----------------------------------------------------------------------------------------- checks
def resolved(report: dict) -> dict[str, dict]:
    """canonical name -> the package's metadata in the report."""
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}


def requires(report: dict, name: str) -> list[Requirement]:
    """`name`'s Requires-Dist that apply on the image's platform (extras' requirements left out)."""
    environment = report["environment"]
    return [r for r in map(Requirement, resolved(report)[name].get("requires_dist", []))
            if r.marker is None or r.marker.evaluate({**environment, "extra": ""})]


def torch_cuda_major(report: dict) -> str | None:
    """The CUDA major torch's build is for: its local label (+cu128) or the CUDA runtime it requires."""
    local = Version(resolved(report)["torch"]["version"]).local
    if local:  # cu128 -> 12, cu130 -> 13; cpu, rocm...: none
        return local[2:-1] if re.fullmatch(r"cu\d\d\d", local) else None
    for r in requires(report, "torch"):
        name = canonicalize_name(r.name)
        if suffix := CU_SUFFIX.search(name):
            return suffix.group(1)
        if name in CUDA_VERSIONED and str(r.specifier).startswith("=="):
            return str(r.specifier)[2:].split(".")[0]
    return None


def cuda_majors(report: dict) -> dict[str, list[str]]:
    """CUDA major -> the packages in the report that belong to it."""
    majors: dict[str, list[str]] = {}
    for name, meta in resolved(report).items():
        if FLAVOURS.match(name):
            continue
        major = (suffix.group(1) if (suffix := CU_SUFFIX.search(name)) else
                 Version(meta["version"]).major if name in CUDA_VERSIONED else
                 torch_cuda_major(report) if name == "torch" else None)
        if major is not None:
            majors.setdefault(str(major), []).append(name)
    return majors


def problems(report: dict, pins: dict[str, Specifier], project: list[str]) -> list[str]:
    """Where the resolved CUDA set breaks a claim of docker/cuda-requirements.txt; empty when it holds."""
    found = []
    packages = resolved(report)
    version = {name: meta["version"] for name, meta in packages.items()}
    for name, pin in pins.items():  # the file agrees with the report
        if version.get(name) != pin.version:
            found.append(f"{name}: the file pins {pin}, pip resolves {version.get(name)}")
    vllm = {canonicalize_name(r.name): r for r in requires(report, "vllm")}
    # torch: the pinned one, exactly the one vLLM's wheel requires, from PyPI, and of vLLM's CUDA build
    torch_item = next(item for item in report["install"] if canonicalize_name(item["metadata"]["name"]) == "torch")
    if str(vllm["torch"].specifier) != f"=={version['torch']}":  # ==2.13.0 lets pip take 2.13.0+cu128: not this build
        found.append(f"torch {version['torch']}: vLLM {version['vllm']} requires torch{vllm['torch'].specifier}, "
                     "PyPI's build")
    if not torch_item["download_info"]["url"].startswith("https://files.pythonhosted.org/"):
        found.append(f"torch comes from {torch_item['download_info']['url']}, not PyPI, where vLLM's torch is")
    vllm_majors = {m.group(1) for r in vllm.values() for extra in r.extras if (m := re.fullmatch(r"cu(\d+)", extra))}
    torch_major = torch_cuda_major(report)
    if vllm_majors != {torch_major}:
        found.append(f"torch {version['torch']} is a CUDA {torch_major} build; vLLM {version['vllm']}'s "
                     f"dependencies are CUDA {sorted(vllm_majors)} ones")
    # FlashInfer: vLLM's version; its cubin and jit-cache packages, if any, the same (it refuses to import otherwise)
    if str(vllm["flashinfer-python"].specifier) != f"=={version.get('flashinfer-python')}":
        found.append(f"flashinfer-python {version.get('flashinfer-python')}: vLLM requires "
                     f"{vllm['flashinfer-python'].specifier}")
    for companion in ("flashinfer-cubin", "flashinfer-jit-cache"):
        if companion in version and Version(version[companion]).public != version.get("flashinfer-python"):
            found.append(f"{companion} {version[companion]} beside flashinfer-python {version.get('flashinfer-python')}")
    # one CUDA major across the whole set (CUTLASS DSL's flavours: the one for it must be there)
    majors = cuda_majors(report)
    if len(majors) != 1:
        found.append(f"more than one CUDA major: {majors}")
    flavours = {m.group(1) for name in packages if (m := FLAVOURS.match(name))}
    if flavours and torch_major not in flavours:
        found.append(f"CUTLASS DSL has no CUDA {torch_major} flavour, only {sorted(flavours)}")
    # DeepSpeed: the project's pin
    if f"=={version.get('deepspeed')}" != pin_of(project, "deepspeed"):
        found.append(f"deepspeed {version.get('deepspeed')}, the project pins {pin_of(project, 'deepspeed')}")
    return found


# ------------------------------------------------------------------------------------------ tests
def test_the_cuda_stage_installs_the_pinned_set_and_the_makefile_too():
    stage = cuda_stage()
    assert "COPY docker/cuda-requirements.txt docker/cuda-requirements.txt" in stage
    assert re.search(r"pip install -r docker/cuda-requirements\.txt -e \"\./\[vllm,server,s3\]\"", stage)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^CUDA_REQS\s*:= docker/cuda-requirements\.txt$", makefile, re.M) and "-r $(CUDA_REQS)" in makefile
    for text in (stage, makefile):  # no torch from another index beside vLLM's
        assert not re.search(r"download\.pytorch\.org/whl/cu\d+", text)


def test_the_file_pins_the_projects_vllm_and_deepspeed():
    pins, project = pinned(), project_requirements()
    assert {"torch", "vllm", "flashinfer-python", "deepspeed"} <= set(pins)
    for name in ("vllm", "deepspeed"):
        assert str(pins[name]) == pin_of(project, name), name
    assert pins["torch"].operator == "===", "torch==V also matches V+cu128 or V+cpu from another index"


def test_the_cuda_stage_loads_vllms_kernels_against_a_stub_driver():
    stage = cuda_stage()
    assert "-Wl,-soname,libcuda.so.1" in stage and 'LD_LIBRARY_PATH="$stub"' in stage
    assert re.search(r"python -c \"import torch, vllm\._C_stable_libtorch, vllm\._moe_C_stable_libtorch", stage)
    assert 'rm -r "$stub"' in stage


def test_flashinfers_sampler_is_off_without_its_prebuilt_kernels():
    """Without flashinfer-jit-cache, FlashInfer's sampler is compiled by nvcc at engine start; the image has none."""
    if "flashinfer-jit-cache" not in pinned():
        assert re.search(r"^\s+VLLM_USE_FLASHINFER_SAMPLER=0$", cuda_stage(), re.M)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    if (sys.platform, platform.machine(), sys.version_info[:2]) != ("linux", "x86_64", (3, 11)):
        # pip evaluates environment markers against the interpreter that runs it, not --platform/--python-version
        pytest.skip(f"resolving for the image needs CPython 3.11 on Linux x86-64 (here {sys.platform} "
                    f"{platform.machine()}, {sys.version.split()[0]})")
    assert image_python().startswith("3.11.")
    try:
        urllib.request.urlopen(f"{INDEX}/vllm/", timeout=10).close()
    except (urllib.error.URLError, OSError) as e:
        pytest.skip(f"PyPI is not reachable from here: {e}")
    return resolve(tmp_path_factory.mktemp("cuda-deps"))


@pytest.mark.slow
def test_the_cuda_set_resolves_for_the_image_as_one_cuda_build(report):
    found = problems(report, pinned(), project_requirements())
    assert found == [], "\n".join(found)
    versions = {name: meta["version"] for name, meta in resolved(report).items()}
    print("\n" + " ".join(f"{n}=={versions[n]}" for n in ("torch", "vllm", "flashinfer-python", "deepspeed", "triton")),
          f"CUDA majors: { {major: len(names) for major, names in cuda_majors(report).items()} }")


@pytest.mark.slow
def test_the_checks_catch_a_torch_of_another_build_a_second_cuda_and_a_stray_cubin(report):
    pins, project = pinned(), project_requirements()

    def broken(name: str, version: str, requires_dist: list[str] | None = None) -> list[str]:
        """problems() of the report with `name` at `version` (added when the set lacks it)."""
        bad = copy.deepcopy(report)
        item = next((i for i in bad["install"] if canonicalize_name(i["metadata"]["name"]) == name), None)
        if item is None:
            item = {"metadata": {"name": name}, "download_info": {"url": "https://files.pythonhosted.org/x"}}
            bad["install"].append(item)
        item["metadata"]["version"] = version
        if requires_dist is not None:
            item["metadata"]["requires_dist"] = requires_dist
        return problems(bad, pins, project)

    cu128 = broken("torch", "2.13.0+cu128", ["nvidia-cuda-runtime-cu12==12.8.90; platform_system == 'Linux'"])
    assert any("torch 2.13.0+cu128: vLLM 0.32.0 requires torch==2.13.0" in p for p in cu128)
    assert any("is a CUDA 12 build" in p for p in cu128)
    assert any("more than one CUDA major" in p and "nvidia-nccl-cu12" in p for p in broken("nvidia-nccl-cu12", "2.27.3"))
    assert any("flashinfer-cubin 0.6.13 beside" in p for p in broken("flashinfer-cubin", "0.6.13"))
    assert any("deepspeed 0.19.7" in p for p in broken("deepspeed", "0.19.7"))


def test_compose_and_kuberay_take_the_cuda_image_from_a_registry_variable():
    """Compose builds and tags `$PREMEM_REGISTRY/premem:cuda` (docker.io/library, the local premem:cuda, by default);
    the KubeRay manifests pull it once `envsubst '$PREMEM_REGISTRY'` has put the registry in."""
    import yaml

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    nodes = [s for s in compose["services"].values() if s.get("build", {}).get("target") == "cuda"]
    assert nodes and {s["image"] for s in nodes} == {"${PREMEM_REGISTRY:-docker.io/library}/premem:cuda"}
    for name in ("raycluster.yaml", "rayjob.yaml"):
        text = (DOCKER / "kuberay" / name).read_text()
        images = re.findall(r"^\s+image: (\S+)$", text, re.M)
        assert images and set(images) == {"${PREMEM_REGISTRY}/premem:cuda"}, name
        assert f"envsubst '$PREMEM_REGISTRY' < docker/kuberay/{name} | kubectl apply -f -" in text
