import io

from service.cli import main


def test_normalize_prints_one_piece_per_line(capsys):
    assert main(["normalize", "Dr. Smith paid $5.20 on 2026-11-26. Then he left at 3:45 pm."]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "doctor Smith paid five dollars twenty cents on November twenty-sixth, twenty twenty-six.",
        "Then he left at three forty-five p m."]


def test_normalize_reads_stdin_and_respects_max_chars(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("one, two, three, four, five, six, seven, eight, nine, ten"))
    assert main(["normalize", "--max-chars", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 2 and all(len(line) <= 20 for line in lines)


def test_phonemize_prints_ipa(capsys):
    assert main(["phonemize", "Hello, world!"]) == 0
    assert capsys.readouterr().out.strip() == "həlˈoʊ, wˈɜːld!"


def test_phonemize_words_and_ids(capsys):
    assert main(["phonemize", "--words", "Hello world"]) == 0
    assert capsys.readouterr().out.splitlines() == ["Hello\th ə l ˈ oʊ", "world\tw ˈ ɜː l d"]
    assert main(["phonemize", "--ids", "hi"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids and all(5 <= i < 141 for i in ids)


def test_corpus_voices_lists_distinct_speakers(capsys):
    assert main(["corpus", "voices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    speakers = {line.split("speaker=")[1].split()[0] for line in lines}
    assert len(lines) == 14 and len(speakers) == 10
    assert not any("NC" in line for line in lines)
