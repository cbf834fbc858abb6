"""Data sets to try mpitrain on: synthetic files and the NYC flights of 2013."""

from mpitrain.datasets._flights import (
    FLIGHT_NUMERIC,
    write_flights,
)
from mpitrain.datasets._synthetic import (
    MAKE_DATA_BLOCK_ROWS,
    make_data,
)

__all__ = [
    "FLIGHT_NUMERIC",
    "write_flights",
    "MAKE_DATA_BLOCK_ROWS",
    "make_data",
]
