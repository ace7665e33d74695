"""The dashboard JSON type-checks against Grafana's published dashboard schema.

``@grafana/schema`` (npm, Grafana's generated TypeScript types of the dashboard JSON model) and
``typescript`` are installed by .ci/run from tests/kubernetes/dashboard_schema/package.json into
build/dashboard-schema. The test writes the dashboard as a TypeScript object literal that must
``satisfies`` the schema's ``Dashboard``, so ``tsc --strict`` rejects unknown keys (excess
property checks), wrong types and values outside the schema's enums. Two adaptations, both in
the generated file: the schema's TypeScript enums are compared as the strings JSON holds, and
query variables may carry ``definition``, which Grafana's own exporter writes and the schema
does not list.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes.chart import DASHBOARD, ROOT

PACKAGE = Path(__file__).with_name("dashboard_schema")
INSTALLED = ROOT / "build" / "dashboard-schema"
TSC = INSTALLED / "node_modules" / ".bin" / "tsc"
PRELUDE = """import type { Dashboard, VariableModel } from '@grafana/schema';

// The schema's enums as the strings a JSON file holds.
type Json<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;
// Grafana's own exporter writes "definition" on query variables; the schema does not list it.
type Variable = Json<VariableModel> & { definition?: string };
type DashboardJson = Omit<Json<Dashboard>, 'templating'> & { templating: { list: Variable[] } };

export const dashboard = """
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "module": "esnext",
        "moduleResolution": "bundler",
        "target": "es2022",
        "skipLibCheck": True,
        "types": [],
    },
}
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not TSC.exists(),
    reason=f"node, or {TSC.relative_to(ROOT)}: .ci/run installs them with "
    f"npm ci --prefix build/dashboard-schema",
)


def typecheck(dashboard: dict[str, Any], name: str) -> subprocess.CompletedProcess[str]:
    source = INSTALLED / f"{name}.ts"
    source.write_text(PRELUDE + json.dumps(dashboard, indent=2) + " satisfies DashboardJson;\n")
    config = INSTALLED / f"tsconfig.{name}.json"
    config.write_text(json.dumps({**TSCONFIG, "files": [source.name]}))
    return subprocess.run(
        [TSC, "-p", config], capture_output=True, text=True, timeout=120, cwd=INSTALLED
    )


def test_the_installed_schema_is_the_pinned_one() -> None:
    pinned = json.loads((PACKAGE / "package.json").read_text())["devDependencies"]
    for name, version in pinned.items():
        installed = json.loads((INSTALLED / "node_modules" / name / "package.json").read_text())
        assert installed["version"] == version, name


def test_dashboard_satisfies_grafanas_dashboard_schema() -> None:
    result = typecheck(json.loads(DASHBOARD.read_text()), "dashboard")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_catches_an_unknown_key_and_a_wrong_enum() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["gridPos"]["width"] = 6
    dashboard["panels"][1]["fieldConfig"]["defaults"]["color"]["mode"] = "rainbow"
    result = typecheck(dashboard, "broken")
    assert result.returncode != 0
    assert "'\"width\"' does not exist" in result.stdout and '"rainbow"' in result.stdout
