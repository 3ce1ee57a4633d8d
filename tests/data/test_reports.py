"""Report section parsing and cleaning on hand-written reports in the MIMIC-CXR layout."""

from __future__ import annotations

import pytest

from limitr.data.reports import (clean_text, decode_report, normalise_section_name, parse_report,
                                 split_sections)


def report(*lines: str) -> str:
    """A report as the release writes it: every line starts with one space."""
    return "\n".join(" " + line if line else " " for line in lines) + "\n"


STANDARD = report(
    "                                 FINAL REPORT",
    "EXAMINATION:  CHEST (PA AND LAT)",
    "",
    "INDICATION:  ___ year old woman with cough.  Eval for pneumonia.",
    "",
    "COMPARISON:  ___",
    "",
    "FINDINGS: ",
    "",
    "PA and lateral views of the chest.  The lungs are clear without focal",
    "consolidation.  No pleural effusion or pneumothorax.",
    "",
    "IMPRESSION: ",
    "",
    "No acute cardiopulmonary process.",
)


def test_findings_then_impression() -> None:
    parsed = parse_report(STANDARD)
    assert parsed.findings == (
        "PA and lateral views of the chest.  The lungs are clear without focal\n"
        " consolidation.  No pleural effusion or pneumothorax."
    )
    assert parsed.impression == "No acute cardiopulmonary process."
    assert parsed.text_source == "findings+impression"
    assert parsed.model_text == (
        "pa and lateral views of the chest. the lungs are clear without focal consolidation. "
        "no pleural effusion or pneumothorax. no acute cardiopulmonary process."
    )
    names = [s.name for s in parsed.sections]
    assert names == ["preamble", "examination", "indication", "comparison", "findings", "impression"]


def test_conclusion_is_impression() -> None:
    text = report("FINAL REPORT", "INDICATION: Cough.", "", "CONCLUSION:", "", "Small left effusion.")
    parsed = parse_report(text)
    assert parsed.findings is None
    assert parsed.impression == "Small left effusion."
    assert parsed.text_source == "impression"
    assert parsed.model_text == "small left effusion."


def test_findings_slash_impression_is_impression() -> None:
    text = report("FINAL REPORT", "FINDINGS/IMPRESSION:  Heart size is normal.  Lungs clear.")
    parsed = parse_report(text)
    assert parsed.impression == "Heart size is normal.  Lungs clear."
    assert parsed.findings is None
    assert parsed.model_text == "heart size is normal. lungs clear."


@pytest.mark.parametrize(
    "header, name",
    [("CONCLUSION", "impression"), ("FINDINGS AND IMPRESSION", "impression"),
     ("FINDINGS/IMPRESSION", "impression"), ("IMPRESSON", "impression"), ("FINDING", "findings"),
     ("CHEST, TWO VIEWS", "findings"), ("PA AND LATERAL VIEWS OF THE CHEST", "findings"),
     ("REASON FOR EXAMINATION", "indication"), ("CLINICAL HISTORY", "history"),
     ("COMPARISONS", "comparison"), ("WET READ", "wet read"), ("NOTIFICATION", "notification")],
)
def test_section_synonyms(header: str, name: str) -> None:
    assert normalise_section_name(header) == name


def test_addendum_before_the_final_report() -> None:
    text = report(
        "                                 FINAL REPORT",
        "ADDENDUM:",
        "",
        "Findings were discussed with Dr. ___ at 10:00 on ___.",
        "",
        "_" * 78,
        "                                 FINAL REPORT",
        "INDICATION:  Shortness of breath.",
        "",
        "FINDINGS:",
        "",
        "Mild pulmonary edema.",
        "",
        "IMPRESSION:",
        "",
        "Mild edema.",
    )
    parsed = parse_report(text)
    assert parsed.findings == "Mild pulmonary edema."
    assert parsed.impression == "Mild edema."
    assert len(parsed.addenda) == 1 and "discussed with Dr." in parsed.addenda[0]
    assert "discussed" not in parsed.model_text


def test_addendum_used_when_the_final_report_has_no_sections() -> None:
    text = report("ADDENDUM:", "", "IMPRESSION: Corrected: right lower lobe pneumonia.",
                  "", "_" * 60, "FINAL REPORT", "INDICATION: fever.")
    parsed = parse_report(text)
    assert parsed.impression == "Corrected: right lower lobe pneumonia."


def test_no_sections_falls_back_to_last_paragraph() -> None:
    text = report("                                 FINAL REPORT", "",
                  "Chest radiograph, two views.", "", "The lungs are clear.  Heart size normal.")
    parsed = parse_report(text)
    assert parsed.findings is None and parsed.impression is None
    assert parsed.text_source == "last_paragraph"
    assert parsed.model_text == "the lungs are clear. heart size normal."
    assert [s.name for s in split_sections(text)] == ["full report"]


def test_last_paragraph_of_the_last_section_only_after_its_first() -> None:
    only_indication = report("FINAL REPORT", "INDICATION:  Cough.", "", "COMPARISON:  None.")
    assert parse_report(only_indication).text_source is None
    assert parse_report(only_indication).model_text == ""
    trailing = report("FINAL REPORT", "INDICATION:  Cough.", "", "COMPARISON:  None.", "",
                      "Lungs are hyperinflated.  No consolidation.")
    parsed = parse_report(trailing)
    assert parsed.text_source == "last_paragraph"
    assert parsed.model_text == "lungs are hyperinflated. no consolidation."


def test_empty_findings_section_is_ignored() -> None:
    text = report("FINAL REPORT", "FINDINGS:", "", "IMPRESSION:", "", "Unchanged cardiomegaly.")
    parsed = parse_report(text)
    assert parsed.findings is None
    assert parsed.text_source == "impression"


def test_deidentified_spans_and_whitespace_are_cleaned() -> None:
    assert clean_text("  Compared with ___   at ___ .\n\n Dr. ___ was  paged. ") == (
        "compared with at. dr. was paged."
    )
    assert clean_text("Tip ___ 3 cm above the carina.") == "tip 3 cm above the carina."
    assert "_" not in clean_text("Findings ______ discussed")


def test_non_utf8_bytes_keep_the_report() -> None:
    good = STANDARD.encode("utf-8")
    text, was_utf8 = decode_report(good)
    assert was_utf8 and text == STANDARD
    bad = STANDARD.replace("cough", "cough\u00e9").encode("latin-1") + b"\x81\x9d"
    text, was_utf8 = decode_report(bad)
    assert not was_utf8
    parsed = parse_report(text)
    assert parsed.impression == "No acute cardiopulmonary process."
    assert "cough\u00e9" in text


def test_windows_line_endings() -> None:
    parsed = parse_report(STANDARD.replace("\n", "\r\n"))
    assert parsed.text_source == "findings+impression"
    assert parsed.impression == "No acute cardiopulmonary process."
