"""The registry store: SQLAlchemy models, repository, message journal and migrations.

Everything that touches the database lives here; the rest of the engine sees only
`engine.domain` values and the pipeline's `Journal` protocol.
"""
