"""Every bad task file fails with one line naming the file, the line where there is one, and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bort import config as C
from bort import data
from bort.errors import ConfigError, DataError


def load(path: Path, **task) -> data.TaskData:
    return data.load_task(C.from_dict({"task": {"name": str(path), **task}}))


def fails(path: Path, *parts: str, **task) -> str:
    with pytest.raises(DataError) as info:
        load(path, **task)
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def rows(n: int = 20) -> str:
    return "".join(f"text {i},{i % 2}\n" for i in range(n))


def glue(root: Path, train: str, dev: str) -> Path:
    root.mkdir()
    (root / "train.tsv").write_text("sentence\tlabel\n" + train, encoding="utf-8")
    (root / "dev.tsv").write_text("sentence\tlabel\n" + dev, encoding="utf-8")
    return root


def test_missing_column_lists_the_columns_found(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence,label\n" + rows())
    fails(path, "t.csv", "no column 'text'", "columns found: sentence, label", "set task.text_column")


def test_missing_pair_column_in_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n")
    fails(path, "t.jsonl", "no column 'b'", "columns found: text, label", text_pair_column="b")


def test_empty_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("  \n")
    fails(path, "t.csv", "file is empty")


def test_header_without_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n")
    fails(path, "t.csv", "header but no rows")


def test_glue_dev_label_missing_from_train_is_unknown(tmp_path):
    folder = glue(tmp_path / "g", "".join(f"s {i}\t{i % 2}\n" for i in range(20)), "x\t1\ny\t2\n")
    fails(folder, "dev.tsv: line 3", "unknown label '2'", "train has only 0, 1")


def test_jsonl_row_without_the_label_key_is_unknown(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n" + json.dumps({"text": "b"}) + "\n")
    fails(path, "t.jsonl: line 2", "unknown label: no 'label' key", "keys: text")


def test_label_outside_task_labels_is_unknown(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,pos\nb,neg\nc,neutral\n")
    fails(path, "t.csv: line 4", "unknown label 'neutral'", "task.labels allows pos, neg", labels=["pos", "neg"])


def test_empty_label_is_reported(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,pos\nb, \n")
    fails(path, "t.csv: line 3", "'label' is empty")


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\ngood,1\ncaf\xe9,0\n")
    fails(path, "t.csv: line 3", "not UTF-8", "re-save the file as UTF-8")


def test_non_utf8_bytes_in_a_glue_folder(tmp_path):
    folder = glue(tmp_path / "g", "a\t0\nb\t1\n", "c\t0\n")
    (folder / "dev.tsv").write_bytes(b"sentence\tlabel\nc\t0\n\xff\t1\n")
    fails(folder, "dev.tsv: line 3", "not UTF-8")


def test_jsonl_label_column_of_mixed_types(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": 1 if i < 3 else "pos"}) + "\n" for i in range(5)))
    fails(path, "t.jsonl: line 4", "mixes types", "'pos' here is str", "line 1 has int 1")


def test_csv_label_column_mixing_numbers_and_names(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,0\nb,1\nc,neg\n")
    fails(path, "t.csv: line 4", "mixes types")


def test_duplicate_row_across_glue_train_and_dev(tmp_path):
    folder = glue(tmp_path / "g", "".join(f"s {i}\t{i % 2}\n" for i in range(20)), "fresh\t0\nS  3 \t1\n")
    fails(folder, "dev.tsv: line 3", "duplicate row across splits", "train.tsv line 5")


def test_empty_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,1\n  ,0\n")
    fails(path, "t.csv: line 3", "'text' is empty")


def test_text_that_is_not_a_string(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n" + json.dumps({"text": 5, "label": 0}) + "\n")
    fails(path, "t.jsonl: line 2", "'text' is int 5, expected text")


def test_float_label_is_not_a_class(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 0.5}) + "\n")
    fails(path, "t.jsonl: line 1", "regression is not supported")


def test_invalid_json_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n{oops\n")
    fails(path, "t.jsonl: line 2", "not valid JSON")


def test_csv_row_with_too_many_fields(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,1\nb,0,extra\n")
    fails(path, "t.csv: line 3", "different number of fields")


def test_tsv_row_with_a_stray_tab(tmp_path):
    folder = glue(tmp_path / "g", "a\t0\nb\tc\t1\n", "d\t0\n")
    fails(folder, "train.tsv: line 3", "3 tab-separated fields")


def test_glue_folder_without_dev_tsv(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\na\t0\n")
    fails(folder, "no dev.tsv", "expected train.tsv and dev.tsv")


def test_glue_header_without_known_columns(tmp_path):
    folder = glue(tmp_path / "g", "a\t0\n", "b\t1\n")
    (folder / "train.tsv").write_text("words\tclass\na\t0\n")
    fails(folder, "train.tsv", "columns found: words, class", "task.text_column")


def test_unknown_task_name(tmp_path):
    fails(tmp_path / "nope.csv", "does not exist", "rotten_tomatoes, bbc_news")
    (tmp_path / "t.parquet").write_text("x")
    fails(tmp_path / "t.parquet", "unsupported extension")


def test_too_few_rows_to_split(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,0\n")
    fails(path, "too few rows", "task.dev_fraction")


def test_bad_task_config_values_name_the_key():
    with pytest.raises(ConfigError, match="task.max_train_rows"):
        C.from_dict({"task": {"max_train_rows": -1}})
    with pytest.raises(ConfigError, match="task.labels has duplicates"):
        C.from_dict({"task": {"labels": ["a", "a"]}})
    with pytest.raises(ConfigError, match="corpus.heldout_fraction"):
        C.from_dict({"corpus": {"heldout_fraction": 0.9}})


def sts_b_csv(path: Path) -> Path:
    path.write_text("text,label\n" + "".join(f"pair {i},{(i * 0.523) % 5:.3f}\n" for i in range(1, 21)))
    return path


def cola_lines(n: int, start: int = 0) -> str:
    # CoLA: no header line; source, label, original label (mostly empty), sentence
    return "".join(f"gj04\t{i % 2}\t{'*' if i % 2 == 0 else ''}\tthe sailors rode breeze number {i} .\n"
                   for i in range(start, start + n))


def cola(root: Path) -> Path:
    root.mkdir()
    (root / "train.tsv").write_text(cola_lines(30), encoding="utf-8")
    (root / "dev.tsv").write_text(cola_lines(6, start=100), encoding="utf-8")
    return root


def test_fractional_csv_labels_are_refused_as_regression_naming_the_column(tmp_path):
    fails(sts_b_csv(tmp_path / "sts.csv"), "sts.csv: line 2", "'0.523'", "column 'label'",
          "regression is not supported", "task.label_column")


def test_float_written_class_ids_still_load(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{i % 2}.0\n" for i in range(20)))
    assert load(path).labels == ["0", "1"]


def test_headerless_glue_tsv_is_recognised_and_names_the_setting(tmp_path):
    fails(cola(tmp_path / "cola"), "train.tsv: line 1 is data, not a header", "no header line",
          "task.tsv_columns=[source,label,original_label,sentence]")


def test_headerless_glue_tsv_loads_with_tsv_columns(tmp_path):
    task = load(cola(tmp_path / "cola"), tsv_columns=["source", "label", "original_label", "sentence"])
    assert task.labels == ["0", "1"] and len(task.test) == 6
    assert all(e.text.startswith("the sailors rode breeze") for e in task.train + task.test)


def test_tsv_columns_on_a_file_with_a_header_is_refused(tmp_path):
    folder = glue(tmp_path / "g", rows_tsv := "".join(f"s {i}\t{i % 2}\n" for i in range(20)), rows_tsv)
    fails(folder, "line 1 is a header", "unset task.tsv_columns", tsv_columns=["sentence", "label"])


def test_tsv_columns_must_name_every_column(tmp_path):
    fails(cola(tmp_path / "cola"), "has 4 tab-separated fields", "names 2", tsv_columns=["label", "sentence"])
