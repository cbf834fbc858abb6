"""Small shared pieces of the estimators: classes agreed across ranks, validation, version fixes."""
