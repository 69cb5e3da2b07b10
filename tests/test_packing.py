"""`spar pack` / `spar unpack`: a run moves without its weights and continues elsewhere, its versions
retrained and published only when their weights match the packed run's bit for bit."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from test_iterations import write_config

from services.cli import main
from services.local import LocalExecutor
from services.runs import create_run, load_config_file
from services.status_cli import render_status, run_status
from shared.errors import ConfigError, RebuildMismatchError, RunConflictError
from shared.runtime.artifacts import RunPaths, read_json, write_json_atomic
from shared.runtime.packing import (
    PACK_RECORD,
    _keep,
    finished_when_packed,
    pack_run,
    unpack_run,
)
from shared.runtime.shards import load_config, run_finished
from shared.runtime.versions import read_metadata, rebuild_record, version_dir, weights_digest
from shared.stages import pipeline

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> RunPaths:
    """A tiny run of two iterations that trains both roles, run to its end."""
    root = tmp_path_factory.mktemp("packing")
    config = load_config_file(write_config(root, tiny_model_path, iterations=2))
    paths = create_run(config, root / "runs", "packed")
    LocalExecutor.for_run(paths).run()
    return paths


def _trained(paths: RunPaths) -> dict[str, str]:
    """'role vK' -> recorded weights digest, for every version with weights."""
    out = {}
    for role in ("actor", "refiner"):
        for k in (1, 2):
            meta = read_metadata(version_dir(paths, role, k))
            if meta is not None and meta.alias_of is None:
                out[f"{role} v{k}"] = meta.weights_sha256
    return out


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.glob(pattern) if p.is_file()}


def test_published_versions_record_the_digest_of_their_weights(finished: RunPaths) -> None:
    trained = _trained(finished)
    assert trained, "the tiny run trained nothing: the test would prove nothing"
    for label, digest in trained.items():
        role, k = label.split(" v")
        assert digest == weights_digest(version_dir(finished, role, int(k)))


def test_a_packed_run_continues_elsewhere_and_rebuilds_its_versions_bit_for_bit(
    finished: RunPaths, tmp_path: Path
) -> None:
    archive, left_out = pack_run(finished.root, tmp_path / "run.tar.gz")
    weights = sum(v.bytes_left_out for v in left_out)
    assert {v.label for v in left_out} == set(_trained(finished))
    assert archive.stat().st_size < weights / 10  # the point: megabytes, not the weights
    assert archive.stat().st_mode & 0o777 == 0o644  # meant to be copied and shared
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith((".safetensors", ".bin"))]
    assert not [n for n in names if "/checkpoints/" in n or "/." in n]  # no lock, temporaries
    assert f"{finished.run_id}/{PACK_RECORD}" in names

    target, versions = unpack_run(archive, tmp_path / "elsewhere")
    paths = RunPaths(target)
    assert target.name == finished.run_id and versions == left_out
    for v in versions:
        assert read_metadata(version_dir(paths, v.role, v.version)) is None
        assert read_json(rebuild_record(paths, v.role, v.version))["weights_sha256"] == v.weights_sha256
        assert not paths.shard_done(v.iteration, v.stage, 0).exists()  # trained again on --resume
    samples = _files(paths.root, "iter_*/sample/*.jsonl") | _files(paths.root, "iter_*/eval/*")
    assert samples and samples == _files(finished.root, "iter_*/sample/*.jsonl") | _files(
        finished.root, "iter_*/eval/*"
    )

    # the training stage to redo shows no step of the trainings logged before packing
    at = run_status(target).at
    assert at is not None and at.stage in ("train_actor", "train_refiner") and at.step is None
    pending = run_status(target).to_rebuild
    assert pending == sorted(v.label for v in versions) and "to rebuild (unpacked)" in "\n".join(
        render_status(run_status(target))
    )

    assert read_json(paths.root / PACK_RECORD)["finished"] and not run_finished(paths)
    assert finished_when_packed(paths.root)  # a queue of arms need not resume it
    assert run_status(target).finished_when_packed
    assert "finished when packed: every result is here" in "\n".join(render_status(run_status(target)))
    LocalExecutor.for_run(paths).run()
    assert _trained(paths) == _trained(finished)  # retrained, the same weights bit for bit
    assert run_finished(paths) and not finished_when_packed(paths.root)  # nothing left to rebuild
    assert run_status(target).to_rebuild == [] and run_status(target).finished
    assert (_files(paths.root, "iter_*/sample/*.jsonl") | _files(paths.root, "iter_*/eval/*")) == samples


def test_a_rebuilt_version_with_other_weights_is_refused_and_not_published(
    finished: RunPaths, tmp_path: Path
) -> None:
    archive, left_out = pack_run(finished.root, tmp_path / "run.tar.gz")
    target, _ = unpack_run(archive, tmp_path / "elsewhere")
    paths = RunPaths(target)
    first = left_out[0]
    write_json_atomic(rebuild_record(paths, first.role, first.version), {"weights_sha256": "0" * 64})
    with pytest.raises(RebuildMismatchError, match=f"{first.role} v{first.version} was retrained"):
        LocalExecutor.for_run(paths).run()
    assert read_metadata(version_dir(paths, first.role, first.version)) is None
    assert not paths.shard_done(first.iteration, first.stage, 0).exists()


def test_unpack_refuses_a_run_that_exists_and_archives_it_did_not_write(
    finished: RunPaths, tmp_path: Path
) -> None:
    archive, _ = pack_run(finished.root, tmp_path / "run.tar.gz")
    with pytest.raises(RunConflictError, match="exists already"):
        unpack_run(archive, finished.root.parent)

    def tar_with(*members: tuple[str, bytes]) -> Path:
        path = tmp_path / f"bad{len(list(tmp_path.glob('bad*')))}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    with pytest.raises(ConfigError, match="not a plain file inside the run folder"):
        unpack_run(tar_with(("r/pack.json", b"{}"), ("r/../../evil", b"x")), tmp_path / "x")
    with pytest.raises(ConfigError, match="one run folder"):
        unpack_run(tar_with(("a/pack.json", b"{}"), ("b/config.json", b"{}")), tmp_path / "x")
    with pytest.raises(ConfigError, match="no pack.json"):
        unpack_run(
            tar_with(
                ("r/config.json", b"{}"),
            ),
            tmp_path / "x",
        )
    (tmp_path / "plain.tar.gz").write_text("not gzip")
    with pytest.raises(ConfigError, match="not a gzip tar"):
        unpack_run(tmp_path / "plain.tar.gz", tmp_path / "x")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_the_pack_takes_only_records_complete_when_it_began() -> None:
    done = Path("iter_1/sample/shard_00000.done.json")
    assert _keep(done, {done}, set()) and not _keep(done, set(), set())
    assert _keep(Path("iter_1/sample/shard_00000.jsonl"), set(), set())  # redone after unpacking anyway
    left = {Path("models/actor/v1")}
    assert _keep(Path("models/actor/v1/spar_version.json"), set(), left)
    assert not _keep(Path("models/actor/v1/model.safetensors"), set(), left)
    assert not _keep(Path("models/actor/v1/tokenizer.json"), set(), left)  # rebuilt with the weights
    assert _keep(Path("models/actor/v2/spar_version.json"), set(), left)  # an alias: kept whole
    assert not _keep(Path("models/actor/v1-merged/model.safetensors"), set(), left)
    assert not _keep(Path("checkpoints/actor-v2/checkpoint-4/optimizer.pt"), set(), left)
    assert not _keep(Path(".owner.json"), set(), left) and not _keep(Path("iter_0/.x.tmp"), set(), left)


def test_the_cli_packs_and_unpacks(finished: RunPaths, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.tar.gz"
    assert main(["pack", str(finished.root), "--out", str(out)]) == 0
    printed = capsys.readouterr().err
    assert "weights left out" in printed and "actor v1" in printed
    assert main(["unpack", str(out), "--runs-dir", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().err
    assert f"spar run --resume {tmp_path / 'runs' / finished.run_id}" in printed
    assert main(["unpack", str(out), "--runs-dir", str(tmp_path / "runs")]) == 2  # exists: refused
    assert "exists already" in capsys.readouterr().err
    record = json.loads((tmp_path / "runs" / finished.run_id / PACK_RECORD).read_text())
    assert record["run_id"] == finished.run_id and record["versions"]


def test_a_packed_fork_rebuilds_its_own_and_its_reused_versions(finished: RunPaths, tmp_path: Path) -> None:
    """A tuning point is a fork: stages and versions it reused are hard links to its source's. Packed
    and unpacked elsewhere without the source, it retrains every version, the reused ones too."""
    config = finished.root.parent.parent / "config.yaml"
    runs = tmp_path / "runs"
    argv = ["run", str(config), "--fork", str(finished.root), "--runs-dir", str(runs), "--run-id", "point"]
    assert main([*argv, "--no-progress", "--set", "train_actor.learning_rate=3.0e-4"]) == 0
    fork = RunPaths(runs / "point")
    before = _trained(finished)
    trained = _trained(fork)
    assert trained["refiner v1"] == _trained(finished)["refiner v1"]  # reused from the source
    assert trained["actor v1"] != _trained(finished)["actor v1"]  # its own learning rate

    archive, left_out = pack_run(fork.root, tmp_path / "point.tar.gz")
    assert {v.label for v in left_out} == set(trained)
    target, _ = unpack_run(archive, tmp_path / "elsewhere")
    LocalExecutor.for_run(RunPaths(target)).run()
    assert _trained(RunPaths(target)) == trained
    assert not finished_when_packed(finished.root)  # never packed: no record
    assert _trained(finished) == before and all(  # the source's weights untouched
        weights_digest(version_dir(finished, *label.split(" v"))) == digest  # type: ignore[arg-type]
        for label, digest in before.items()
    )


def test_a_run_packed_before_its_end_is_resumed_not_skipped(finished: RunPaths, tmp_path: Path) -> None:
    copy = RunPaths(tmp_path / "runs" / finished.run_id)
    shutil.copytree(finished.root, copy.root)
    config = load_config(copy)
    last = list(pipeline(config.stages, config.iterations, with_init=config.init is not None))[-1]
    copy.manifest(*last).unlink()  # its last stage not done yet
    archive, _ = pack_run(copy.root, tmp_path / "open.tar.gz")
    target, _ = unpack_run(archive, tmp_path / "elsewhere")
    assert read_json(target / PACK_RECORD)["finished"] is False
    assert not finished_when_packed(target)
