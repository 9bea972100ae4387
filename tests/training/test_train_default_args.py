"""``recipes/train_default.py``: stage presets and the checks on flags that depend on each other."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests._modules import load_recipe


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stage", "objects"], "needs --init"),
        (["--paste", "5"], "--paste needs --coco-train"),
        (["--coco-train", "--paste", "0", "--paste-salient", "3"], "--paste-salient needs --paste"),
        (["--feedback-oracle-prob", "1.5"], "must be in [0, 1]"),
    ],
)
def test_inconsistent_flags_exit_with_a_message(argv, message, monkeypatch, capsys) -> None:
    recipe = load_recipe("train_default")
    monkeypatch.setattr(sys, "argv", ["train_default.py", *argv])
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_salient_stage_extends_the_shipped_stage() -> None:
    presets = load_recipe("train_default").STAGE_DEFAULTS
    salient, clicks = presets["salient"], presets["clicks"]
    assert salient["paste_salient"] > 0 and 0 < salient["feedback_oracle_prob"] <= 1
    # Everything else is stage 4's session and data, at a lower learning rate.
    changed = {"lr", "time_budget_min", "paste_salient", "feedback_oracle_prob"}
    assert {k: v for k, v in salient.items() if k not in changed} == {
        k: v for k, v in clicks.items() if k not in changed
    }
    assert salient["lr"] < clicks["lr"]


def test_a_work_dir_resumes_only_its_own_settings(tmp_path) -> None:
    """Trainer.resume restores any last.pt of the architecture, and a finished one is not
    trained again: a rerun of a recipe into the same work folder with another --lr or other
    start weights reported (and exported) the earlier run's weights as its own."""
    from tests._modules import REPO, load_file

    cli = load_file(REPO / "recipes" / "_cli.py", "_cli")
    work = tmp_path / "w"
    settings = {"lr": 1e-3, "init_sha256": "a"}
    cli.check_same_run(work, settings)  # nothing there yet: recorded
    (work / "last.pt").write_bytes(b"x")
    cli.check_same_run(work, dict(settings))  # the same: resumes
    with pytest.raises(ValueError, match=r"other settings \(init_sha256, lr\)"):
        cli.check_same_run(work, {"lr": 5e-3, "init_sha256": "b"})
    (work / "last.pt").unlink()  # no training to resume: any settings start afresh
    cli.check_same_run(work, {"lr": 5e-3})
    assert cli.file_digest(None) is None and cli.file_digest(work / "missing") is None


def test_train_default_records_what_a_resume_must_share(tmp_path, monkeypatch, capsys) -> None:
    recipe = load_recipe("train_default")
    seen = {}

    def fake_train(args, model, per_id):
        seen["settings"] = json.loads((args.work_dir / "run_settings.json").read_text())
        raise SystemExit(0)

    monkeypatch.setattr(recipe, "build_cache", lambda args, model: {"bsds": []})
    monkeypatch.setattr(recipe, "train", fake_train)
    argv = ["train_default.py", "--work-dir", str(tmp_path / "w"), "--variants", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--steps", "7"])
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 0  # fake_train's
    settings = seen["settings"]
    assert settings["lr"] == 1e-3 and settings["variants"] == 1 and "steps" not in settings
    (tmp_path / "w" / "last.pt").write_bytes(b"x")
    monkeypatch.setattr(sys, "argv", [*argv, "--steps", "9"])  # a longer run: resumes
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*argv, "--lr", "5e-3"])
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 2
    assert "started with other settings (lr)" in capsys.readouterr().err


