import pytest

from nlp_dlg.engine import InputDataError
from nlp_dlg.text import pair_batch, read_sentences, rouge, score_batch, summarize, token_accuracy


def test_token_accuracy_hand_values():
    assert token_accuracy([101, 5, 6, 102], [101, 5, 7, 102], ignore={101, 102}) == 0.5
    assert token_accuracy([5], [5, 6, 7]) == pytest.approx(1 / 3)  # missing positions count as wrong
    assert token_accuracy([9, 9, 9], [9, 9, 9]) == 1.0


def test_rouge_hand_values():
    r = rouge("the cat sat", "the cat ran")
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(1 / 2)  # bigrams: (the cat) shared of 2
    assert rouge("a b c", "a b c")["rougeL"] == 1.0


def test_hungarian_pairing_finds_the_permutation():
    score = [[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]]
    assert pair_batch(score) == [1, 0, 2]
    with pytest.raises(ValueError, match="square"):
        pair_batch([[1.0, 2.0]])


def test_score_batch_pairs_swapped_reconstructions():
    refs = [[1, 2, 3], [4, 5, 6]]
    rows = score_batch([[4, 5, 6], [1, 2, 9]], ["d e f", "a b x"], refs, ["a b c", "d e f"])
    assert rows[0]["reference"] == "d e f" and rows[0]["exact_match"] and rows[0]["token_accuracy"] == 1.0
    assert rows[1]["reference"] == "a b c" and rows[1]["token_accuracy"] == pytest.approx(2 / 3)
    means = summarize([{**r, "seconds": 1.0, "gradient_evaluations": 10} for r in rows])
    assert means["exact_match"] == 0.5 and means["token_accuracy"] == pytest.approx(5 / 6)


def test_read_sentences_txt_csv_jsonl(tmp_path):
    (tmp_path / "s.txt").write_text("first one .\n\n  second one .  \n")
    assert read_sentences(tmp_path / "s.txt") == ["first one .", "second one ."]
    (tmp_path / "s.csv").write_text("id,sentence\n1,hello there\n2,general kenobi\n")
    assert read_sentences(tmp_path / "s.csv", column="sentence") == ["hello there", "general kenobi"]
    assert read_sentences(tmp_path / "s.csv") == ["hello there", "general kenobi"]  # the only string column
    (tmp_path / "s.jsonl").write_text('{"text": "from json"}\n{"text": "lines"}\n')
    assert read_sentences(tmp_path / "s.jsonl") == ["from json", "lines"]


def test_read_sentences_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputDataError, match="holds no sentence"):
        read_sentences(tmp_path / "empty.txt")
    with pytest.raises(InputDataError, match="no such file"):
        read_sentences(tmp_path / "missing.txt")
    (tmp_path / "s.csv").write_text("a\nx\n")
    with pytest.raises(InputDataError, match="no column 'text2'"):
        read_sentences(tmp_path / "s.csv", column="text2")


def test_the_report_colours_tokens_against_the_final_text_when_the_truth_is_unknown(tokenizer, tmp_path):
    from nlp_dlg.text.report import Trace, references, write_batch_report

    ids = tokenizer(["the quick brown fox", "a lazy dog"], padding=True)["input_ids"]
    wrong = [[ids[0][0], ids[1][2], *ids[0][2:]], ids[1]]
    trace = Trace()
    trace.add("0", 1, 0.5, wrong)
    trace.add("final", 40, 1e-9, ids)
    refs, measure = references(ids, None, set(tokenizer.all_special_ids))
    assert refs == ids and measure.startswith("agreement")
    png, page = write_batch_report(tmp_path, 3, trace, tokenizer)
    text = page.read_text()
    assert png.name == "batch-003.png" and png.stat().st_size > 1000
    assert '<span class="miss">lazy</span>' in text and '<span class="hit">quick</span>' in text
    assert "final reconstruction" in text and "batch-003.html" in (tmp_path / "index.html").read_text()
    _, page = write_batch_report(tmp_path, 3, trace, tokenizer, truth=[ids[1], ids[0]])  # paired, in any order
    assert "1.000</td>" in page.read_text().split("final")[1]
