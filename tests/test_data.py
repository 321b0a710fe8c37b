"""Task data: embedded sets, user files, GLUE folders, seeded group-aware splits, stored splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bort import config as C
from bort import data
from bort.errors import ArtifactError, DataError


def make_cfg(seed: int = 0, **task) -> C.RunConfig:
    return C.from_dict({"seed": seed, "task": task})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def texts(examples) -> set[str]:
    return {e.text for e in examples}


@pytest.fixture(scope="module")
def rotten_tomatoes() -> data.TaskData:
    return data.load_task(make_cfg())


def test_rotten_tomatoes_has_12808_rows_and_no_film_in_two_splits(rotten_tomatoes):
    task = rotten_tomatoes
    assert sum(len(task.split(s)) for s in data.SPLITS) == 12808
    assert task.labels == ["rotten", "fresh"]
    totals = {label: sum(b[label] for b in task.balance().values()) for label in task.labels}
    assert totals == {"rotten": 5405, "fresh": 7403}
    films = {s: {e.group for e in task.split(s)} for s in data.SPLITS}
    assert all(films.values()) and None not in films["train"]
    assert not films["train"] & films["dev"] and not films["train"] & films["test"]
    assert not films["dev"] & films["test"]
    assert 0.08 < len(task.dev) / 12808 < 0.12 and 0.08 < len(task.test) / 12808 < 0.12


def test_rotten_tomatoes_splits_identical_for_a_seed_and_differ_for_another(rotten_tomatoes):
    again = data.load_task(make_cfg(seed=0))
    other = data.load_task(make_cfg(seed=1))
    assert again.train == rotten_tomatoes.train and again.test == rotten_tomatoes.test
    assert texts(other.test) != texts(rotten_tomatoes.test)


def test_bbc_news_has_2225_articles_and_5_labels():
    task = data.load_task(make_cfg(name="bbc_news"))
    assert sum(len(task.split(s)) for s in data.SPLITS) == 2225
    assert task.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert all(len(e.text) > 100 for e in task.test)
    assert not task.is_pair


def test_csv_single_texts_load_with_configured_columns(tmp_path):
    rows = "".join(f'"review {i}, quoted",{"pos" if i % 3 else "neg"}\n' for i in range(60))
    path = write(tmp_path / "t.csv", "review,stars\n" + rows)
    task = data.load_task(make_cfg(name=str(path), text_column="review", label_column="stars"))
    assert task.labels == ["neg", "pos"]
    assert sum(len(task.split(s)) for s in data.SPLITS) == 60
    assert "review 3, quoted" in texts(task.train + task.dev + task.test)
    assert not task.is_pair and len(task.dev) == 6 and len(task.test) == 6


def test_csv_text_pairs_load(tmp_path):
    rows = "".join(f"premise {i},hypothesis {i},{i % 2}\n" for i in range(40))
    path = write(tmp_path / "p.csv", "a,b,y\n" + rows)
    task = data.load_task(make_cfg(name=str(path), text_column="a", text_pair_column="b", label_column="y"))
    assert task.is_pair and task.labels == ["0", "1"]
    e = task.train[0]
    assert e.text.replace("premise", "hypothesis") == e.text_pair


def test_jsonl_single_and_pair_load(tmp_path):
    single = write(tmp_path / "s.jsonl", "".join(json.dumps({"text": f"t {i}", "label": i % 3}) + "\n\n"
                                              for i in range(30)))
    task = data.load_task(make_cfg(name=str(single)))
    assert task.labels == ["0", "1", "2"] and not task.is_pair
    assert sum(len(task.split(s)) for s in data.SPLITS) == 30
    pair = write(tmp_path / "p.jsonl", "".join(json.dumps({"q": f"q {i}\u2028x", "a": f"a {i}", "label": "yes" if i % 2
                                                           else "no"}) + "\n" for i in range(30)))
    task = data.load_task(make_cfg(name=str(pair), text_column="q", text_pair_column="a"))
    assert task.is_pair and task.labels == ["no", "yes"]
    assert all(e.text_pair.startswith("a ") and "\u2028" in e.text for e in task.train)


def sst2_folder(root: Path, n_train: int = 50) -> Path:
    train = "".join(f'phrase {i} with a "stray quote {"good" if i % 2 else "bad"} \t{i % 2}\n' for i in range(n_train))
    write(root / "train.tsv", "sentence\tlabel\n" + train)
    write(root / "dev.tsv", "sentence\tlabel\n" + "".join(f"held out {i} \t{i % 2}\n" for i in range(10)))
    return root


def rte_folder(root: Path) -> Path:
    labels = ("entailment", "not_entailment")
    train = "".join(f"{i}\tpremise {i // 2}\thypothesis {i}\t{labels[i % 2]}\n" for i in range(40))
    write(root / "train.tsv", "index\tsentence1\tsentence2\tlabel\n" + train)
    dev = "".join(f"{i}\tdev premise {i}\tdev hypothesis {i}\t{labels[i % 2]}\n" for i in range(8))
    write(root / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n" + dev)
    return root


def test_glue_sst2_layout_keeps_dev_tsv_as_the_test_split(tmp_path):
    task = data.load_task(make_cfg(name=str(sst2_folder(tmp_path / "SST-2")), dev_fraction=0.2))
    assert texts(task.test) == {f"held out {i}" for i in range(10)}
    assert len(task.train) + len(task.dev) == 50 and len(task.dev) == 10
    assert task.labels == ["0", "1"] and not task.is_pair
    assert 'phrase 1 with a "stray quote good' in texts(task.train + task.dev)  # QUOTE_NONE


def test_glue_rte_layout_loads_text_pairs(tmp_path):
    task = data.load_task(make_cfg(name=str(rte_folder(tmp_path / "RTE"))))
    assert task.is_pair and task.labels == ["entailment", "not_entailment"]
    assert len(task.test) == 8 and len(task.train) + len(task.dev) == 40
    assert all(e.text.startswith("dev premise") for e in task.test)


def test_identical_texts_and_groups_never_straddle_splits(tmp_path):
    rows = [f"Text {i % 50}  ,g{i % 50 % 7},{i % 2}" for i in range(200)]  # 4 copies of each text
    rows += [f"text {i % 50},g{i % 50 % 7},{i % 2}" for i in range(10)]  # same text, other case
    path = write(tmp_path / "d.csv", "text,g,label\n" + "\n".join(rows) + "\n")
    for group_column in ("", "g"):
        task = data.load_task(make_cfg(name=str(path), group_column=group_column, dev_fraction=0.2,
                                       test_fraction=0.2))
        keys = {s: {e.text.casefold() for e in task.split(s)} for s in data.SPLITS}
        assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"]
        assert not keys["dev"] & keys["test"] and task.test
    groups = {s: {e.group for e in task.split(s)} for s in data.SPLITS}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["dev"]


def test_task_labels_fix_the_label_order(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(30)))
    task = data.load_task(make_cfg(name=str(path), labels=["b", "a"]))
    assert task.labels == ["b", "a"]
    assert {task.labels[e.label] for e in task.train if e.text == "t1"} <= {"b"}


def test_row_caps_are_seeded_and_keep_class_balance(rotten_tomatoes):
    cfg = make_cfg(max_train_rows=500, max_eval_rows=100)
    task = data.load_task(cfg)
    assert (len(task.train), len(task.dev), len(task.test)) == (500, 100, 100)
    assert texts(task.train) <= texts(rotten_tomatoes.train)
    fresh = task.balance()["train"]["fresh"] / 500
    full = rotten_tomatoes.balance()["train"]["fresh"] / len(rotten_tomatoes.train)
    assert abs(fresh - full) < 0.01
    assert data.load_task(cfg).train == task.train


def test_prepare_round_trips_and_reuses_stored_splits(tmp_path, monkeypatch):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
    cfg = make_cfg(name=str(path))
    made = data.prepare(cfg, tmp_path / "run")
    assert data.load_prepared(tmp_path / "run") == made
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"train.jsonl", "dev.jsonl", "test.jsonl", "labels.json"}
    assert manifest["metrics"]["rows"] == {"train": 32, "dev": 4, "test": 4}
    monkeypatch.setattr(data, "load_task", lambda cfg: pytest.fail("re-split although current"))
    assert data.prepare(cfg, tmp_path / "run") == made


def test_prepare_resplits_when_the_source_file_changes(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
    cfg = make_cfg(name=str(path))
    data.prepare(cfg, tmp_path / "run")
    write(path, path.read_text() + "added,1\n")
    task = data.prepare(cfg, tmp_path / "run")
    assert "added" in texts(task.train + task.dev + task.test)


def test_a_changed_split_file_is_detected(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
    data.prepare(make_cfg(name=str(path)), tmp_path / "run")
    dev = tmp_path / "run" / "data" / "dev.jsonl"
    dev.write_text(dev.read_text().replace('"t', '"x', 1))
    with pytest.raises(ArtifactError, match="dev.jsonl changed"):
        data.load_prepared(tmp_path / "run")


def test_load_prepared_without_splits_names_the_command(tmp_path):
    with pytest.raises(ArtifactError, match="bort data --prepare"):
        data.load_prepared(tmp_path / "nothing")


def test_bort_data_prints_sizes_and_balance(tmp_path, capsys):
    from pipeline import cli

    folder = rte_folder(tmp_path / "RTE")
    code = cli.main(["data", "--set", f"task.name={folder}", "--run-dir", str(tmp_path / "run"), "--prepare"])
    out = capsys.readouterr().out
    assert code == 0 and "text pairs" in out and "not_entailment" in out
    assert "test         8" in out and (tmp_path / "run" / "data" / "manifest.json").is_file()


def test_bort_data_reports_a_bad_file_in_one_line(tmp_path, capsys):
    from pipeline import cli

    path = write(tmp_path / "bad.csv", "sentence,label\nhello,1\n")
    assert cli.main(["data", "--set", f"task.name={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bad.csv" in err


def test_a_text_the_service_would_refuse_stops_the_run_at_data_naming_the_setting(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(39)) + "x" * 2500 + ",1\n")
    with pytest.raises(DataError, match=r"1 of 40 texts are longer than serve.max_chars=2000 .*2500.*serve.max_chars >= 2500"):
        data.prepare(make_cfg(name=str(path)), tmp_path / "run")
    cfg = C.from_dict({"task": {"name": str(path)}, "serve": {"max_chars": 2500}})
    assert len(data.prepare(cfg, tmp_path / "run").train) == 32