def test_data_engine_names_its_feature_cache_by_the_masks_not_the_file(tmp_path) -> None:
    """annotate_folder rewrites info.date_created each run; the feature cache of the automatic
    masks was named by the file's bytes, so every rerun built (and left) a new one."""
    engine = load_recipe("data_engine")
    doc = {"info": {"date_created": "2026-11-24 10:00"}, "images": [{"id": 1}],
           "annotations": [{"id": 1, "image_id": 1, "segmentation": {"size": [2, 2], "counts": "04"}}]}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc))
    b.write_text(json.dumps({**doc, "info": {"date_created": "2026-11-25 09:00"}}))
    c.write_text(json.dumps({**doc, "annotations": []}))
    digest = engine.annotations_digest(a)
    assert engine.annotations_digest(b) == digest != engine.annotations_digest(c)


def _stub_data_engine(engine, tmp_path, monkeypatch, improved: bool = False) -> dict:
    """``recipes/data_engine.py`` with every stage around its bookkeeping stubbed: the
    automatic stage returns an empty json, the caches record their names and item sources,
    fine-tuning is done at once and the evaluation returns fixed numbers (the engine run's
    higher than the others' when ``improved``)."""
    from types import SimpleNamespace

    import torch

    weights = tmp_path / "start.pt"
    weights.write_bytes(b"weights")
    auto = tmp_path / "auto.json"
    auto.write_text(json.dumps({"images": [], "annotations": []}))
    seen: dict = {"weights": weights, "auto": auto, "hashed": [], "caches": [], "sources": [],
                  "evaluated": []}
    real_digest = seen["real_digest"] = engine.file_digest

    def counting_digest(path):
        seen["hashed"].append(str(path))
        return real_digest(path)

    class DoneTrainer:
        def __init__(self, model, config, samples) -> None:
            self.step, self.elapsed = seen.get("resumed_step", 0), 0.0

        def resume(self) -> bool:
            return False

        def done(self) -> bool:
            return True

    def cached_samples(model, name, items, n, low, min_area, failures=None):
        seen["caches"].append(name)
        seen["sources"].append(items)
        return [SimpleNamespace(image_id=name)]

    def evaluate(model, out, max_clicks=5):
        seen["evaluated"].append(out.name)
        score = 0.6 if improved and out.name == "eval_engine.json" else 0.5
        clicks = {"points/mIoU@1": score, "points/mIoU@5": 0.6, "points/n_masks": 3.0}
        return {"GrabCut": clicks, "Berkeley": clicks}

    monkeypatch.setattr(engine, "file_digest", counting_digest)
    monkeypatch.setattr(engine, "check_evaluation_data", lambda: None, raising=False)
    monkeypatch.setattr(engine, "automatic_stage", lambda args, images: auto)
    monkeypatch.setattr(engine, "evaluation_bsds_ids", lambda: set())
    monkeypatch.setattr(engine, "build_composer_tiny", lambda checkpoint=None: torch.nn.Linear(1, 1))
    monkeypatch.setattr(engine, "cached_samples", cached_samples)
    # the caches are built from unread items (ItemRefs): a rerun reads no image to find them
    monkeypatch.setattr(engine, "bsds_item_refs", lambda splits, exclude: "bsds refs")
    monkeypatch.setattr(engine, "coco_item_refs", lambda ann, images: f"refs of {Path(ann).name}")
    # the caches are named by the model's backbone (here a stand-in's)
    monkeypatch.setattr(engine, "cache_name", lambda model, base="human": f"{base}-B")
    monkeypatch.setattr(engine, "evaluate", evaluate)
    monkeypatch.setattr(engine, "Trainer", DoneTrainer)
    return seen


