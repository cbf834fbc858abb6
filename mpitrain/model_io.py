"""Model files that cannot run code: saved and loaded with skops.

A pickle (what ``joblib.dump`` writes) can run any code when it is loaded,
so a model file passed between users or jobs is a program.  mpitrain saves
its models with :mod:`skops.io` instead: a zip archive of a JSON schema and
numpy arrays, from which skops builds only the types it is told to trust.
:func:`load_model` trusts exactly :data:`TRUSTED_TYPES`, the types that
mpitrain's own fitted models are made of, and refuses anything else,
naming the types.  Pickle and joblib files are refused unless the caller
says that it trusts the file (``trusted=True``, ``--trust-pickle``).

Files that hold raw data rows (models keeping support vectors or fitted
rows) are created with mode 0600 whatever the umask: the data they came
from may be private.  See ``docs/trust.md``.

No MPI here: every function is local; the workflow agrees on errors.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

from mpitrain.errors import MpitrainError

__all__ = [
    "TRUSTED_TYPES",
    "RAW_ROW_ATTRIBUTES",
    "UntrustedModelError",
    "save_model",
    "load_model",
    "model_to_bytes",
    "model_from_bytes",
    "holds_raw_rows",
    "file_kind",
    "preload_writer",
]

#: The fully qualified types that mpitrain's fitted models (and the states
#: its checkpoints keep) are made of, beyond plain Python and numpy values:
#: the ``estimator_`` of every mpitrain family, the pipelines the workflow
#: builds, and the families scikit-learn and XGBoost fit for it.  A skops
#: file holding any other class is refused.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        # Pipelines and preprocessing (mpitrain.preprocessing's estimator_).
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._polynomial.PolynomialFeatures",
        "sklearn.preprocessing._function_transformer.FunctionTransformer",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.impute._base.SimpleImputer",
        # QuantileClipper's FunctionTransformer applies np.clip.
        "numpy.clip",
        "numpy.dtype",
        # Linear models.
        "sklearn.linear_model._base.LinearRegression",
        "sklearn.linear_model._ridge.Ridge",
        "sklearn.linear_model._coordinate_descent.Lasso",
        "sklearn.linear_model._coordinate_descent.ElasticNet",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.linear_model._stochastic_gradient.SGDRegressor",
        # The loss objects of a fitted SGD model (checkpointed SGD rounds).
        "sklearn.linear_model._sgd_fast.Hinge",
        "sklearn.linear_model._sgd_fast.SquaredHinge",
        "sklearn.linear_model._sgd_fast.Log",
        "sklearn.linear_model._sgd_fast.ModifiedHuber",
        "sklearn.linear_model._sgd_fast.SquaredLoss",
        "sklearn.linear_model._sgd_fast.Huber",
        "sklearn.linear_model._sgd_fast.EpsilonInsensitive",
        "sklearn.linear_model._sgd_fast.SquaredEpsilonInsensitive",
        # loss="log_loss" keeps scikit-learn's binomial loss; skops names its
        # module "_loss" with scikit-learn 1.6.
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "_loss.CyHalfBinomialLoss",
        # Support vector machines.
        "sklearn.svm._classes.LinearSVC",
        "sklearn.svm._classes.SVC",
        "sklearn.svm._classes.SVR",
        # Trees and forests.
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.RandomForestRegressor",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.ExtraTreesRegressor",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._classes.ExtraTreeRegressor",
        "sklearn.tree._tree.Tree",
        # Neural networks.
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.neural_network._multilayer_perceptron.MLPRegressor",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "numpy.random.mtrand.RandomState",
        # PCA and k-means (mpitrain.decomposition, mpitrain.cluster).
        "sklearn.decomposition._pca.PCA",
        "sklearn.cluster._kmeans.KMeans",
        # Gradient boosting.
        "xgboost.sklearn.XGBClassifier",
        "xgboost.sklearn.XGBRegressor",
        "xgboost.core.Booster",
        # Voting and stacking (mpitrain.ensemble): members of the families above.
        "sklearn.ensemble._voting.VotingClassifier",
        "sklearn.ensemble._voting.VotingRegressor",
        "sklearn.ensemble._stacking.StackingClassifier",
        "sklearn.ensemble._stacking.StackingRegressor",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.utils._bunch.Bunch",
    }
)

#: Fitted attributes that hold raw training rows: support vectors (SVC,
#: SVR), the rows of neighbour and kernel models.  A model with any of them
#: is written with mode 0600.
RAW_ROW_ATTRIBUTES = ("support_vectors_", "_fit_X", "X_fit_")

#: The first bytes of a zip archive (a skops file).
_ZIP_MAGIC = b"PK\x03\x04"
#: Compressed joblib files (zlib, gzip, bz2, xz, lzma, lz4): pickles inside.
_COMPRESSED_MAGIC = (
    b"\x78",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ",
    b"\x5d\x00",
    b"\x04\x22\x4d\x18",
)
#: Modules whose values skops itself vets (its defaults and get_untrusted_types).
_PLAIN_MODULES = ("builtins", "numpy")

_PICKLE_WHY = (
    "a pickle file can run any code when loaded, so mpitrain loads one only when "
    "told that you trust it: pass --trust-pickle (trusted=True in Python) only for "
    "a file you made yourself or trust as you would a program. Models written by "
    "mpitrain train are skops files, which load without running code"
)


class UntrustedModelError(MpitrainError, ValueError):
    """A model file that mpitrain refuses to load: a pickle, or types it does not write."""


# ----------------------------------------------------------------------------
# What a file is and what a model holds


def file_kind(path: str | os.PathLike) -> str:
    """``"skops"``, ``"pickle"``, ``"compressed pickle"`` or ``"unknown"``, by content. Local.

    A skops file is a zip archive; a pickle of protocol 2 or later starts
    with the byte 0x80; joblib's compressed files start with their
    compressor's magic bytes.  The name's extension plays no part.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        return "skops"
    if head[:1] == b"\x80":
        return "pickle"
    if any(head.startswith(m) for m in _COMPRESSED_MAGIC):
        return "compressed pickle"
    return "unknown"


