"""The batch manifest every layer reads: one typed model, written by the batch layer, read by all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batch.config import BatchConfig
from batch.publish import manifest, publish, read_current, store_manifest
from pipelines import layout
from pipelines.errors import PccValueError
from serving.engine.views import BatchManifest as ServedVersion
from serving.errors import ViewNotFoundError

WATERMARK = {
    "processed_time": "2026-11-30T10:00:00.000Z",
    "event_time": "2026-11-30T09:59:00.000Z",
    "events": 7,
}


def published(tmp_path: Path) -> BatchConfig:
    config = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "batch")
    doc = manifest("v1", WATERMARK, {"fleet_profile": [1.1] * 12, "rows": {"fraud_scores": 3}})
    for path in doc.view_dirs(config.batch_dir).values():
        path.mkdir(parents=True)
    store_manifest(config, doc)
    publish(config, doc)
    return config


def test_what_the_batch_layer_publishes_the_serving_layer_reads(tmp_path: Path) -> None:
    config = published(tmp_path)
    served = ServedVersion.read(config.batch_dir)
    assert served is not None and served.version == "v1"
    assert served.watermark == WATERMARK["processed_time"]
    assert served.views["fraud_scores"] == config.version_dir("v1") / "fraud_scores"
    assert served.doc == read_current(config)
    assert layout.BatchManifest.load(config.version_dir("v1") / layout.VERSION_MANIFEST) == served.doc


def test_members_a_newer_writer_added_are_kept(tmp_path: Path) -> None:
    config = published(tmp_path)
    doc = json.loads(config.current_file.read_text())
    doc["lineage"] = {"by": "a newer batch layer"}
    config.current_file.write_text(json.dumps(doc))
    current = read_current(config)
    assert current is not None
    current.write(config.current_file)
    assert json.loads(config.current_file.read_text())["lineage"] == {"by": "a newer batch layer"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.pop("version"), "version"),
        (lambda d: d["watermark"].update(events="seven"), "watermark.events"),
        (lambda d: d.update(fleet_profile="flat"), "fleet_profile"),
        (lambda d: d["views"].update(fraud_scores="/etc"), "views"),  # serving would read Parquet from there
        (lambda d: d["views"].update(fraud_scores=f"versions/{os.pardir}/{os.pardir}/home"), "views"),
    ],
)
def test_a_damaged_manifest_names_the_file_and_the_member(tmp_path: Path, change, named: str) -> None:
    config = published(tmp_path)
    doc = json.loads(config.current_file.read_text())
    change(doc)
    config.current_file.write_text(json.dumps(doc))
    with pytest.raises(PccValueError, match=named) as refused:
        read_current(config)
    assert str(config.current_file) in str(refused.value)
    with pytest.raises(ViewNotFoundError, match=named):  # the serving layer says the version cannot be read
        ServedVersion.read(config.batch_dir)


def test_a_torn_write_is_not_json_and_says_so(tmp_path: Path) -> None:
    config = published(tmp_path)
    config.current_file.write_text('{"version": "v1", "publi')
    with pytest.raises(PccValueError, match=r"CURRENT\.json"):
        read_current(config)


def test_every_layer_finds_the_same_directories(tmp_path: Path) -> None:
    from pipelines.settings import Settings
    from serving.config import ServingConfig
    from speed.config import SpeedConfig

    settings = Settings(data_dir=tmp_path)
    speed, serving, batch = (
        SpeedConfig.from_settings(settings),
        ServingConfig.from_settings(settings),
        BatchConfig.from_settings(settings),
    )
    assert speed.master_dir == serving.master_dir == batch.master_dataset == tmp_path / "master"
    assert speed.realtime_dir == serving.realtime_dir == tmp_path / "realtime"
    assert serving.batch_dir == batch.batch_dir and batch.current_file == tmp_path / "batch" / "CURRENT.json"