def test_data_engine_hashes_the_start_weights_once(tmp_path, monkeypatch, capsys) -> None:
    """The control and the engine fine-tuning each hashed --weights for their run settings:
    a large checkpoint read twice per run. The stages around the hashing are stubbed."""
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch)
    weights, auto = seen["weights"], seen["auto"]
    work = tmp_path / "work"
    engine.main(["--weights", str(weights), "--work-dir", str(work), "--images", str(tmp_path)])
    # the start weights once; each run's checkpoint (its evaluation's key) and the engine's
    # exported weights (for the log) once each
    assert seen["hashed"] == [
        str(weights),
        str(work / "control_human_only" / "last.pt"),
        str(work / "engine_human_plus_automatic" / "last.pt"),
        str(work / "engine_model.pt"),
    ]
    assert seen["caches"] == ["human-B", f"engine-{engine.annotations_digest(auto)}-B"]
    assert seen["sources"] == ["bsds refs", "refs of auto.json"]
    digest = seen["real_digest"](weights)
    for tag in ("control_human_only", "engine_human_plus_automatic"):
        settings = json.loads((work / tag / "run_settings.json").read_text())
        assert settings["weights_sha256"] == digest
    capsys.readouterr()


def test_feature_caches_are_named_by_the_backbone() -> None:
    """The cache holds frozen-backbone features under one fixed name: weights with a
    fine-tuned backbone (train --train-encoder), as --init or the data engine's --weights,
    were trained on the ImageNet backbone's cached features instead of their own."""
    import torch

    from composer.sam.composer_tiny import build_composer_tiny

    recipe = load_recipe("train_default")
    model = build_composer_tiny(checkpoint=None, pretrained_backbone=True)
    assert recipe.cache_name(model) == recipe.CACHE_NAME
    assert recipe.cache_name(model, "engine-abc") == "engine-abc"
    with torch.no_grad():
        for p in model.image_encoder.backbone.parameters():
            p.mul_(1.01)  # a fine-tuned backbone
    name = recipe.cache_name(model)
    assert name.startswith(f"{recipe.CACHE_NAME}-backbone-") and recipe.cache_name(model) == name
    assert recipe.cache_name(model, "engine-abc") == f"engine-abc{name[len(recipe.CACHE_NAME):]}"


def test_data_engine_takes_the_users_labelled_coco_json(tmp_path, monkeypatch, capsys) -> None:
    """The human masks were always BSDS500's: a user with their own labelled COCO json (and
    no BSDS500) could not run the recipe. ``--labelled`` / ``--labelled-images`` take one; its
    feature cache and the run settings are named by its masks and folder (its image ids,
    "coco/1"..., repeat another json's)."""
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch)
    labelled, photos = tmp_path / "mine.json", tmp_path / "mine"
    photos.mkdir()
    labelled.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    work = tmp_path / "work"
    engine.main(["--weights", str(seen["weights"]), "--work-dir", str(work), "--images",
                 str(tmp_path), "--labelled", str(labelled), "--labelled-images", str(photos)])
    digest = engine.labelled_digest(labelled, photos)
    assert seen["sources"][0] == "refs of mine.json"
    assert seen["caches"][0] == f"labelled-{digest}-B"
    for tag in ("control_human_only", "engine_human_plus_automatic"):
        assert json.loads((work / tag / "run_settings.json").read_text())["labelled"] == digest
    assert json.loads((work / "data_engine.json").read_text())["labelled"] == str(labelled)
    # another folder for the same json is other data
    other = tmp_path / "other"
    other.mkdir()
    assert engine.labelled_digest(labelled, other) != digest
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--labelled", "JSON"], "--labelled and --labelled-images go together"),
        (["--labelled-images", "DIR"], "--labelled and --labelled-images go together"),
        (["--labelled", "DIR", "--labelled-images", "DIR"], "is not a file"),
        (["--labelled", "JSON", "--labelled-images", "JSON"], "is not a folder"),
    ],
)
def test_data_engine_checks_labelled_flags_first(extra, message, tmp_path, monkeypatch, capsys) -> None:
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch)
    (tmp_path / "l.json").write_text("{}")
    names = {"JSON": str(tmp_path / "l.json"), "DIR": str(tmp_path)}
    with pytest.raises(SystemExit) as exc:
        engine.main(["--weights", str(seen["weights"]), "--work-dir", str(tmp_path / "w"),
                     "--images", str(tmp_path), *[names.get(a, a) for a in extra]])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("improved", [True, False])
