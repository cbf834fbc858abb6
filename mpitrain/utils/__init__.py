"""Small shared pieces of the estimators: classes and random states agreed across ranks, validation, version fixes."""
