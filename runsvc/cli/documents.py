"""Run files as the CLI reads them: the shared YAML reader, with "did you mean" hints."""

from __future__ import annotations

from runsvc.domain.suggest import unknown_field_hint
from runsvc.infra import documents
from runsvc.infra.documents import DocumentError

__all__ = ["Document", "DocumentError"]


class Document(documents.Document):
    hint = staticmethod(unknown_field_hint)