def holds_raw_rows(model: Any) -> bool:
    """Whether a fitted model keeps raw data rows (:data:`RAW_ROW_ATTRIBUTES`). Pure.

    Looks into pipelines' steps, meta-estimators' ``estimator_``, and the
    members (``estimators_``) and ``final_estimator_`` of voting and stacking.
    """
    seen: set[int] = set()
    todo = [model]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for name in RAW_ROW_ATTRIBUTES:
            try:
                if getattr(obj, name, None) is not None:
                    return True
            except Exception:  # a property that needs more than a fitted model
                continue
        steps = getattr(obj, "steps", None)
        if isinstance(steps, list):
            todo.extend(step[-1] for step in steps if isinstance(step, tuple))
        inner = getattr(obj, "estimator_", None)
        if inner is not None:
            todo.append(inner)
        # Voting and stacking: their members and final estimator.
        members = getattr(obj, "estimators_", None)
        if isinstance(members, list):
            todo.extend(members)
        final = getattr(obj, "final_estimator_", None)
        if final is not None:
            todo.append(final)
    return False


def _classes_in_schema(data: bytes) -> set[str]:
    """The library classes (not builtins, not numpy) a skops file builds. Pure."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[str] = set()
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            module, name = node.get("__module__"), node.get("__class__")
            if isinstance(module, str) and isinstance(name, str):
                if module.split(".")[0] not in _PLAIN_MODULES:
                    found.add(f"{module}.{name}")
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def preload_writer() -> None:
    """Import what :func:`save_model` needs (skops: about 0.4 s of CPU) ahead of the save. Local.

    The rank that writes the model calls it on a thread while it still
    has rows to read, so the import is not paid after the fit, when every
    other rank waits for the file.
    """
    import skops.io  # noqa: F401


# ----------------------------------------------------------------------------
# Bytes


def model_to_bytes(model: Any) -> bytes:
    """A model as the bytes of a skops file. Pure."""
    from skops.io import dumps

    return dumps(model)


def model_from_bytes(
    data: bytes, *, what: str = "the model", trusted: bool = False
) -> Any:
    """A model from the bytes of a skops file, trusting :data:`TRUSTED_TYPES`. Pure.

    Raises :class:`UntrustedModelError` naming the types outside them
    (unless ``trusted``).
    """
    from skops.io import get_untrusted_types, loads

    if not data.startswith(_ZIP_MAGIC):
        raise UntrustedModelError(f"{what} is not a skops file (not a zip archive)")
    try:
        # What skops would refuse by default, and every library class the schema builds.
        untrusted = get_untrusted_types(data=data)
        refused = sorted((set(untrusted) | _classes_in_schema(data)) - TRUSTED_TYPES)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        # zipfile's "File is not a zip file" would not say which file, or why.
        raise UntrustedModelError(
            f"{what} is a damaged skops file (a truncated or corrupt zip archive: {exc})"
        ) from None
    if refused and not trusted:
        raise UntrustedModelError(
            f"{what} holds types that mpitrain does not write, so it does not trust them: "
            f"{', '.join(refused)}. If you trust the file, load it with trusted=True "
            "(--trust-pickle)"
        )
    return loads(data, trusted=sorted(untrusted))


# ----------------------------------------------------------------------------
# Files


def save_model(model: Any, path: str | os.PathLike) -> int:
    """Save a fitted model as a skops file, atomically. Local.

    Written to a temporary file beside ``path``, flushed to disk and
    renamed (:func:`mpitrain.data.atomic_path`).  A model holding raw rows
    (:func:`holds_raw_rows`) gets mode 0600 from the file's creation on;
    others the umask's default.  Returns the bytes written.
    """
    from mpitrain.data import atomic_path

    data = model_to_bytes(model)
    with atomic_path(path, private=holds_raw_rows(model)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return len(data)


def load_model(path: str | os.PathLike, *, trusted: bool = False) -> Any:
    """Load a model file without running code from it (unless ``trusted``). Local.

    A skops file is loaded trusting exactly :data:`TRUSTED_TYPES`; one that
    holds other types is refused, naming them.  A pickle or joblib file
    (recognised by its content, whatever its name) is refused: loading it
    could run any code.  ``trusted=True`` (``--trust-pickle``) loads a
    pickle or joblib file with joblib, and a skops file whatever its types.

    Raises
    ------
    FileNotFoundError
        No such file.
    UntrustedModelError
        The file is refused; the message says why.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file {path}")
    kind = file_kind(path)
    if kind == "skops":
        with open(path, "rb") as f:
            data = f.read()
        return model_from_bytes(data, what=path, trusted=trusted)
    if not trusted:
        if kind == "unknown":
            raise UntrustedModelError(
                f"{path} is not a skops model file; if it is a pickle or joblib file: "
                + _PICKLE_WHY
            )
        raise UntrustedModelError(f"{path} is a {kind} (joblib) file: " + _PICKLE_WHY)
    import joblib

    return joblib.load(path)
