"""The compiled kernel of :mod:`mpitrain.stats._gram`: LLVM IR, compiled by llvmlite. Local.

The kernel is written here as LLVM IR (with :mod:`llvmlite.ir`) and
compiled for the host's CPU by LLVM through :mod:`llvmlite.binding`, the
code generator numba uses, without numba itself: loading it costs the
import of ``llvmlite.binding`` (28–46 ms, its 179 MB library) and, from
the cache, about 5 ms, where numba's import and its cached code took
0.28–0.44 s.  The object code is cached once per CPU model, LLVM release
and kernel source (:func:`cache_directories`), written under a temporary
name and renamed, with a checksum that is verified before loading; a
missing, damaged or unwritable cache costs one compilation (0.15–0.35 s),
never an answer.

Kept in a module of its own so that importing :mod:`mpitrain.stats` does
not import llvmlite for models that never form a Gram matrix.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["TILE", "BLOCK", "cache_directories", "compile_for", "load", "shifted_gram"]

#: Rows of one output tile, and its columns where the CPU has 32 vector
#: registers: 4 × 4 sums of vectors (measured faster than 4 × 8 and 8 × 4);
#: with 16 registers the tiles are 4 × 2 (:func:`_define_gram`).
TILE = 4
#: Rows transposed together: each column's four values go to consecutive
#: addresses (measured faster than one row at a time and than 8 or 16 rows).
BLOCK = 4

_MAGIC = b"mpitrain-gram-kernel 1\n"
_NAMES = {
    np.dtype(np.float64): "shifted_gram_f64",
    np.dtype(np.float32): "shifted_gram_f32",
}


def _loop(builder, start, stop, step, body, name: str) -> None:
    """Emit ``for (i = start; i < stop; i += step) body(i)`` at the builder."""
    from llvmlite import ir

    i64 = ir.IntType(64)
    fn = builder.function
    head = fn.append_basic_block(f"{name}.head")
    inside = fn.append_basic_block(f"{name}.body")
    end = fn.append_basic_block(f"{name}.end")
    before = builder.block
    builder.branch(head)
    builder.position_at_end(head)
    index = builder.phi(i64, name=name)
    index.add_incoming(start, before)
    builder.cbranch(builder.icmp_signed("<", index, stop), inside, end)
    builder.position_at_end(inside)
    body(index)
    index.add_incoming(builder.add(index, step), builder.block)
    builder.branch(head)
    builder.position_at_end(end)


def _horizontal_sum(builder, vector, width: int):
    """The sum of a vector's lanes, halving it: the same order on every run."""
    from llvmlite import ir

    i32 = ir.IntType(32)
    while width > 1:
        half = width // 2
        low = builder.shuffle_vector(
            vector, vector, ir.Constant(ir.VectorType(i32, half), list(range(half)))
        )
        high = builder.shuffle_vector(
            vector,
            vector,
            ir.Constant(ir.VectorType(i32, half), list(range(half, width))),
        )
        vector = builder.fadd(low, high)
        width = half
    return builder.extract_element(vector, i32(0))


