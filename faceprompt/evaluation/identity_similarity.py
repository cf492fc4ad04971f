"""Identity similarity: how close the faces in generated images are to the person in the reference photos.

The score is the cosine similarity between the largest face of a generated image and the normalised mean of the
reference faces, both embedded by the *evaluator's* face model. Papers score with a face model other than the one
the adapter was conditioned on (a model scores its own embeddings too kindly), so the reference photos are
embedded again here rather than taken from the identity file used for generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EvaluationError, NoFaceFoundError
from ..faces import FaceAnalyzer
from ..faces.face import l2_normalize
from ..images import ImageInput


@dataclass(frozen=True)
class FaceScore:
    """One generated image: how many faces passed the detector's filters, and the largest one's similarity."""

    faces: int
    similarity: float | None  # None when no face was found


class IdentityScorer:
    """Scores images against reference photos of one person with ``analyzer``'s face model.

    Args:
        references: photos of the person (paths, PIL images or RGB arrays); the largest face of each is used.
        analyzer: the evaluator's :class:`FaceAnalyzer` (default: ``FaceAnalyzer("auto")``).
    """

    def __init__(self, references: Sequence[ImageInput], analyzer: FaceAnalyzer | None = None):
        if not references:
            raise EvaluationError("identity similarity needs at least one reference photo of the person")
        self.analyzer = analyzer or FaceAnalyzer()
        embeddings = []
        for reference in references:
            try:
                face = self.analyzer.get_face(reference, "largest")
            except NoFaceFoundError as error:
                raise EvaluationError(f"reference photo: {error}; give photos in which the person's face is visible") from error
            embeddings.append(l2_normalize(face.embedding))
        self.reference = l2_normalize(np.mean(embeddings, axis=0))

    @property
    def face_model(self) -> str:
        return self.analyzer.face_model

    def score(self, image: ImageInput) -> FaceScore:
        faces = self.analyzer.detect(image)
        if not faces:
            return FaceScore(0, None)
        largest = faces[0]  # detect() orders faces largest first
        return FaceScore(len(faces), float(np.dot(l2_normalize(largest.embedding), self.reference)))
