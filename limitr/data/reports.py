"""MIMIC-CXR free-text reports: section parsing and cleaning for the model.

A report file looks like this (every line starts with one space, blank lines hold one
space, addenda come first and are separated from the final report by a line of underscores)::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)
     \n
     INDICATION:  ___ with cough.
     \n
     FINDINGS:
     \n
     The lungs are clear. No pleural effusion or pneumothorax.
     \n
     IMPRESSION:
     \n
     No acute cardiopulmonary process.

A section header follows a newline and one space, is upper case (letters, spaces,
parentheses, slash, comma, dash) and ends with a colon. Header names are normalised
(``CONCLUSION`` and ``FINDINGS/IMPRESSION`` -> ``impression``, misspellings, view
descriptions such as ``CHEST, TWO VIEWS`` -> ``findings``). The model text is FINDINGS then
IMPRESSION; where a report has neither, the last paragraph of its last section is used and
the source says so (``text_source == "last_paragraph"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

#: ``\n`` + one space + an upper-case name + ``:`` followed by whitespace (not consumed, so a
#: header directly after another header's newline is still found).
_HEADER = re.compile(r"\n ([A-Z ()/,-]+):(?=\s|$)")
#: A separator line between an addendum and the report it amends.
_SEPARATOR = re.compile(r"^[ \t]*_{8,}[ \t]*$", re.MULTILINE)
#: Paragraphs are separated by lines holding only whitespace.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
#: De-identified spans (``___``); two or more underscores are never report text.
_DEIDENTIFIED = re.compile(r"_{2,}")
_WHITESPACE = re.compile(r"\s+")
#: Control characters other than tab and newline: what a stray byte decodes to.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:?!])")
_REPEATED_PUNCT = re.compile(r"([.,;:])(?:\s*\1)+")

_SYNONYMS: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "findings and impression": "impression",
    "impression/findings": "impression",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "indication": "indication",
    "clinical indication": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "technique": "technique",
    "history": "history",
    "clinical history": "history",
    "patient history": "history",
    "clinical information": "history",
    "notification": "notification",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "addendum": "addendum",
    "wet read": "wet read",
    "wetread": "wet read",
    # misspellings seen in the release
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
}

#: Headers that describe the study as a whole ("CHEST, PA AND LATERAL:") hold findings.
_VIEW_DESCRIPTION = re.compile(
    r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and|"
    r"two views|frontal view|pa view|ap view|one view|lateral view|frontal upright|"
    r"frontal semi-upright"
)
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")


def normalise_section_name(header: str) -> str:
    """The canonical name of a section header, e.g. ``"CONCLUSION"`` -> ``"impression"``."""
    name = _WHITESPACE.sub(" ", header).strip().lower()
    if name in _SYNONYMS:
        return _SYNONYMS[name]
    for main in _MAIN_SECTIONS:  # impression first: "FINDINGS AND IMPRESSION" concludes
        if main in name:
            return main
    if _VIEW_DESCRIPTION.search(name):
        return "findings"
    return name


@dataclass(frozen=True)
class Section:
    """One section of a report: its canonical ``name`` and raw ``text`` (header excluded)."""

    name: str
    text: str


@dataclass(frozen=True)
class ParsedReport:
    """The parts of one report the pipeline uses.

    ``findings`` / ``impression``: raw section text (stripped, line breaks kept), several
    sections of the same kind joined by a blank line; None when absent or empty.
    ``last_paragraph``: the fallback text, set only when neither section exists.
    ``sections``: every section of the final report in order (``preamble`` first).
    ``addenda``: the raw text of each addendum that precedes the final report.
    """

    findings: Optional[str]
    impression: Optional[str]
    last_paragraph: Optional[str]
    sections: tuple[Section, ...] = field(default_factory=tuple)
    addenda: tuple[str, ...] = field(default_factory=tuple)

    @property
    def text_source(self) -> Optional[str]:
        """``findings+impression``, ``findings``, ``impression``, ``last_paragraph`` or None."""
        if self.findings and self.impression:
            return "findings+impression"
        if self.findings:
            return "findings"
        if self.impression:
            return "impression"
        if self.last_paragraph:
            return "last_paragraph"
        return None

    @property
    def model_text(self) -> str:
        """FINDINGS then IMPRESSION (or the fallback), cleaned and lower case; "" when none."""
        if self.findings or self.impression:
            parts = [clean_text(p) for p in (self.findings, self.impression) if p]
        else:
            parts = [clean_text(self.last_paragraph or "")]
        return " ".join(p for p in parts if p)


def clean_text(text: str) -> str:
    """Text for the model: ``___`` spans removed, whitespace collapsed, lower case."""
    text = _DEIDENTIFIED.sub(" ", _CONTROL.sub(" ", text))
    text = _WHITESPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)  # "dr. ___ ." -> "dr. ." -> "dr.."
    text = _REPEATED_PUNCT.sub(r"\1", text)  # -> "dr."
    return text.lower()


def decode_report(data: bytes) -> tuple[str, bool]:
    """Decode report bytes; returns ``(text, was_utf8)``.

    Bytes that are not UTF-8 are read as Windows-1252 (then Latin-1, which never fails), so
    a stray byte costs one character, not the report; control characters are dropped.
    """
    try:
        return data.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return _CONTROL.sub("", text), False


def split_sections(report: str) -> list[Section]:
    """The sections of one report (no addenda) in order; text before the first header is
    ``preamble``, and a report without any header is one ``full report`` section."""
    text = report.replace("\r\n", "\n").replace("\r", "\n")
    if not text.startswith("\n"):
        text = "\n" + text  # a header on the first line follows no newline
    headers = list(_HEADER.finditer(text))
    if not headers:
        return [Section("full report", text)]
    sections = [Section("preamble", text[: headers[0].start()])]
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        sections.append(Section(normalise_section_name(match.group(1)), text[match.end() : end]))
    return sections


def _join(sections: list[Section], name: str) -> Optional[str]:
    texts = [s.text.strip() for s in sections if s.name == name and s.text.strip()]
    return "\n\n".join(texts) if texts else None


def _last_paragraph(sections: list[Section]) -> Optional[str]:
    """The last paragraph of the last section, unless it is that section's only paragraph
    under a header (then it is the header's own content, such as an indication)."""
    last = sections[-1]
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(last.text) if p.strip()]
    if last.name in ("full report", "preamble"):
        # a report without headers: skip a title line such as "FINAL REPORT"
        paragraphs = [p for p in paragraphs if not _is_title(p)]
        return paragraphs[-1] if paragraphs else None
    return paragraphs[-1] if len(paragraphs) >= 2 else None