def test_data_engine_says_what_improved_and_how_it_was_measured(
    improved, tmp_path, monkeypatch, capsys
) -> None:
    """The verdict was one bare line ("automatic masks improved the held-out mIoU over the
    human-only control"): not which numbers, by how much, on what or measured how."""
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch, improved=improved)
    work = tmp_path / "work"
    engine.main(["--weights", str(seen["weights"]), "--work-dir", str(work), "--images",
                 str(tmp_path), "--steps", "7"])
    out = capsys.readouterr().out
    # stub: every column 0.5 / 0.6, the engine's @1 columns 0.6 when improved
    eng, ctl = (2.4, 2.2) if improved else (2.2, 2.2)
    verdict = "improved" if improved else "did not improve"
    line = next(x for x in out.splitlines() if x.startswith("automatic masks"))
    assert line.startswith(
        f"automatic masks {verdict} the held-out mIoU over the human-only control: "
        f"{eng:.3f} against {ctl:.3f} ({eng - ctl:+.3f}), the sum of the four held-out mIoU "
        "columns (GrabCut, 3 masks, and Berkeley, 3"
    )
    assert "7 steps" in line and "one seed each" in line
    summary = json.loads((work / "data_engine.json").read_text())
    assert summary["engine_improves_over_control"] is improved
    assert summary["comparison"]["difference"] == pytest.approx(eng - ctl)
    assert summary["comparison"]["measure"] in line


def test_data_engine_leaves_out_an_unreadable_labelled_image(tmp_path, monkeypatch, caplog) -> None:
    """A --labelled json naming a missing or corrupt image stopped the whole run (after the
    automatic stage) at that image; now it is left out with one WARNING line and listed,
    as `sam-composer train` does. The feature cache is stubbed: it reads each item."""
    import logging

    from composer.training.data import ItemRef

    engine = load_recipe("data_engine")

    class ReadingCache:
        def __init__(self, name) -> None:
            pass

        def build(self, model, items, variants, low_res):
            return [it.load() for it in items]

        def load_all(self, paths, min_area, low_res):
            return paths

    def unreadable():
        raise ValueError("image file not found: labelled/missing.jpg")

    monkeypatch.setattr(engine, "FeatureCache", ReadingCache)
    refs = [ItemRef("coco/1", lambda: "item 1"), ItemRef("coco/2", unreadable),
            ItemRef("coco/3", lambda: "item 3")]
    failures: list = []
    with caplog.at_level(logging.WARNING):
        samples = engine.cached_samples(None, "c", refs, 1, 64, 0, failures=failures)
    assert samples == ["item 1", "item 3"]
    assert failures == [{"image_id": "coco/2", "error": "image file not found: labelled/missing.jpg"}]
    assert [r.getMessage() for r in caplog.records] == [
        "left out coco/2: image file not found: labelled/missing.jpg"
    ]
    # the BSDS500 masks and the automatic stage's (listed only when read) still stop the run
    with pytest.raises(ValueError, match="^image file not found: labelled/missing.jpg$"):
        engine.cached_samples(None, "c", refs, 1, 64, 0)


def test_data_engine_checks_the_evaluation_sets_before_the_stages(tmp_path, monkeypatch, capsys) -> None:
    """With the user's own --images and --labelled nothing read SAM_COMPOSER_DATA before the
    evaluation: a missing GrabCut/Berkeley was an error only after the automatic stage and
    the feature caches (minutes)."""
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch)
    monkeypatch.undo()  # the real check_evaluation_data; the stages below stay stubbed
    started: list = []
    monkeypatch.setattr(engine, "automatic_stage", lambda args, images: started.append(1))
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(empty))
    labelled = tmp_path / "mine.json"
    labelled.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        engine.main(["--weights", str(seen["weights"]), "--work-dir", str(tmp_path / "w"),
                     "--images", str(tmp_path), "--labelled", str(labelled),
                     "--labelled-images", str(tmp_path)])
    assert exc.value.code == 2
    assert f"dataset 'grabcut' not found at {empty / 'grabcut'}" in capsys.readouterr().err
    assert not started


