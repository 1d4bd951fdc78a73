"""Reading the master dataset: scan the files, quarantine bad ones, load the rest into Spark.

Every ``event_date=YYYY-MM-DD/*.parquet`` file is checked from its footer
before Spark sees it: a file that cannot be opened (corrupt, truncated) or
whose columns differ from ``MASTER_SCHEMA`` (schema drift) is quarantined with
its name and the reason, and the run continues over the others.  The footers
also give the row count the audit reconciles the views with, independently of
Spark.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import MasterDatasetError
from pipelines.dataset import MASTER_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_PARTITION = re.compile(r"^event_date=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Quarantined:
    file: str
    reason: str


@dataclass
class MasterScan:
    """The usable files of a master dataset, what was set aside, and a fingerprint of the input."""

    root: Path
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    fingerprint: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "files": len(self.files),
            "rows": self.rows,
            "quarantined": [q.__dict__ for q in self.quarantined],
            "fingerprint": self.fingerprint,
        }


def _type_problems(schema: pa.Schema) -> list[str]:
    problems = []
    for expected in MASTER_SCHEMA:
        if expected.name == "event_date" and expected.name not in schema.names:
            continue  # the partition column may live only in the directory name
        if expected.name not in schema.names:
            problems.append(f"missing column {expected.name}")
            continue
        actual = schema.field(expected.name).type
        if not actual.equals(expected.type):
            problems.append(f"column {expected.name} is {actual}, expected {expected.type}")
    extra = sorted(set(schema.names) - set(MASTER_SCHEMA.names))
    if extra:
        problems.append("unexpected columns " + ", ".join(extra))
    return problems


def scan_master(root: Path, since_date: str | None = None) -> MasterScan:
    """List and check the master dataset's files (footers only, no data read)."""
    if not root.is_dir():
        raise MasterDatasetError(f"master dataset {root} does not exist (is batch.master_dataset right?)")
    scan = MasterScan(root=root)
    digest = hashlib.sha256()
    for part in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _PARTITION.match(part.name)
        if not match:
            continue
        if since_date and match.group(1) < since_date:
            continue
        for file in sorted(part.glob("*.parquet")):
            if file.name.startswith((".", "_")):
                continue  # a file being written (temporary name) or a marker
            rel = str(file.relative_to(root))
            try:
                meta = pq.read_metadata(file)
                schema = meta.schema.to_arrow_schema()
            except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for unreadable files
                scan.quarantined.append(Quarantined(rel, f"unreadable Parquet: {exc}"))
                continue
            problems = _type_problems(schema)
            if problems:
                scan.quarantined.append(Quarantined(rel, "schema drift: " + "; ".join(problems)))
                continue
            stat = file.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{meta.num_rows}\n".encode())
            scan.files.append(file)
            scan.rows += meta.num_rows
    if not scan.files and not scan.quarantined:
        raise MasterDatasetError(f"master dataset {root} has no event_date=YYYY-MM-DD/*.parquet files")
    scan.fingerprint = digest.hexdigest()
    return scan


def spark_master_schema() -> Any:
    """``MASTER_SCHEMA`` as a Spark StructType (the partition column last, as Spark reads it)."""
    from pyspark.sql.types import StructType

    from pipelines.dataset import MASTER_SCHEMA as schema

    ddl = {
        pa.string(): "string",
        pa.int16(): "smallint",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float64(): "double",
        pa.timestamp("ms", tz="UTC"): "timestamp",
        pa.list_(pa.string()): "array<string>",
    }
    cols = [f"`{f.name}` {ddl[f.type]}" + ("" if f.nullable else " NOT NULL") for f in schema]
    return StructType.fromDDL(", ".join(cols))


def read_master(spark: SparkSession, scan: MasterScan) -> DataFrame:
    """The accepted files as one DataFrame with exactly the ``MASTER_SCHEMA`` columns."""
    from pyspark.sql import functions as F

    if not scan.files:
        raise MasterDatasetError(f"master dataset {scan.root} has no readable file (all quarantined)")
    schema = spark_master_schema()
    data_schema = schema.__class__([f for f in schema.fields if f.name != "event_date"])
    df = (
        spark.read.schema(data_schema)
        .option("basePath", str(scan.root))
        .parquet(*[str(f) for f in scan.files])
    )
    # event_date always comes from the directory (the partition), whatever the file holds
    return df.select(*[F.col(n) for n in MASTER_SCHEMA.names])