def _define_gram(module, name: str, single: bool, width: int) -> None:
    """Define ``void name(x, n, d, y, t, w, weighted, shift, zt, stride, gram, p, rows)``.

    Adds the upper tiles of ``zᵀz``, ``z = [x - s, y - s, 1] · sqrt(w)``, to
    ``gram`` (p × p, row-major; p padded to whole tiles).  ``x`` (n × d,
    float32 if ``single``) and ``y`` (n × t) are C-contiguous; ``zt`` is the
    work buffer (p rows of ``stride`` values, at least ``rows`` rounded up
    to ``width``), its padding rows zero.  Chunk by chunk of ``rows`` rows:
    copy, shift, weight and transpose the chunk into ``zt`` (BLOCK rows at
    a time, so the stores to each column are consecutive), then sum 4 × 4
    tiles (4 × 2 below 8-wide vectors) of the upper triangle with
    ``width``-wide fused multiply-adds over the rows; meanwhile the next chunk's rows are fetched into the cache, a
    few lines per tile, so the next copy reads from the cache (the tiles
    leave the memory idle; the copy alone took a third of the time).  No
    fast-math flag that assumes away NaN or infinity: they reach the
    diagonal, where the caller looks for them.
    """
    from llvmlite import ir

    f64, i64, i32, i8 = ir.DoubleType(), ir.IntType(64), ir.IntType(32), ir.IntType(8)
    real = ir.FloatType() if single else f64
    vec = ir.VectorType(f64, width)
    pointer = f64.as_pointer()
    fn = ir.Function(
        module,
        ir.FunctionType(
            ir.VoidType(),
            [real.as_pointer(), i64, i64, pointer, i64, pointer, i64]
            + [pointer, pointer, i64, pointer, i64, i64],
        ),
        name=name,
    )
    x, n, d, y, t, w, weighted, shift, zt, stride, gram, p, rows = fn.args
    fmuladd = module.globals.get(f"llvm.fmuladd.v{width}f64") or ir.Function(
        module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{width}f64"
    )
    sqrt = module.globals.get("llvm.sqrt.f64") or ir.Function(
        module, ir.FunctionType(f64, [f64]), "llvm.sqrt.f64"
    )
    # read, keep in the outer caches; a hint that never faults.
    prefetch = module.globals.get("llvm.prefetch.p0i8") or ir.Function(
        module,
        ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]),
        "llvm.prefetch.p0i8",
    )
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    # Stack slots: LLVM keeps them in registers (mem2reg).
    line_slot = b.alloca(i64, name="line")
    scale_slot = b.alloca(f64, name="scale")
    # 4 x 4 tiles fill AVX-512's 32 registers (16 sums, 8 operands); with 16
    # registers (AVX, SSE) 4 x 2 tiles keep the sums out of memory.
    cols = TILE if width >= 8 else TILE // 2
    accumulators = [b.alloca(vec, name=f"acc{k}") for k in range(TILE * cols)]
    zeros = ir.Constant(vec, [0.0] * width)
    one = i64(1)
    is_weighted = b.icmp_signed("!=", weighted, i64(0))
    x_bytes = b.bitcast(x, i8.as_pointer())
    row_bytes = b.mul(d, i64(4 if single else 8))
    last = b.add(d, t)  # the column of ones (times sqrt(w))
    tiles_per_side = b.sdiv(p, i64(TILE))
    tiles = b.mul(
        b.sdiv(b.mul(tiles_per_side, b.add(tiles_per_side, one)), i64(2)),
        i64(TILE // cols),
    )

    def element(base, index):
        return b.gep(base, [index])

    def scale_of(row):
        b.store(ir.Constant(f64, 1.0), scale_slot)
        with b.if_then(is_weighted):
            b.store(b.call(sqrt, [b.load(element(w, row))]), scale_slot)
        return b.load(scale_slot)

    def x_at(row, i):
        value = b.load(element(x, b.add(b.mul(row, d), i)))
        return b.fpext(value, f64) if single else value

    def store_z(column, r, value):
        b.store(value, element(zt, b.add(b.mul(column, stride), r)))

    def copy_rows(start, first, count):
        # count rows from start + first, each column's values consecutive.
        rows_ = [b.add(start, b.add(first, i64(q))) for q in range(count)]
        scales = [scale_of(row) for row in rows_]

        def feature(i):
            s = b.load(element(shift, i))
            for q, row in enumerate(rows_):
                value = b.fmul(b.fsub(x_at(row, i), s), scales[q])
                store_z(i, b.add(first, i64(q)), value)

        _loop(b, i64(0), d, one, feature, "feature")

        def target(i):
            s = b.load(element(shift, b.add(d, i)))
            for q, row in enumerate(rows_):
                value = b.load(element(y, b.add(b.mul(row, t), i)))
                store_z(
                    b.add(d, i),
                    b.add(first, i64(q)),
                    b.fmul(b.fsub(value, s), scales[q]),
                )

        _loop(b, i64(0), t, one, target, "target")
        for q in range(count):
            store_z(last, b.add(first, i64(q)), scales[q])

    def chunk(start):
        left = b.sub(n, start)
        m = b.select(b.icmp_signed("<", left, rows), left, rows)
        blocked = b.sub(m, b.srem(m, i64(BLOCK)))
        _loop(
            b,
            i64(0),
            blocked,
            i64(BLOCK),
            lambda r: copy_rows(start, r, BLOCK),
            "block",
        )
        _loop(b, blocked, m, one, lambda r: copy_rows(start, r, 1), "tail")
        # Up to a whole vector the tiles read zeros, not the last chunk's rows.
        padded = b.mul(b.sdiv(b.add(m, i64(width - 1)), i64(width)), i64(width))

        def zero_column(r):
            _loop(
                b,
                i64(0),
                b.add(last, one),
                one,
                lambda i: store_z(i, r, ir.Constant(f64, 0.0)),
                "zero",
            )

        _loop(b, m, padded, one, zero_column, "pad")

        after = b.add(start, m)
        rest = b.sub(n, after)
        ahead = b.select(b.icmp_signed("<", rest, rows), rest, rows)
        ahead_start = b.mul(after, row_bytes)
        ahead_bytes = b.mul(ahead, row_bytes)
        ahead_stop = b.add(ahead_start, ahead_bytes)
        lines_per_tile = b.sdiv(b.add(b.sdiv(ahead_bytes, i64(64)), tiles), tiles)
        b.store(ahead_start, line_slot)

        def tile_row(i):
            left_rows = [
                element(zt, b.mul(b.add(i, i64(q)), stride)) for q in range(TILE)
            ]

            def tile(j):
                def fetch(_):
                    line = b.load(line_slot)
                    with b.if_then(b.icmp_signed("<", line, ahead_stop)):
                        b.call(
                            prefetch, [b.gep(x_bytes, [line]), i32(0), i32(2), i32(1)]
                        )
                        b.store(b.add(line, i64(64)), line_slot)

                _loop(b, i64(0), lines_per_tile, one, fetch, "fetch")
                right_rows = [
                    element(zt, b.mul(b.add(j, i64(q)), stride)) for q in range(cols)
                ]
                for slot in accumulators:
                    b.store(zeros, slot)

                def step(k):
                    def load(row):
                        return b.load(
                            b.bitcast(b.gep(row, [k]), vec.as_pointer()), align=8
                        )

                    left = [load(row) for row in left_rows]
                    right = [load(row) for row in right_rows]
                    for a in range(TILE):
                        for c in range(cols):
                            slot = accumulators[a * cols + c]
                            b.store(
                                b.call(fmuladd, [left[a], right[c], b.load(slot)]), slot
                            )

                _loop(b, i64(0), padded, i64(width), step, "k")
                for a in range(TILE):
                    for c in range(cols):
                        total = _horizontal_sum(
                            b, b.load(accumulators[a * cols + c]), width
                        )
                        cell = element(
                            gram, b.add(b.mul(b.add(i, i64(a)), p), b.add(j, i64(c)))
                        )
                        b.store(b.fadd(b.load(cell), total), cell)

            _loop(b, i, p, i64(cols), tile, "j")

        _loop(b, i64(0), p, i64(TILE), tile_row, "i")

    _loop(b, i64(0), n, rows, chunk, "chunk")
    b.ret_void()


def vector_width(features: str) -> int:
    """Doubles per vector for the host's features (LLVM's ``+feature`` list). Pure.

    512-bit vectors where AVX-512 is, 256-bit where AVX is, else 128-bit.
    """
    flags = set(features.split(","))
    if "+avx512f" in flags:
        return 8
    if "+avx" in flags:
        return 4
    return 2


def build_module(width: int):
    """The IR module: the kernel for float64 and for float32 rows. Pure."""
    from llvmlite import ir

    module = ir.Module(name="mpitrain_gram")
    for dtype, name in _NAMES.items():
        _define_gram(module, name, dtype == np.float32, width)
    return module


def _target_machine(cpu: str | None = None, features: str | None = None):
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    cpu = llvm.get_host_cpu_name() if cpu is None else cpu
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=features, opt=3, codemodel="jitdefault"
    )
    return machine, cpu, features


