"""The database layer: tables, engines, dialect SQL, migrations, and the
queue's statements (the ``*_sql.py`` modules, one per concern)."""
