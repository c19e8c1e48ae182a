"""The embedding service: any teacher behind an HTTP API with keys, metering and idempotent retries.

``vl2v serve`` runs it; :class:`vl2v.teachers.remote.RemoteTeacher` is its client.
FastAPI is imported only by :mod:`vl2v.serving.service`.
"""

from vl2v.serving.keys import KeyRing, KeysFileError, add_key  # noqa: F401
from vl2v.serving.protocol import API_VERSION  # noqa: F401
