"""The run report: every figure equals the one in the stage manifest it names."""

import json

from bort import artifacts as A
from bort import config as C
from pipeline import report as R

METRICS = {
    "optimize": {"n_candidates": 24, "front_size": 5, "chosen": "3/6/384/768", "chosen_params_net": 15_000_000,
                 "chosen_latency_ms": 1.234567, "source_latency_ms": 4.5, "speedup": 3.6457},
    "pretrain": {"init": "inherit", "steps": 300, "heldout_loss": 0.0123, "embedding_cosine": 0.93},
    "finetune": {"accuracy": {"labeller": 0.842, "plain": 0.81, "agora": 0.83}, "deploy": "agora",
                 "macro_f1": {"labeller": 0.84, "plain": 0.8, "agora": 0.82}},
    "export": {"parity_max_abs_diff": 3.1e-6, "int8_drop_points": 0.25, "deployed": {"optimized": "int8"}},
    "loadtest": {"baseline": "source_onnx", "rps_ratio": 2.5, "p50_ratio": 2.7, "failures": 0},
}


def _write_fake_run(run_dir):
    cfg = C.resolve()
    for stage, metrics in METRICS.items():
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / "note.txt").write_text(stage)
        A.write_manifest(run_dir, stage, cfg, fingerprint=stage * 2, metrics=metrics)


def test_every_report_figure_equals_its_manifest(tmp_path):
    _write_fake_run(tmp_path)
    paths = R.write_run_report(tmp_path, timings=[{"stage": "optimize", "seconds": 1.0, "skipped": False}])
    md = paths["md"].read_text()
    figures = json.loads(paths["json"].read_text())["figures"]
    checked = 0
    for f in figures:
        manifest_value = R.lookup(A.read_manifest(tmp_path, f["stage"]).metrics, f["key"])
        assert f["value"] == manifest_value, f
        assert f"| {f['label']} | {f['text']} |" in md
        checked += f["value"] is not None
    assert checked == sum(len(_flat(m)) for m in METRICS.values())
    assert "<table>" in paths["html"].read_text()


def test_missing_stage_shows_not_available(tmp_path):
    paths = R.write_run_report(tmp_path)
    assert "| Agora accuracy | n/a |" in paths["md"].read_text()


def test_format_is_stable():
    assert R.fmt(1.234567) == "1.235" and R.fmt(15_000_000) == "15,000,000" and R.fmt(None) == "n/a"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _chromium() -> str | None:
    import os
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        import pytest

        if os.environ.get("CI"):
            pytest.fail("Chromium is missing on CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed here (apt-get install chromium chromium-driver; .ci/run does)")
    return found


# Runs once the page has loaded: records what the browser itself decoded, for --dump-dom to show.
PROBE = """<script>addEventListener('load', () => { for (const img of document.images) {
  img.dataset.decoded = img.complete && img.naturalWidth > 0 ? 'yes' : 'no'; } });</script>"""


def test_html_report_renders_every_section_and_image_in_a_headless_browser(tmp_path):
    import re
    import subprocess

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chromium = _chromium()
    run_dir = tmp_path / "run"
    _write_fake_run(run_dir)
    for stage, name, _ in R.PLOTS:
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [1, 0])
        fig.savefig(run_dir / stage / name)
        plt.close(fig)
    timings = [{"stage": "optimize", "seconds": 1.0, "skipped": False}]
    html = R.write_run_report(run_dir, timings=timings)["html"].read_text()
    probed = tmp_path / "probed.html"  # the report alone in a folder of its own: nothing beside it to load
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    (run_dir / "optimize" / "pareto.png").unlink()  # the file must not be needed once embedded
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         probed.as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert done.returncode == 0 and "<h1>" in dom, done.stderr[-2000:]
    titles = [title for title, _, _ in R.SECTIONS] + ["Stage times", "Machine"]
    for title in titles:
        assert f"<h2>{title}</h2>" in dom, title
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == len(R.PLOTS)
    for (_, _, caption), img in zip(R.PLOTS, images, strict=True):
        assert 'src="data:image/png;base64,' in img and f'alt="{caption}"' in img
        assert 'data-decoded="yes"' in img, f"the browser did not decode {caption!r}"
    assert not re.search(r"""(src|href)=["'](?!data:)""", dom), "the report refers to a file or URL"