def _optimise(module, machine) -> None:
    import llvmlite.binding as llvm

    if hasattr(llvm, "create_pass_builder"):  # llvmlite >= 0.44: the new pass manager
        builder = llvm.create_pass_builder(
            machine, llvm.PipelineTuningOptions(speed_level=3)
        )
        builder.getModulePassManager().run(module, builder)
        return
    manager_builder = llvm.create_pass_manager_builder()
    manager_builder.opt_level = 3
    manager_builder.loop_vectorize = True
    manager_builder.slp_vectorize = True
    manager = llvm.create_module_pass_manager()
    machine.add_analysis_passes(manager)
    manager_builder.populate(manager)
    manager.run(module)


def compile_object(machine, width: int) -> bytes:
    """The kernel's object code for ``machine`` (about 0.15 s). Local."""
    import llvmlite.binding as llvm

    module = build_module(width)
    module.triple = llvm.get_process_triple()
    module.data_layout = str(machine.target_data)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    _optimise(parsed, machine)
    return bytes(machine.emit_object(parsed))


def cache_directories() -> list[Path]:
    """Where the object code is looked for, in order; it is written to the first writable. Local.

    ``MPITRAIN_CACHE_DIR`` if set (alone); else ``__pycache__`` beside this
    module, then ``$XDG_CACHE_HOME/mpitrain`` (``~/.cache/mpitrain``).
    """
    chosen = os.environ.get("MPITRAIN_CACHE_DIR", "").strip()
    if chosen:
        return [Path(chosen).expanduser()]
    beside = Path(__file__).resolve().parent / "__pycache__"
    cache_home = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not cache_home:
        home = os.path.expanduser("~")
        if home.startswith("~"):  # no HOME and no password entry: no user cache
            return [beside]
        cache_home = os.path.join(home, ".cache")
    if not os.path.isabs(cache_home):  # relative: ignored, as the XDG rules say
        return [beside]
    return [beside, Path(cache_home) / "mpitrain"]


