"""The Terraform configuration as tfparse sees it, for static tests (no provider plugin needed).

tfparse (the HCL evaluator of Aqua's defsec, via cffi) expands for_each/count and resolves
variables, locals, file()/jsondecode() and most references; attributes only known after apply
(ids, emails, project numbers) come back as placeholders: a referenced block's `id` UUID, or
{"__attribute__": "local.x", ...}. python-hcl2 is deliberately not used (it clashes with
checkov's fork of the same module).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
FULL_VARS = Path(__file__).with_name("full.tfvars")


@dataclass
class Config:
    raw: dict[str, list[dict[str, Any]]]
    vars: dict[str, Any]

    def blocks(self, kind: str, *, data: bool = False) -> list[dict[str, Any]]:
        """Resource blocks of one type (data source blocks with data=True)."""
        want = "data" if data else "resource"
        return [
            b
            for b in self.raw.get(kind, [])
            if b["__tfmeta"].get("type", "resource") == want
            or kind in ("locals", "output", "variable")
        ]

    def by_path(self, kind: str) -> dict[str, dict[str, Any]]:
        """`{'google_pubsub_topic.tier["t2gi"]': block, ...}` for one resource type."""
        return {b["__tfmeta"]["path"]: b for b in self.raw.get(kind, [])}

    def one(self, path: str) -> dict[str, Any]:
        kind = path.split(".")[0]
        if kind == "data":
            kind = path.split(".")[1]
        found = self.by_path(kind)
        assert path in found, f"{path} not in the configuration; have {sorted(found)}"
        return found[path]

    def instances(self, kind: str, name: str) -> dict[str, dict[str, Any]]:
        """for_each key (or count index) -> block for resource `kind.name`."""
        out = {}
        prefix = f"{kind}.{name}"
        for path, b in self.by_path(kind).items():
            if path == prefix:
                out[""] = b
            elif path.startswith(prefix + "["):
                key = path[len(prefix) + 1 : -1]
                out[json.loads(key) if key.startswith('"') else int(key)] = b
        return out

    def local(self, name: str) -> Any:
        for b in self.blocks("locals"):
            if name in b:
                return b[name]
        raise KeyError(f"no local {name!r}")

    def output(self, name: str) -> dict[str, Any]:
        for b in self.blocks("output"):
            if b["__tfmeta"]["path"] == f"output.{name}":
                return b
        raise KeyError(f"no output {name!r}")

    def variable(self, name: str) -> dict[str, Any]:
        for b in self.blocks("variable"):
            if b["__tfmeta"]["path"] == f"variable.{name}":
                return b
        raise KeyError(f"no variable {name!r}")


def parse_vars(text: str) -> dict[str, Any]:
    """The simple `name = value` tfvars used here (strings, lists, maps of numbers)."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if value.startswith("{"):
            inner = value.strip("{} ")
            out[key] = {
                k.strip(): json.loads(v) for k, v in (p.split("=") for p in inner.split(",") if p)
            }
        else:
            out[key] = json.loads(value)
    return out


def load(
    tfvars: str | None = None, *, fleet: dict[str, Any] | None = None, tf_dir: Path = TERRAFORM
) -> Config:
    """Parse terraform/ with `tfvars` (text; default full.tfvars) and, when `fleet` is given, a
    replacement fleet.json (the configuration is copied beside a patched schemas/json)."""
    import tfparse  # a dev dependency: missing it is an error, not a skip

    text = FULL_VARS.read_text() if tfvars is None else tfvars
    with tempfile.TemporaryDirectory(prefix="tfparse-") as tmp:
        if fleet is not None:
            root = Path(tmp) / "repo"
            shutil.copytree(tf_dir, root / "terraform", ignore=shutil.ignore_patterns(".terraform"))
            (root / "schemas" / "json").mkdir(parents=True)
            (root / "schemas" / "json" / "fleet.json").write_text(json.dumps(fleet))
            tf_dir = root / "terraform"
        vars_file = Path(tmp) / "test.tfvars"
        vars_file.write_text(text)
        # tfparse resolves vars files relative to the module directory.
        raw = tfparse.load_from_path(
            str(tf_dir), vars_paths=[os.path.relpath(vars_file, tf_dir)], stop_on_hcl_error=True
        )
    return Config(raw, parse_vars(text))
