"""Regenerate kuberay_crds.json: the KubeRay CRDs' v1 schemas, cut down to what docker/kuberay/ uses.

    python -m tests.deploy.prune_kuberay_crds /path/to/kuberay-checkout

The CRDs are 2 MB of OpenAPI; the tests need only the paths the manifests under docker/ touch. Along those paths every
object keeps the names of all its properties (so a field KubeRay does not know is caught), its types, enums,
`required` lists and Kubernetes' extensions; descriptions are dropped and untouched subtrees become {}. Rerun
it after changing a manifest (a field missing here fails the test as unknown) or moving to a newer KubeRay.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CRDS = {"RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
        "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"}
MANIFESTS = {"RayCluster": "docker/kuberay/raycluster.yaml", "RayJob": "docker/kuberay/rayjob.yaml"}
KEEP = ("type", "required", "enum", "format", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type", "x-kubernetes-map-type", "nullable", "minimum", "maximum", "pattern")


def prune(schema: dict, values: list) -> dict:
    """`schema` reduced to what the manifest `values` found at this path need."""
    out = {k: schema[k] for k in KEEP if k in schema}
    if "anyOf" in schema:
        out["anyOf"] = [prune(option, []) for option in schema["anyOf"]]
    objects = [v for v in values if isinstance(v, dict)]
    if "properties" in schema:
        out["properties"] = {name: prune(sub, [o[name] for o in objects if name in o]) if any(name in o for o in objects)
                             else {} for name, sub in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = prune(schema["additionalProperties"], [x for o in objects for x in o.values()])
    elif "additionalProperties" in schema:
        out["additionalProperties"] = schema["additionalProperties"]
    if "items" in schema:
        out["items"] = prune(schema["items"], [x for v in values if isinstance(v, list) for x in v])
    return out


def main(checkout: str) -> None:
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"kuberay_commit": commit or "unknown", "schemas": {}}
    for kind, path in CRDS.items():
        crd = yaml.safe_load((Path(checkout) / path).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        manifest = yaml.safe_load((REPO / MANIFESTS[kind]).read_text())
        result["schemas"][kind] = prune(version["schema"]["openAPIV3Schema"], [manifest])
    (HERE / "kuberay_crds.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
