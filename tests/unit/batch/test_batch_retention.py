"""Pruning batch versions: batch.keep_versions never removes the published version or a served one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batch.config import BatchConfig
from batch.retention import pinned_versions, prune_versions
from serving.config import ServingConfig
from serving.engine.views import ServingStore
from tests.fixtures.serving import make_events, publish_batch


def _versions(config: BatchConfig) -> list[str]:
    return sorted(d.name for d in config.versions_dir.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pruning_keeps_the_newest_the_published_and_the_one_a_serving_process_reads(tmp_path: Path) -> None:
    history = make_events(20, vehicles=4)
    names = [f"20260101T0{h}0000Z-aaaa" for h in range(6)]
    for name in names:
        publish_batch(tmp_path, name, history)
    config = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "batch")
    # a running serving process loads (pins) the oldest version while the batch layer moves on
    publish_batch(tmp_path, names[0], history)
    store = ServingStore(ServingConfig(data_dir=tmp_path))
    try:
        store.refresh()
        assert store.version == names[0]
        assert pinned_versions(config.batch_dir) == {names[0]}
        publish_batch(tmp_path, names[2], history)  # the published version is an older one (a rollback)
        # a pin left by a serving process that is gone does not count
        (config.batch_dir / "pins" / "serving-1-1.json").write_text(
            json.dumps({"pid": _dead_pid(), "version": names[1]})
        )
        removed = prune_versions(config, keep=2)
        assert _versions(config) == [names[0], names[2], names[4], names[5]]
        assert sorted(removed) == [names[1], names[3]]
        assert not (config.batch_dir / "pins" / "serving-1-1.json").exists()
    finally:
        store.close()
    assert pinned_versions(config.batch_dir) == set()  # a stopped store leaves no pin
    assert prune_versions(config, keep=2) == [names[0]]
    assert _versions(config) == [names[2], names[4], names[5]]
    assert os.path.isdir(config.version_dir(names[2]))
