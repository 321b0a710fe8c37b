"""The unlabelled distillation corpus: never a dev or test text, deduplicated, seeded, capped."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from bort import config as C
from bort import corpus, data
from bort.errors import DataError
from bort.task import Example, TaskData


def make_cfg(seed: int = 0, **section) -> C.RunConfig:
    return C.from_dict({"seed": seed, "corpus": section})


def small_task() -> TaskData:
    train = [Example(f"Train text {i}", i % 2) for i in range(40)]
    train += [Example("shared text", 0), Example("  SHARED   text ", 1)]  # a duplicate up to case/space
    train += [Example("also in test", 1)]  # a training row equal to a test text (e.g. a user file's mistake)
    dev = [Example(f"dev text {i}", i % 2) for i in range(5)]
    test = [Example(f"test text {i}", i % 2) for i in range(5)] + [Example("Also in TEST", 0)]
    return TaskData("small", ["a", "b"], train, dev, test)


def test_corpus_never_contains_a_dev_or_test_text(tmp_path):
    task = small_task()
    user = tmp_path / "user.txt"
    user.write_text("dev text 3\n\nuser line one\n  TEST text 1  \nuser line two\n", encoding="utf-8")
    train, heldout = corpus.corpus_texts(make_cfg(files=[str(tmp_path / "*.txt")], heldout_fraction=0.1), task)
    everything = {t.casefold() for t in train + heldout}
    for e in task.dev + task.test:
        assert " ".join(e.text.split()).casefold() not in everything
    assert {"user line one", "user line two"} <= everything
    assert sum(t.casefold().strip().startswith("shared") for t in train + heldout) == 1
    assert len(train) + len(heldout) == 41 + 2 and len(heldout) == 4
    assert not set(train) & set(heldout)


def test_corpus_of_a_pair_task_uses_both_texts_and_excludes_test_pairs():
    task = TaskData("pairs", ["no", "yes"], [Example("p1", 0, "h1"), Example("p2", 1, "shared h")],
                    [Example("p3", 0, "h3")], [Example("p4", 1, "shared h")])
    train, heldout = corpus.corpus_texts(make_cfg(heldout_fraction=0.0), task)
    assert sorted(train) == ["h1", "p1", "p2"] and heldout == []


def test_corpus_is_seeded_and_capped_with_task_text_first(tmp_path):
    task = small_task()
    user = tmp_path / "user.txt"
    user.write_text("".join(f"user {i}\n" for i in range(100)), encoding="utf-8")
    cfg = make_cfg(files=[str(user)], max_texts=50, heldout_fraction=0.0)
    train, _ = corpus.corpus_texts(cfg, task)
    assert len(train) == 50 and sum(t.startswith("Train text") for t in train) == 40
    assert corpus.corpus_texts(cfg, task)[0] == train
    other, _ = corpus.corpus_texts(make_cfg(seed=1, files=[str(user)], max_texts=50, heldout_fraction=0.0), task)
    assert other != train


def test_corpus_files_glob_that_matches_nothing(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        corpus.corpus_texts(make_cfg(files=[str(tmp_path / "*.txt")]), small_task())


def test_corpus_file_with_non_utf8_bytes_names_the_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nna\xefve\n")
    with pytest.raises(DataError, match=r"bad.txt: line 3: bytes are not UTF-8"):
        corpus.corpus_texts(make_cfg(files=[str(bad)]), small_task())


def test_an_empty_corpus_is_an_error():
    with pytest.raises(DataError, match="corpus is empty"):
        corpus.corpus_texts(make_cfg(use_task_text=False), small_task())


GCIDE_SAMPLE = """00-database-info
   This file was converted from the original database. GNU General Public License text here.

A \\A\\ (named [.a] in the English, and most commonly [aum] in other
   languages).
   [1913 Webster]

Abandon \\A*ban"don\\, v. t. [imp. & p. p. {Abandoned}; p. pr. & vb. n. {Abandoning}.] [OF.
   abandoner.]
   1. To cast or drive out; to banish; to expel; to reject.
      [Obs.]
      [1913 Webster]

            That he might . . . abandon them from him and never return. --Udall.
      [1913 Webster]

   2. (Mar. Law) To relinquish all claim to; -- used when an
      insured person gives up to underwriters all claim to the caf[`e].
      [1913 Webster]

   Syn: To give up; yield; forego; cede; surrender; resign;
        abdicate; quit; relinquish; renounce; desert; forsake.

   Note: Abandon is more widely applicable than forsake or desert in {common} use.
         [1913 Webster]
"""


def test_gcide_parser_keeps_prose_and_drops_markup(tmp_path):
    path = tmp_path / "gcide.dict.dz"
    with gzip.open(path, "wb") as f:
        f.write(GCIDE_SAMPLE.encode("utf-8") + b"   3. A stray Windows byte \x92 in a long enough line.\n")
    texts = corpus.gcide_texts(path)
    assert texts == [
        "To cast or drive out; to banish; to expel; to reject.",
        "That he might . . . abandon them from him and never return.",
        "To relinquish all claim to; -- used when an insured person gives up to underwriters all claim to the cafe.",
        "Abandon is more widely applicable than forsake or desert in common use.",
        "A stray Windows byte ' in a long enough line.",
    ]


def test_corpus_uses_gcide_when_asked(tmp_path, monkeypatch):
    from bort import assets

    path = tmp_path / "gcide.dict.dz"
    with gzip.open(path, "wb") as f:
        f.write(GCIDE_SAMPLE.encode("utf-8"))
    monkeypatch.setattr(assets, "gcide_dict", lambda: path)
    train, _ = corpus.corpus_texts(make_cfg(use_gcide=True, use_task_text=False, heldout_fraction=0.0),
                                   small_task())
    assert len(train) == 4 and any("forsake" in t for t in train)


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_default_corpus_excludes_every_dev_and_test_text(tmp_path):
    from bort import assets

    cfg = C.from_dict({"corpus": {"use_gcide": assets.gcide_dict() is not None, "max_texts": 0}})
    task = data.prepare(cfg, tmp_path / "run")
    assert sum(len(task.split(s)) for s in data.SPLITS) == 12808
    train, heldout = corpus.corpus_texts(cfg, task)
    evaluation = {" ".join(e.text.split()).casefold() for e in task.dev + task.test}
    assert not evaluation & {" ".join(t.split()).casefold() for t in train + heldout}
    assert len(train) + len(heldout) > len({e.text for e in task.train}) - 100
    assert data.load_prepared(tmp_path / "run").test == task.test


def test_real_gcide_gives_prose_when_present():
    from bort import assets

    path = assets.gcide_dict()
    if path is None:
        pytest.skip("dict-gcide is not unpacked in the cache")
    texts = corpus.gcide_texts(path)
    assert len(texts) > 50_000
    assert all(len(t.split()) >= corpus.MIN_GCIDE_WORDS and "{" not in t and "\\" not in t for t in texts[:2000])


def test_corpus_and_data_do_not_import_each_other():
    """The corpus needs the task's types (bort.task), not the data stage: no import circle."""
    import ast

    def imports(module):
        tree = ast.parse(Path(module.__file__).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "bort.data" not in imports(corpus)
    assert "bort.corpus" not in imports(data)