def _cache_name(cpu: str, features: str, width: int) -> str:
    import llvmlite
    import llvmlite.binding as llvm

    key = hashlib.sha256()
    for part in (
        Path(__file__).read_bytes(),  # any change of the kernel's source
        llvmlite.__version__,
        ".".join(map(str, llvm.llvm_version_info)),
        llvm.get_process_triple(),
        cpu,
        features,
        str(width),
        platform.python_implementation(),
    ):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    return f"gram-kernel-{cpu}-{key.hexdigest()[:32]}.o"


def _read_cached(path: Path) -> bytes | None:
    """The object code in ``path`` if it is whole (its checksum agrees), else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header, _, rest = data.partition(b"\n\n")
    lines = header.split(b"\n")
    if len(lines) != 2 or lines[0] + b"\n" != _MAGIC:
        return None
    if hashlib.sha256(rest).hexdigest().encode() != lines[1]:
        return None
    return rest


def _write_cached(directory: Path, name: str, code: bytes) -> bool:
    """Write the object code under a temporary name and rename it; False if not writable."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".o", dir=directory)
    except OSError:
        return False
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(
                _MAGIC + hashlib.sha256(code).hexdigest().encode() + b"\n\n" + code
            )
        # Readable by the other users of a shared installation, as .pyc files are.
        os.chmod(temporary, 0o644)
        os.replace(temporary, directory / name)
        return True
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return False


