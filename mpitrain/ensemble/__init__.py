"""Tree ensembles across MPI ranks: forests merged from every rank's trees, and boosting."""

__all__: list[str] = []
