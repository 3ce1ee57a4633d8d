"""The training data path lives in :mod:`limitr.data.studies` and :mod:`limitr.data.prepare`
(one preparation for training, validation and evaluation); these names are kept for callers
that import them from here."""

from limitr.data.prepare import (  # noqa: F401
    ModelInputs,
    StudyBatch,
    StudyItem,
    collate_studies,
    crop_offsets,
    decode_grey,
)
from limitr.data.studies import (  # noqa: F401
    LATERAL_DROP_REASONS,
    SKIP_REASONS,
    StudyDataset,
    study_files,
    token_file,
)
