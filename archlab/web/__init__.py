"""The review UI: `archlab serve RUN` (read-only; see server.py, app.py, data.py and static/)."""
