"""Spark starts quietly: no hostname/loopback or native-library warnings, Spark's own warnings kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

START = """
from batch.session import get_spark
spark = get_spark("local[1]", "512m", 1)
assert spark.range(3).count() == 3
spark.sparkContext._jvm.org.apache.logging.log4j.LogManager.getLogger("pcc.check").error("a real error")
spark.stop()
"""

def test_a_batch_session_starts_without_warnings_a_user_cannot_act_on(tmp_path: Path) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", START], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "WARN" in line or "log4j profile" in line], out.stderr
    assert any("ERROR check: a real error" in line for line in lines), out.stderr
