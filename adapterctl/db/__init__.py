"""The database: typed models, engines and sessions, and the migration runner."""
