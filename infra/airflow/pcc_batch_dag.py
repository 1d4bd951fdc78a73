"""Apache Airflow DAG for teams that schedule with Airflow instead of ``pcc batch schedule``.

Copy this file into the Airflow ``dags/`` folder of a worker where ``pcc`` is
installed with the ``spark`` extra.  One task runs ``pcc batch run`` (which is
idempotent: a run over an unchanged master dataset does nothing), and a second
prints ``pcc batch status``.  A failed audit makes ``pcc`` exit non-zero, so the
task fails and the previous version stays published.  Settings come from the
worker's environment (``PCC__DATA_DIR``, ``PCC__BATCH__MASTER`` ...) or the
``PCC_CONFIG`` TOML file, as for any ``pcc`` command.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

PCC = os.environ.get("PCC_BIN", "pcc")
SCHEDULE = os.environ.get("PCC_BATCH_CRON", "0 * * * *")

with DAG(
    dag_id="pcc_batch",
    description="Rebuild, audit and publish the PCC batch views from the master dataset",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["pcc", "batch"],
) as dag:
    run = BashOperator(
        task_id="batch_run", bash_command=f"{PCC} batch run", execution_timeout=timedelta(hours=2)
    )
    status = BashOperator(task_id="batch_status", bash_command=f"{PCC} batch status")
    run >> status
