"""Using a trained model: encode a user's images and texts, search a gallery, ground phrases.

Imported by nothing else in the library; the ``search``, ``ground`` and ``explore`` commands
sit on it. See :mod:`limitr.use.model` for the API and an example.
"""

from limitr.use.explorer import Explorer
from limitr.use.gallery import Gallery, load_gallery
from limitr.use.model import GroundingMap, StudyImages, TrainedModel, load
from limitr.use.search import Hit, SearchResult

__all__ = ["Explorer", "Gallery", "GroundingMap", "Hit", "SearchResult", "StudyImages", "TrainedModel",
           "load", "load_gallery"]
