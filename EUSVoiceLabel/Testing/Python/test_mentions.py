"""Mention files, transcripts and label vocabularies."""

import json

import pytest

from EUSVoiceLabelLib.core.errors import MentionsError, VocabularyError
from EUSVoiceLabelLib.data.mentions import (Mention, mentions_from_transcript, read_mentions,
                                            read_mentions_csv, write_mentions_csv)
from EUSVoiceLabelLib.data.vocabulary import LabelSet, load_labelset, normalize_words


def test_default_vocabulary_is_the_papers_five():
    ls = LabelSet.default()
    assert ls.ids == ["pancreas", "portal_vein", "pancreatic_duct", "portal_venous_confluence",
                      "bile_duct"]
    assert ls.class_weights() == [2.6, 1.7, 1.1, 1.7, 1.0]
    # max_count / count on the paper's Table I counts.
    w = ls.class_weights({"pancreas": 16, "portal_vein": 24, "pancreatic_duct": 38,
                          "portal_venous_confluence": 24, "bile_duct": 41})
    assert [round(v, 1) for v in w] == [2.6, 1.7, 1.1, 1.7, 1.0]


@pytest.mark.parametrize("text,expected", [
    ("and this is the P.D. here", ["pancreatic_duct"]),
    ("There's the Common Bile Duct.", ["bile_duct"]),
    ("the bile duct and the CBD", ["bile_duct", "bile_duct"]),
    ("head of the pancreas, then the duct of Wirsung", ["pancreas", "pancreatic_duct"]),
    ("portal venous confluence", ["portal_venous_confluence"]),
    ("the PVC next to the portal vein", ["portal_venous_confluence", "portal_vein"]),
    ("nothing to see, moving the scope", []),
    ("pancreatic duct", ["pancreatic_duct"]),  # longest match beats 'pancreas'-like prefixes
])
def test_synonym_matching(text, expected):
    assert [m.label for m in LabelSet.default().find_in_text(text)] == expected


def test_normalize_words_collapses_acronym_dots():
    assert normalize_words("C.B.D. and p.d, spleno-portal") == ["cbd", "and", "pd", "spleno",
                                                                 "portal"]


def test_custom_vocabulary_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"labels": [
        {"id": "liver", "name": "Liver", "synonyms": ["hepatic parenchyma"],
         "color": [255, 0, 0], "weight": 2},
        {"id": "gallbladder", "synonyms": ["GB"]}]}))
    ls = load_labelset(folder=tmp_path)
    assert ls.ids == ["liver", "gallbladder"]
    assert ls.get("liver").color == (1.0, 0.0, 0.0)
    assert ls.resolve("G.B.") == "gallbladder" and ls.resolve("Liver") == "liver"
    assert ls.class_weights() == [2.0, 1.0]
    ls.save(tmp_path / "copy.json")
    assert LabelSet.load(tmp_path / "copy.json") == ls


@pytest.mark.parametrize("content,match", [
    ("{", "not valid JSON"),
    ("[]", "non-empty list"),
    ('[{"name": "x"}]', "no string 'id'"),
    ('[{"id": "a"}, {"id": "a"}]', "appears twice"),
    ('[{"id": "a", "synonyms": ["x"]}, {"id": "b", "synonyms": ["X"]}]', "names both"),
    ('[{"id": "a", "color": [2, 3]}]', "color"),
    ('[{"id": "a", "weight": -1}]', "weight"),
    ('[{"id": "a b"}]', "plain identifier"),
])
def test_bad_vocabulary_files(tmp_path, content, match):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=match) as err:
        LabelSet.load(path)
    assert str(path) in str(err.value)


def test_mentions_csv_round_trip(tmp_path):
    path = tmp_path / "m.csv"
    ms = [Mention(2.5, "bile_duct", 3.1, "common bile duct", 0.93, "auto"),
          Mention(1.0, "pancreas")]
    write_mentions_csv(path, ms)
    back = read_mentions_csv(path)
    assert [m.time_s for m in back] == [1.0, 2.5]
    assert back[1] == Mention(2.5, "bile_duct", 3.1, "common bile duct", 0.93, "auto")


def test_mentions_csv_without_header_and_with_names(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("3.0,Portal vein,3.6\n1.5,PD\n")
    back = read_mentions_csv(path)
    assert [(m.time_s, m.label, m.end_s) for m in back] == [
        (1.5, "pancreatic_duct", None), (3.0, "portal_vein", 3.6)]


@pytest.mark.parametrize("content,match", [
    ("", "no mentions"),
    ("time_s,label\n", "no mentions"),
    ("time_s,label\n1.0,spleen\n", "unknown label 'spleen'.*known labels: pancreas"),
    ("time_s,label\nabc,pancreas\n", "not a number"),
    ("time_s,label\n-1,pancreas\n", "negative time"),
    ("time_s,label,end_s\n2.0,pancreas,1.0\n", "not after"),
    ("time_s,label\nnan,pancreas\n", "finite"),
    ("time_s,text\n1.0,x\n", "no 'label' column"),
])
def test_bad_mentions_files(tmp_path, content, match):
    path = tmp_path / "mentions.csv"
    path.write_text(content)
    with pytest.raises(MentionsError, match=match) as err:
        read_mentions_csv(path)
    assert str(path) in str(err.value)


def test_srt_transcript(tmp_path):
    path = tmp_path / "t.srt"
    path.write_text("1\n00:00:10,000 --> 00:00:12,000\nOK, this is the P.D. right here\n\n"
                    "2\n00:01:00,500 --> 00:01:01,500\nand the common bile duct\n\n"
                    "3\n00:01:05,000 --> 00:01:06,000\nmoving on\n")
    ms = mentions_from_transcript(path)
    assert [m.label for m in ms] == ["pancreatic_duct", "bile_duct"]
    assert all(m.source == "transcript" for m in ms)
    # Interpolated by character offset: "P.D." starts at char 16 of 31.
    assert ms[0].time_s == pytest.approx(10 + 2 * 16 / 31, abs=1e-6)
    assert ms[1].text == "common bile duct" and ms[1].end_s == pytest.approx(61.5)


def test_webvtt_with_word_timestamps(tmp_path):
    path = tmp_path / "t.vtt"
    path.write_text("WEBVTT\n\nNOTE made by a recogniser\n\n"
                    "00:05.000 --> 00:08.000 align:start\n"
                    "<v Dr A>and <00:05.400>here <00:05.700>is <00:05.900>the "
                    "<00:06.100>portal <00:06.450>vein <00:06.800>now</v>\n")
    ms = read_mentions(path)
    assert len(ms) == 1
    assert ms[0].label == "portal_vein"
    assert ms[0].time_s == pytest.approx(6.1) and ms[0].end_s == pytest.approx(6.8)


@pytest.mark.parametrize("content,match", [
    ("just some text\n", "no timed cues"),
    ("1\n00:00:05,000 --> 00:00:02,000\nthe PD\n", "ends before"),
    ("1\n00:00:xx,000 --> 00:00:02,000\nthe PD\n", "bad cue timing"),
])
def test_bad_transcripts(tmp_path, content, match):
    path = tmp_path / "t.srt"
    path.write_text(content)
    with pytest.raises(MentionsError, match=match):
        mentions_from_transcript(path)
