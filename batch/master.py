"""Reading the master dataset: scan the files, quarantine bad ones, load the rest into Spark.

Every ``bucket=NNN/*.parquet`` file (or ``event_date=YYYY-MM-DD/*.parquet`` in a
master dataset not yet migrated, :mod:`pipelines.dataset`) is checked from its footer
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
from pipelines.dataset import MASTER_SCHEMA, bucket_of, read_layout

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_PARTITION = re.compile(r"^event_date=(\d{4}-\d{2}-\d{2})$")
_BUCKET = re.compile(r"^bucket=(\d+)$")
#: A bucket's compaction journal (batch/layout.py): ``{new, old}``.
JOURNAL = "_compaction.json"


def superseded(bucket: Path) -> set[str]:
    """Names of files a finished compaction replaced but did not delete yet (readers skip them)."""
    import json

    journal = bucket / JOURNAL
    if not journal.exists():
        return set()
    doc = json.loads(journal.read_text(encoding="utf-8"))
    return set(doc["old"]) if (bucket / doc["new"]).exists() else set()


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
    #: the bucket count (``None``: the older date layout) and, per bucket, its files and their fingerprint
    buckets: int | None = None
    bucket_files: dict[int, list[Path]] = field(default_factory=dict)
    bucket_fingerprints: dict[int, str] = field(default_factory=dict)
    #: files holding rows of another bucket than their directory's (the audit fails naming them)
    misplaced: list[Quarantined] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "files": len(self.files),
            "rows": self.rows,
            "quarantined": [q.__dict__ for q in self.quarantined],
            "fingerprint": self.fingerprint,
            "buckets": self.buckets,
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


def _check_file(scan: MasterScan, root: Path, file: Path) -> pq.FileMetaData | None:
    """The file's footer if it is usable; otherwise it is quarantined with the reason."""
    rel = str(file.relative_to(root))
    try:
        meta = pq.read_metadata(file)
        schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for unreadable files
        scan.quarantined.append(Quarantined(rel, f"unreadable Parquet: {exc}"))
        return None
    problems = _type_problems(schema)
    if scan.buckets is not None and "event_date" not in schema.names:
        problems.append("missing column event_date")
    if problems:
        scan.quarantined.append(Quarantined(rel, "schema drift: " + "; ".join(problems)))
        return None
    return meta


def _vehicle_range(file: Path, meta: pq.FileMetaData) -> tuple[str, str] | None:
    """Smallest and largest vehicle of a file, from the footer's statistics (else the column)."""
    col = meta.schema.to_arrow_schema().get_field_index("vehicle")
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            values = pq.read_table(file, columns=["vehicle"])["vehicle"]
            if len(values) == 0:
                return None
            import pyarrow.compute as pc

            mm = pc.min_max(values).as_py()
            return str(mm["min"]), str(mm["max"])
        lows.append(stats.min)
        highs.append(stats.max)
    if not lows:
        return None
    return min(lows), max(highs)


def misplaced_rows(file: Path, bucket: int, buckets: int, meta: pq.FileMetaData | None = None) -> str | None:
    """Why ``file`` does not belong in ``bucket`` (its vehicles fall in another bucket), or ``None``.

    Buckets are ranges of the pseudonym's leading hex digits and hex sorts as
    text, so a file whose smallest and largest vehicle are in the bucket holds
    only vehicles of the bucket.
    """
    meta = meta or pq.read_metadata(file)
    span = _vehicle_range(file, meta)
    if span is None:
        return None
    low, high = (bucket_of(v, buckets) for v in span)
    if low == high == bucket:
        return None
    other = low if low != bucket else high
    return (
        f"holds rows of bucket {other} (vehicle {span[0] if low != bucket else span[1]}) in bucket {bucket}"
    )


def scan_master(root: Path, since_date: str | None = None) -> MasterScan:
    """List and check the master dataset's files (footers only, no data read)."""
    if not root.is_dir():
        raise MasterDatasetError(f"master dataset {root} does not exist (is batch.master_dataset right?)")
    scan = MasterScan(root=root, buckets=read_layout(root))
    digest = hashlib.sha256()
    pattern = _BUCKET if scan.buckets is not None else _PARTITION
    for part in sorted(p for p in root.iterdir() if p.is_dir()):
        match = pattern.match(part.name)
        if not match:
            continue
        if scan.buckets is None and since_date and match.group(1) < since_date:
            continue
        bucket = int(match.group(1)) if scan.buckets is not None else -1
        bucket_digest = hashlib.sha256()
        skip = superseded(part) if scan.buckets is not None else set()
        for file in sorted(part.glob("*.parquet")):
            if file.name.startswith((".", "_")) or file.name in skip:
                continue  # a file being written (temporary name), a marker, or replaced by a compaction
            meta = _check_file(scan, root, file)
            if meta is None:
                continue
            rel = str(file.relative_to(root))
            if scan.buckets is not None:
                if bucket >= scan.buckets:
                    scan.misplaced.append(
                        Quarantined(rel, f"bucket {bucket} beyond the layout's {scan.buckets}")
                    )
                elif (why := misplaced_rows(file, bucket, scan.buckets, meta)) is not None:
                    scan.misplaced.append(Quarantined(rel, why))
                scan.bucket_files.setdefault(bucket, []).append(file)
            stat = file.stat()
            line = f"{rel}\0{stat.st_size}\0{meta.num_rows}\n".encode()
            digest.update(line)
            bucket_digest.update(line)
            scan.files.append(file)
            scan.rows += meta.num_rows
        if bucket in scan.bucket_files:
            scan.bucket_fingerprints[bucket] = bucket_digest.hexdigest()
    if not scan.files and not scan.quarantined:
        layout = "bucket=NNN" if scan.buckets is not None else "event_date=YYYY-MM-DD"
        raise MasterDatasetError(f"master dataset {root} has no {layout}/*.parquet files")
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
    if scan.buckets is not None:  # event_date is a column of the files
        return spark.read.schema(schema).parquet(*[str(f) for f in scan.files]).select(*MASTER_SCHEMA.names)
    data_schema = schema.__class__([f for f in schema.fields if f.name != "event_date"])
    df = (
        spark.read.schema(data_schema)
        .option("basePath", str(scan.root))
        .parquet(*[str(f) for f in scan.files])
    )
    # event_date always comes from the directory (the partition), whatever the file holds
    return df.select(*[F.col(n) for n in MASTER_SCHEMA.names])
