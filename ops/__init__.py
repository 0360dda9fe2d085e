"""The operator command `chainlit-persist` (users, schema, export/import/copy, retention,
erasure, the doctor and the storage sweep). Entry point: `ops.cli:main`."""
