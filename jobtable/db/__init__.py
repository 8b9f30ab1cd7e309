"""The database layer: tables, engines, dialect SQL, migrations."""
