"""The Airflow DAG in infra/airflow: valid Python always; a parsed DAG when Airflow is installed."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

DAG_FILE = Path(__file__).resolve().parents[3] / "infra" / "airflow" / "pcc_batch_dag.py"


def test_dag_file_runs_pcc_batch_run_then_status() -> None:
    tree = ast.parse(DAG_FILE.read_text(encoding="utf-8"))
    commands = [
        kw.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BashOperator"
        for kw in node.keywords
        if kw.arg == "bash_command"
    ]
    texts = [ast.unparse(c) for c in commands]
    assert any("batch run" in t for t in texts) and any("batch status" in t for t in texts)


AIRFLOW_PYTHON = Path(__file__).resolve().parents[3] / ".venv-airflow" / "bin" / "python"
PARSE = """
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("pcc_batch")
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "tasks": [t.task_id for t in dag.topological_sort()] if dag else None,
                  "schedule": str(dag.schedule) if dag else None}))
"""


def test_airflow_parses_the_dag(tmp_path: Path) -> None:
    """Airflow itself (in its own virtualenv: its pins clash with the platform's) loads the DAG."""
    assert AIRFLOW_PYTHON.exists(), f"{AIRFLOW_PYTHON} is missing: run `make airflow` (make test does)"
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", PARSE, str(DAG_FILE)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["tasks"] == ["batch_run", "batch_status"]
    assert result["schedule"] == "0 * * * *"
