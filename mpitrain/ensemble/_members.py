"""What voting and stacking share: members of different kinds, each fitted across the ranks.

A combining estimator holds ``(name, estimator)`` pairs, as scikit-learn's
``VotingClassifier`` and ``StackingClassifier`` do.  Every member is an
mpitrain estimator, so each is fitted on the rows of all ranks with its own
strategy (exact least squares or L-BFGS, merged forest, SVM cascade, MLP)
and leaves a plain scikit-learn model in its ``estimator_``; the combined
``estimator_`` is then made of those plain models.

Here, once for both (pure or local unless said otherwise):

- :class:`MemberParams`: ``get_params``/``set_params`` that reach into the
  members (``"lr__C"``), as scikit-learn's heterogeneous ensembles do, so a
  search or ``clone`` sees them;
- :func:`check_members`: the names and kinds of the members, refused with
  one message on every rank before the fit's work;
- :func:`fit_member`: one member cloned onto the fit's communicator and
  fitted (collective).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import clone, is_classifier, is_regressor

from mpitrain.base import DistributedEstimator

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "DROP",
    "MemberParams",
    "check_members",
    "check_member",
    "fit_member",
    "kept",
    "is_drop",
    "unfitted_plain",
]

#: A member left out, as scikit-learn spells it.
DROP = "drop"


class MemberParams:
    """Parameters of ``(name, estimator)`` members, reachable as ``name`` and ``name__param``.

    Put before :class:`~mpitrain.base.DistributedEstimator` in the bases.
    ``get_params(deep=True)`` lists every member under its name and its
    parameters with the name as prefix; ``set_params(name=estimator)``
    replaces a member, ``set_params(name__param=value)`` changes one.
    """

    #: The parameter that holds the members.
    _members_param = "estimators"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters, with the members' when ``deep``. Local."""
        out = super().get_params(deep=deep)
        members = getattr(self, self._members_param)
        if not deep or not _is_member_list(members):
            return out
        for name, member in members:
            out[name] = member
            if hasattr(member, "get_params"):
                for key, value in member.get_params(deep=True).items():
                    out[f"{name}__{key}"] = value
        return out

    def set_params(self, **params: Any):
        """Set parameters; a member's by ``name`` or ``name__param``. Local."""
        # scikit-learn's order: the list itself, then whole members, then the rest.
        attr = self._members_param
        if attr in params:
            setattr(self, attr, params.pop(attr))
        members = getattr(self, attr)
        if _is_member_list(members) and members:
            names = [name for name, _ in members]
            for key in list(params):
                if "__" not in key and key in names:
                    replacement = params.pop(key)
                    setattr(
                        self,
                        attr,
                        [
                            (name, replacement if name == key else member)
                            for name, member in members
                        ],
                    )
                    members = getattr(self, attr)
        if params:
            super().set_params(**params)
        return self


def _is_member_list(members: Any) -> bool:
    """Whether ``members`` is a list of ``(str, object)`` pairs. Pure."""
    return isinstance(members, (list, tuple)) and all(
        isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
        for item in members
    )


def check_members(
    owner: Any,
    estimators: Any,
    *,
    kind: str | None,
    param: str = "estimators",
) -> tuple[list[str], list[Any]]:
    """The members' names and estimators, checked. Local.

    Parameters are the same on every rank, so the error is too.  Each
    member must be an mpitrain estimator (a scikit-learn one would be
    fitted on each rank's rows apart) or ``"drop"``; names unique, without
    ``"__"`` and unlike the owner's parameters; at least one kept; with
    ``kind`` ``"classifier"`` or ``"regressor"``, every kept member of
    that kind.

    Raises
    ------
    ValueError, TypeError
    """
    if not _is_member_list(estimators) or not estimators:
        raise ValueError(
            f"Invalid '{param}' attribute, '{param}' should be a non-empty list of "
            "(string, estimator) tuples."
        )
    names = [name for name, _ in estimators]
    members = [member for _, member in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"Names provided are not unique: {names!r}")
    clash = sorted(set(names) & set(owner.get_params(deep=False)))
    if clash:
        raise ValueError(
            f"Estimator names conflict with constructor arguments: {clash!r}"
        )
    dunder = [name for name in names if "__" in name]
    if dunder:
        raise ValueError(f"Estimator names must not contain __: got {dunder!r}")
    if all(_is_drop(member) for member in members):
        raise ValueError(
            "All estimators are dropped. At least one is required to be an estimator."
        )
    for name, member in estimators:
        if _is_drop(member):
            continue
        check_member(name, member)
        if kind == "classifier" and not is_classifier(member):
            raise ValueError(
                f"The estimator {type(member).__name__} ({name!r}) should be a classifier."
            )
        if kind == "regressor" and not is_regressor(member):
            raise ValueError(
                f"The estimator {type(member).__name__} ({name!r}) should be a regressor."
            )
    return names, members


def check_member(name: str, member: Any) -> None:
    """Refuse a member that is not an mpitrain estimator. Local.

    Raises
    ------
    TypeError
    """
    if isinstance(member, type):
        raise TypeError(
            f"{name!r}: expected an estimator instance ({member.__name__}()), got the class"
        )
    if not isinstance(member, DistributedEstimator):
        raise TypeError(
            f"{name!r} is {type(member).__module__.split('.')[0]}.{type(member).__name__}, "
            "not an mpitrain estimator: each member is fitted across the ranks, and a "
            "scikit-learn estimator (or a pipeline) would be fitted on each rank's rows "
            "apart; use the mpitrain estimator of the same name"
        )


def _is_drop(member: Any) -> bool:
    return isinstance(member, str) and member == DROP


def kept(names: Sequence[str], members: Sequence[Any]) -> list[tuple[str, Any]]:
    """The ``(name, member)`` pairs that are not ``"drop"``. Pure."""
    return [(n, m) for n, m in zip(names, members) if not _is_drop(m)]


def is_drop(member: Any) -> bool:
    """Whether a member is ``"drop"``. Pure."""
    return _is_drop(member)


def fit_member(
    member: DistributedEstimator,
    comm: Intracomm,
    X: Any,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
) -> DistributedEstimator:
    """A clone of ``member`` fitted on every rank's rows. Collective over ``comm``.

    The clone runs on ``comm`` (the ensemble's library communicator),
    whatever ``comm`` the member was given: the members run where the
    ensemble runs.  ``sample_weight`` is passed only when given, as
    scikit-learn's ensembles do.
    """
    fitted = clone(member).set_params(comm=comm)
    if sample_weight is None:
        return fitted.fit(X, y)
    return fitted.fit(X, y, sample_weight=sample_weight)


def unfitted_plain(member: Any) -> Any:
    """The unfitted scikit-learn estimator of an mpitrain member (``"drop"`` stays). Local."""
    if _is_drop(member):
        return member
    return member._unfitted_estimator()
