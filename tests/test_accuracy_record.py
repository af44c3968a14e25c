"""The accuracy record (astra_lab.train.results): rows merged by key, stamped with where they were measured."""
from __future__ import annotations

import json
from datetime import date

from astra_lab.train import results


def _row(variant: str, value: float, **extra) -> dict:
    return dict(task="fmnist", ranks=4, groups=16, variant=variant, metric="accuracy", value=value,
                command="python -m astra train fmnist --record", **extra)


def test_record_stamps_new_rows_and_keeps_recorded_stamps(tmp_path):
    json_path, md_path = tmp_path / "acc.json", tmp_path / "ACC.md"
    old = _row("original", 0.90, date="2000-01-02", machine="Some CPU")
    results.record([old, _row("astra", 0.85)], str(json_path), str(md_path))
    rows = {r["variant"]: r for r in json.loads(json_path.read_text())}
    assert (rows["original"]["date"], rows["original"]["machine"]) == ("2000-01-02", "Some CPU")
    assert rows["astra"]["date"] == date.today().isoformat()
    assert rows["astra"]["machine"] == results.machine() != ""
    text = md_path.read_text()
    assert f"Measured 2000-01-02, {date.today().isoformat()} on " in text
    assert "Some CPU" in text and results.machine() in text
    assert "| astra | 16 | 4 | accuracy | 85.00 % | -5.00 pt |" in text


def test_record_replaces_the_rows_of_a_rerun_and_keeps_the_others(tmp_path):
    json_path, md_path = tmp_path / "acc.json", tmp_path / "ACC.md"
    results.record([_row("original", 0.90), _row("astra", 0.80)], str(json_path), str(md_path))
    results.record([_row("astra", 0.86, date="2001-01-01", machine="Other CPU")], str(json_path), str(md_path))
    rows = json.loads(json_path.read_text())
    assert sorted((r["variant"], r["value"]) for r in rows) == [("astra", 0.86), ("original", 0.90)]
    assert "| astra | 16 | 4 | accuracy | 86.00 % | -4.00 pt |" in md_path.read_text()


def test_a_tasks_note_follows_its_table_only(monkeypatch):
    monkeypatch.setitem(results.NOTES, "fmnist", "Why G = 16.")
    rows = [_row("original", 0.9), dict(_row("original", 3.0), task="kjv", metric="perplexity")]
    text = results.markdown(rows)
    fmnist, kjv = text.index("## Fashion-MNIST"), text.index("## King James")
    assert fmnist < text.index("Why G = 16.") < kjv  # tasks in name order: under the Fashion-MNIST table
    assert text.count("Why G = 16.") == 1