def _is_title(paragraph: str) -> bool:
    return bool(re.fullmatch(r"[A-Z ()/,-]+:?", paragraph.strip()))


def parse_report(report: str) -> ParsedReport:
    """Parse one report file's text into FINDINGS, IMPRESSION and the fallback.

    Addenda (the parts before the last separator line of underscores) are kept apart: the
    model text comes from the final report; where that has neither FINDINGS nor IMPRESSION,
    the latest addendum that has them is used before falling back to the last paragraph.
    """
    parts = _SEPARATOR.split(report.replace("\r\n", "\n").replace("\r", "\n"))
    parts = [p for p in parts if p.strip()] or [""]
    final, addenda = parts[-1], parts[:-1]
    sections = split_sections(final)
    findings, impression = _join(sections, "findings"), _join(sections, "impression")
    if findings is None and impression is None:
        for addendum in reversed(addenda):
            add_sections = split_sections(addendum)
            findings, impression = _join(add_sections, "findings"), _join(add_sections, "impression")
            if findings or impression:
                break
    fallback = None
    if findings is None and impression is None:
        fallback = _last_paragraph(sections)
    return ParsedReport(
        findings=findings,
        impression=impression,
        last_paragraph=fallback,
        sections=tuple(sections),
        addenda=tuple(a.strip() for a in addenda),
    )