class _Kernels:
    """The loaded kernel: its execution engine (which owns the code) and entry points."""

    def __init__(self, machine, code: bytes, width: int):
        import llvmlite.binding as llvm

        empty = llvm.parse_assembly("")
        empty.triple = llvm.get_process_triple()
        self._engine = llvm.create_mcjit_compiler(empty, machine)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        self._engine.finalize_object()
        self.width = width
        P, L = ctypes.c_void_p, ctypes.c_int64
        # CFUNCTYPE releases the GIL for the call: threads sum their own rows.
        signature = ctypes.CFUNCTYPE(None, P, L, L, P, L, P, L, P, P, L, P, L, L)
        self.entries = {}
        for dtype, name in _NAMES.items():
            address = self._engine.get_function_address(name)
            if not address:
                raise RuntimeError(f"the compiled Gram kernel has no {name}")
            self.entries[dtype] = signature(address)


_lock = threading.Lock()
_loaded: _Kernels | None = None
_failed: BaseException | None = None


def load() -> _Kernels:
    """The kernel for this CPU, from the cache or compiled (once per process). Local.

    Raises ImportError without llvmlite and RuntimeError when LLVM cannot
    compile or load it (the caller then uses BLAS); a failure is kept and
    raised again, not retried.
    """
    global _loaded, _failed
    with _lock:
        if _loaded is not None:
            return _loaded
        if _failed is not None:
            raise _failed
        try:
            machine, cpu, features = _target_machine()
            width = vector_width(features)
            name = _cache_name(cpu, features, width)
            directories = cache_directories()
            code = next(
                (c for c in (_read_cached(d / name) for d in directories) if c), None
            )
            if code is None:
                code = compile_object(machine, width)
                for directory in directories:
                    if _write_cached(directory, name, code):
                        break
            _loaded = _Kernels(machine, code, width)
        except ImportError as exc:
            _failed = exc
            raise
        except Exception as exc:
            _failed = RuntimeError(f"LLVM could not compile or load it: {exc}")
            raise _failed from exc
        return _loaded


def compile_for(cpu: str, features: str) -> _Kernels:
    """The kernel compiled for another CPU model and features, not cached. Local.

    For tests of the narrower vector widths on a machine that runs them
    (an AVX-512 machine runs code built for ``haswell`` or ``x86-64``).
    """
    machine, _, _ = _target_machine(cpu, features)
    width = vector_width(features)
    return _Kernels(machine, compile_object(machine, width), width)


def shifted_gram(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    shift: np.ndarray,
    zt: np.ndarray,
    gram: np.ndarray,
    rows: int,
    kernels: _Kernels | None = None,
) -> None:
    """Add the upper tiles of ``zᵀz``, ``z = [x - s, y - s, 1] · sqrt(w)``, to ``gram``. Local.

    ``x`` (float32 or float64) and ``y`` (float64) C-contiguous; ``weight``
    empty when the rows are unweighted; ``zt`` the work buffer (padded
    columns × a row stride of at least ``rows`` rounded up to the vector
    width, C-contiguous, its padding rows zero); ``gram`` padded columns
    squared, C-contiguous.  The arrays' shapes are checked here, since the
    compiled code trusts them.  ``kernels``: this CPU's (:func:`load`) unless
    given (:func:`compile_for`).
    """
    kernels = load() if kernels is None else kernels
    n, d = x.shape
    t = y.shape[1]
    p, stride = zt.shape
    width = kernels.width
    if not (
        x.flags.c_contiguous
        and y.flags.c_contiguous
        and zt.flags.c_contiguous
        and gram.flags.c_contiguous
        and y.shape[0] == n
        and y.dtype == np.float64
        and zt.dtype == np.float64
        and gram.dtype == np.float64
        and gram.shape == (p, p)
        and p % TILE == 0
        and p >= d + t + 1
        and shift.shape == (d + t,)
        and weight.shape in ((0,), (n,))
        and 0 < rows
        and -(-rows // width) * width <= stride
        and x.dtype in _NAMES
    ):
        raise ValueError("shifted_gram: arrays of the wrong shape, type or layout")
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    kernels.entries[x.dtype](
        x.ctypes.data,
        n,
        d,
        y.ctypes.data,
        t,
        weight.ctypes.data,
        int(weight.shape[0] > 0),
        shift.ctypes.data,
        zt.ctypes.data,
        stride,
        gram.ctypes.data,
        p,
        rows,
    )
