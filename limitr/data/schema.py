"""The Parquet schemas stages exchange, written down once.

Geometry convention (every image column has it): an original image of
``orig_height x orig_width`` pixels is resized by ``scale`` (long side -> image_size) and
zero-padded to an ``image_size`` square with ``pad_left`` / ``pad_top`` pixels before it, so

    x_resized = x_original * scale + pad_left
    y_resized = y_original * scale + pad_top

Boxes are ``x, y, w, h`` in original pixels, origin top-left, as MS-CXR gives them.
"""

from __future__ import annotations

import pyarrow as pa

#: The 14 CheXpert observations, in the column order of mimic-cxr-2.0.0-chexpert.csv.gz.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

#: The five classes of the CheXpert 5x200 protocol.
CLASS_RETRIEVAL_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

#: The eight MS-CXR categories.
MS_CXR_CATEGORIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Lung Opacity",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
)

SPLITS: tuple[str, ...] = ("train", "validate", "test")


def _geometry_fields(prefix: str) -> list[pa.Field]:
    return [
        pa.field(f"{prefix}orig_height", pa.int32()),
        pa.field(f"{prefix}orig_width", pa.int32()),
        pa.field(f"{prefix}scale", pa.float64()),
        pa.field(f"{prefix}pad_left", pa.int32()),
        pa.field(f"{prefix}pad_top", pa.int32()),
    ]


_LABEL_FIELDS = [pa.field(name, pa.float32()) for name in CHEXPERT_LABELS]

#: One row per study: ``DIR/{train,validate,test}/part-NNNNN.parquet``.
STUDY_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("study_id", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("frontal_dicom_id", pa.string(), nullable=False),
        pa.field("frontal_view", pa.string(), nullable=False),  # PA or AP
        pa.field("frontal_image", pa.binary(), nullable=False),  # PNG, image_size square, grey
        *_geometry_fields("frontal_"),
        pa.field("lateral_dicom_id", pa.string()),  # null when the study has no usable lateral
        pa.field("lateral_view", pa.string()),  # LATERAL or LL
        pa.field("lateral_image", pa.binary()),
        *_geometry_fields("lateral_"),
        pa.field("text", pa.string(), nullable=False),  # FINDINGS then IMPRESSION, cleaned, lower case
        pa.field("text_source", pa.string(), nullable=False),  # findings+impression|findings|impression|last_paragraph
        pa.field("findings", pa.string()),  # raw section text
        pa.field("impression", pa.string()),  # raw section text (CONCLUSION normalised to it)
        *_LABEL_FIELDS,  # 1.0 positive, 0.0 negative, -1.0 uncertain, null not mentioned
    ]
)

#: One row per MS-CXR phrase (several boxes): ``DIR/grounding.parquet``.
GROUNDING_SCHEMA = pa.schema(
    [
        pa.field("phrase_id", pa.int64(), nullable=False),  # row order, stable
        pa.field("dicom_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.int64()),
        pa.field("study_id", pa.int64()),
        pa.field("category_name", pa.string(), nullable=False),
        pa.field("label_text", pa.string(), nullable=False),  # the phrase as given
        pa.field("text", pa.string(), nullable=False),  # the phrase cleaned for the model
        pa.field("boxes", pa.list_(pa.list_(pa.float64(), 4)), nullable=False),  # [[x, y, w, h], ...] original px
        pa.field("image", pa.binary(), nullable=False),  # PNG, processed like frontal_image
        *_geometry_fields(""),
    ]
)

#: One row per image of the 5x200 table: ``DIR/class_retrieval.parquet``.
CLASS_RETRIEVAL_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),  # row order, stable
        pa.field("path", pa.string(), nullable=False),
        pa.field("dicom_id", pa.string()),
        pa.field("subject_id", pa.int64()),
        pa.field("study_id", pa.int64()),
        pa.field("class_name", pa.string(), nullable=False),  # the one positive 5x200 class
        pa.field("text", pa.string()),  # the study's report text when known, else null
        pa.field("image", pa.binary(), nullable=False),
        *_geometry_fields(""),
        *_LABEL_FIELDS,
    ]
)

#: Token shards: ``DIR/{train,validate,test}.parquet`` keyed by study_id, and
#: ``DIR/grounding.parquet`` keyed by phrase_id, ``DIR/class_retrieval.parquet`` by item_id.
#: Sequences are padded to max_length. ``word_ids`` is the index of the word each token
#: belongs to (0-based, from the fast tokenizer's word ids), -1 for [CLS], [SEP] and padding.
def token_schema(key: str = "study_id") -> pa.Schema:
    return pa.schema(
        [
            pa.field(key, pa.int64(), nullable=False),
            pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("attention_mask", pa.list_(pa.int8()), nullable=False),
            pa.field("word_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("n_words", pa.int32(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
        ]
    )


TOKEN_SCHEMA = token_schema("study_id")
