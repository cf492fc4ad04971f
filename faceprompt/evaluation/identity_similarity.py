"""Identity similarity: how close the faces in generated images are to the person in the reference photos.

The score is the cosine similarity between the largest face of a generated image and the normalised mean of the
reference faces, both embedded by the *evaluator's* face model. Papers score with a face model other than the one
the adapter was conditioned on (a model scores its own embeddings too kindly), so the reference photos are
embedded again here rather than taken from the identity file used for generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EvaluationError, NoFaceFoundError
from ..faces import Face, FaceAnalyzer, Workers
from ..faces.face import l2_normalize
from ..identity import Identity
from ..images import ImageInput


@dataclass(frozen=True)
class FaceScore:
    """One generated image: how many faces passed the detector's filters, and the largest one's similarity."""

    faces: int
    similarity: float | None  # None when no face was found


class IdentityScorer:
    """Scores images against one person's reference embedding, with ``analyzer``'s face model.

    Build it with :meth:`from_photos` (the reference photos embedded by the evaluator) or :meth:`from_identity`.

    Args:
        reference: the person's embedding from ``analyzer``'s face model (normalised here).
        analyzer: the evaluator's :class:`FaceAnalyzer`.
    """

    def __init__(self, reference: np.ndarray, analyzer: FaceAnalyzer):
        self.reference = l2_normalize(np.asarray(reference, dtype=np.float32))
        self.analyzer = analyzer

    @classmethod
    def from_photos(cls, photos: Sequence[ImageInput], analyzer: FaceAnalyzer | None = None) -> IdentityScorer:
        """The normalised mean of the largest face of each photo (default analyzer: ``FaceAnalyzer("auto")``)."""
        if not photos:
            raise EvaluationError("identity similarity needs at least one reference photo of the person")
        analyzer = analyzer or FaceAnalyzer()
        embeddings = []
        for photo in photos:
            try:
                face = analyzer.get_face(photo, "largest")
            except NoFaceFoundError as error:
                raise EvaluationError(
                    f"reference photo: {error}; give photos in which the person's face is visible"
                ) from error
            embeddings.append(l2_normalize(face.embedding))
        return cls(np.mean(embeddings, axis=0), analyzer)

    @classmethod
    def from_identity(cls, identity: Identity, analyzer: FaceAnalyzer) -> IdentityScorer:
        """Reuse an identity's embeddings (made with ``analyzer``'s face model): no second analysis of its photos."""
        identity.check_face_model(analyzer.face_model)
        return cls(identity.embedding("norm_mean"), analyzer)  # the normalised mean of unit-length embeddings

    @property
    def face_model(self) -> str:
        return self.analyzer.face_model

    def score(self, image: ImageInput) -> FaceScore:
        return self._face_score(self.analyzer.detect(image))

    def score_files(self, paths: Sequence[str | Path], *, workers: Workers = 1) -> list[FaceScore]:
        """:meth:`score` for image files, batched (``workers`` processes: FaceAnalyzer.analyze_files)."""
        scores = []
        for analysis in self.analyzer.analyze_files([str(path) for path in paths], workers=workers):
            if analysis.error is not None:
                raise EvaluationError(f"{analysis.path}: {analysis.error}")
            scores.append(self._face_score(analysis.faces))
        return scores

    def _face_score(self, faces: list[Face]) -> FaceScore:
        if not faces:
            return FaceScore(0, None)
        largest = faces[0]  # the analyzer orders faces largest first
        return FaceScore(len(faces), float(np.dot(l2_normalize(largest.embedding), self.reference)))
