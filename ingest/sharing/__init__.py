"""Sharing data with other departments (issue 19): the sharing file and its classes and grants
(``config.py``), the decision for one read (``decide.py``) and the access audit
(``audit.py``). The API enforces it in ``ingest/api/sharing.py``."""