def _finished_data_engine_runs(tmp_path, monkeypatch):
    """The stubbed recipe, a work folder whose two fine-tuning runs hold a last.pt (the stub
    trainer writes none), and the command line: (recipe, seen, work dir, argv)."""
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch)
    work = tmp_path / "work"
    for tag in ("control_human_only", "engine_human_plus_automatic"):
        (work / tag).mkdir(parents=True)
        (work / tag / "last.pt").write_bytes(tag.encode())
    argv = ["--weights", str(seen["weights"]), "--work-dir", str(work), "--images", str(tmp_path)]
    return engine, seen, work, argv


def test_data_engine_rerun_reuses_the_evaluations_of_the_same_weights(
    tmp_path, monkeypatch, capsys
) -> None:
    """A rerun (e.g. after Ctrl-C in the engine's fine-tuning) evaluated the start weights and
    the control again, minutes each, before it went on; an evaluation is now kept with the
    digest of the weights it measured and reused for the same ones only."""
    engine, seen, work, argv = _finished_data_engine_runs(tmp_path, monkeypatch)
    engine.main(argv)
    assert seen["evaluated"] == ["eval_start.json", "eval_control.json", "eval_engine.json"]
    first = (work / "data_engine.json").read_text()
    seen["evaluated"].clear()
    engine.main(argv)
    assert seen["evaluated"] == []
    assert (work / "data_engine.json").read_text() == first
    # other weights (the engine run trained on) are evaluated again
    (work / "engine_human_plus_automatic" / "last.pt").write_bytes(b"more steps")
    engine.main(argv)
    assert seen["evaluated"] == ["eval_engine.json"]
    capsys.readouterr()


def test_data_engine_rerun_evaluates_again_on_other_held_out_sets(
    tmp_path, monkeypatch, capsys
) -> None:
    """The evaluations were reused by the weights' digest alone: a rerun with another
    SAM_COMPOSER_DATA (other GrabCut/Berkeley folders) reported the old sets' scores (and
    mask counts) as its own. Now the sets' folders are part of what is reused."""
    engine, seen, work, argv = _finished_data_engine_runs(tmp_path, monkeypatch)
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path / "data_a"))
    engine.main(argv)
    seen["evaluated"].clear()
    engine.main(argv)
    assert seen["evaluated"] == []
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path / "data_b"))
    engine.main(argv)
    assert seen["evaluated"] == ["eval_start.json", "eval_control.json", "eval_engine.json"]
    sets = json.loads((work / "eval_start.json").read_text())["evaluated_on"]["sets"]
    assert sets["grabcut"] == str((tmp_path / "data_b" / "grabcut").resolve())
    capsys.readouterr()


def test_data_engine_refuses_a_checkpoint_longer_than_steps(tmp_path, monkeypatch, capsys) -> None:
    """A rerun with a smaller --steps took the finished (longer) checkpoint as it was and said
    "both runs N steps" of runs of other lengths (the control finished, the engine cut short
    and resumed to the new N): now a one-line error naming the steps the folder holds."""
    engine = load_recipe("data_engine")
    seen = _stub_data_engine(engine, tmp_path, monkeypatch)
    seen["resumed_step"] = 1500
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exc:
        engine.main(["--weights", str(seen["weights"]), "--work-dir", str(work), "--images",
                     str(tmp_path), "--steps", "200"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "holds a run of 1500 steps, more than --steps 200" in err
    assert not (work / "data_engine.json").exists()
    seen["evaluated"].clear()
    engine.main(["--weights", str(seen["weights"]), "--work-dir", str(work), "--images",
                 str(tmp_path), "--steps", "1500"])
    assert "1500 steps" in json.loads((work / "data_engine.json").read_text())["comparison"]["measure"]
    capsys.readouterr()
