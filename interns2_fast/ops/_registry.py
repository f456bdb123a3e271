"""The op registry: every op of `interns2_fast.ops` is defined once, as a PyTorch custom operator.

An op is declared by decorating its *validator* — a Python function whose signature is the op's
public signature, whose docstring is its documentation and whose body checks the arguments:

    @define("(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, str? activation) -> Tensor",
            fake=_update_fake)
    def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
        '''Decode step ...'''
        check_tensor(...)

`define` registers `torch.ops.interns2_fast.causal_conv1d_update` with that schema (plus a trailing
`str backend`), declares the arguments marked `(a!)` as mutated, registers `fake` as its fake/meta
kernel, and returns an `Op`: a callable with the validator's signature plus `backend="auto"`.
Backends attach with `@op.register("triton", supports=predicate)`; a predicate
`supports(device, **args) -> (ok, reason)` says whether that backend takes these arguments (dims,
widths, dtypes, ...). Whether a backend can run on a device at all (`BACKEND_DEVICE_CHECKS`) is
checked before the op's own predicate.

Calling an op:
  1. the validator runs (clear errors naming the op); in eager mode once per call signature
     (`Op.validate`: an op names in `reads_values` the arguments whose values it checks);
  2. the backend is chosen: `"auto"` takes the first backend of `device.auto_backends(device)`
     whose checks hold, else the torch path, else the reference, logging each reason once; an
     explicit backend that cannot take the input raises before any launch;
  3. autograd policy: with grad enabled and any tensor argument requiring grad, the op runs its
     reference backend directly — the installed transformers fallback, differentiable — so no
     gradient is ever missing or wrong (an op may give `grad_path`: how it calls its reference then);
  4. otherwise `torch.ops.interns2_fast.<name>` runs: one node for torch.compile / fake tensors /
     the meta device, its mutation declared in the schema. In plain eager mode (nothing compiling
     or tracing: no dispatch mode, no functorch transform, only plain tensors) the chosen backend
     is called directly instead: the same function the op's kernel calls, without the dispatcher's
     round trip and the copies that keep a custom op's results from aliasing its inputs — on an
     eager NPU that host time is per op and per token (BRIEF §9). Results are the same tensors'
     values either way (tests/ops/test_registry.py compares both routes bit for bit).

Custom ops may not return their inputs, so a backend result that *is* a mutated input (an
in-place state) is dropped inside the op (`strip`) and handed back by the Python side (`finish`).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import operator
import re
from typing import Callable

import torch

from .. import device as _device

logger = logging.getLogger("interns2_fast")

NAMESPACE = "interns2_fast"
_LIB = torch.library.Library(NAMESPACE, "DEF")

#: Every backend name an op may register. "npu_native" wraps torch_npu's fused Ascend C operators and
#: "pto" the csrc/ PTO kernels; neither can be measured here, so `auto` never picks them.
BACKENDS = ("triton", "torch", "reference", "npu_native", "pto")

Supports = Callable[..., "tuple[bool, str]"]
OK = (True, "")


def _triton_on(dev: torch.device) -> tuple[bool, str]:
    if _device.triton_usable(dev):
        return OK
    return False, (f"Triton cannot launch on {dev} (triton flavour {_device.triton_flavour()!r}, interpreter "
                   f"{'on' if _device.interpreting() else 'off'}; set TRITON_INTERPRET=1 for CPU tensors)")


def _npu_on(dev: torch.device) -> tuple[bool, str]:
    if dev.type == "npu" and _device.npu_available():
        return OK
    return False, f"needs torch_npu and an Ascend NPU tensor, got a {dev.type} tensor"


def _pto_on(dev: torch.device) -> tuple[bool, str]:
    from .. import pto

    why = pto.device_problem(dev)
    return OK if why is None else (False, why)


#: Can a backend run on this device at all? (backends not listed: any device)
BACKEND_DEVICE_CHECKS: dict[str, Callable[[torch.device], tuple[bool, str]]] = {
    "triton": _triton_on,
    "npu_native": _npu_on,
    "pto": _pto_on,
}

@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    impl: Callable
    supports: Supports | None = None


_ARG_RE = re.compile(r"^\s*(?P<type>[A-Za-z]+(?:\([a-z]!\))?\??(?:\[\])?)\s+(?P<name>\w+)\s*$")
_LOGGED: set = set()
OPS: dict[str, "Op"] = {}
#: True when tensors on the meta device run the op's chosen backend (False: its fake kernel)
META_RUNS_BACKENDS = True


def _log_once(msg: str, *args) -> None:
    key = (msg, args)
    if key in _LOGGED or torch.compiler.is_compiling():
        return
    _LOGGED.add(key)
    logger.info(msg, *args)


class Op:
    """One op: schema, mutated arguments, fake kernel, backends with capability predicates."""

    def __init__(self, validator: Callable, schema: str, *, fake: Callable, strip: Callable | None,
                 finish: Callable | None, grad_path: Callable | None = None, empty: Callable | None = None,
                 reads_values: tuple[str, ...] = ()):
        self.name = validator.__name__
        self.__doc__ = validator.__doc__
        self.__name__ = self.name
        self.__qualname__ = self.name
        self.__module__ = validator.__module__
        self.validator = validator
        self.signature = inspect.signature(validator)
        params = self.signature.parameters.values()
        #: for `bind`'s fast path: how many may come by position, which by keyword
        self._n_positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        self._keywords = frozenset(p.name for p in params if p.kind is not p.POSITIONAL_ONLY)
        self._defaults = {n: p.default for n, p in self.signature.parameters.items()
                          if p.default is not inspect.Parameter.empty}
        # what inspect.signature / help() / editors show: the validator's parameters plus `backend`
        self.__signature__ = self.signature.replace(parameters=[
            *self.signature.parameters.values(),
            inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=str)])
        args_text, self.returns = schema.rsplit("->", 1)
        args_text = args_text.strip()
        assert args_text[0] == "(" and args_text[-1] == ")", schema
        parsed = [_ARG_RE.match(a) for a in args_text[1:-1].split(",")]
        assert all(parsed), f"{self.name}: cannot parse schema {schema!r}"
        self.arg_names = tuple(m["name"] for m in parsed)
        assert self.arg_names == tuple(self.signature.parameters), \
            f"{self.name}: schema arguments {self.arg_names} != signature {tuple(self.signature.parameters)}"
        #: the arguments the op writes in place (declared `(a!)` in its schema)
        self.mutates = tuple(m["name"] for m in parsed if "!" in m["type"])
        self.tensor_args = tuple(m["name"] for m in parsed if m["type"].startswith("Tensor"))
        #: `int` arguments: any integral number the validator accepts reaches the backends as a Python int
        self.int_args = tuple(m["name"] for m in parsed if m["type"] == "int")
        self.backends: dict[str, Backend] = {}
        #: arguments whose values (not only shape, strides, dtype and device) the validator reads
        self.reads_values = tuple(reads_values)
        assert set(self.reads_values) <= set(self.tensor_args), f"{self.name}: reads_values must name tensor arguments"
        self._validated: set = set()  # metadata keys of eager calls the validator accepted
        self._strip, self._finish, self._grad_path, self._empty = strip, finish, grad_path, empty
        # Optional results (`Tensor?`) are declared `Tensor` and carried as an empty uint8 sentinel:
        # functionalization (torch.compile) rejects optional results of ops that mutate.
        returns = self.returns.strip()
        parts = [r.strip() for r in (returns[1:-1] if returns.startswith("(") else returns).split(",")]
        self._optional = tuple(i for i, r in enumerate(parts) if r == "Tensor?")
        plain = ", ".join("Tensor" if r == "Tensor?" else r for r in parts)
        self.schema = f"({args_text[1:-1]}, str backend) -> {f'({plain})' if len(parts) > 1 else plain}"
        _LIB.define(self.name + self.schema)
        _LIB.impl(self.name, self._kernel, "CompositeExplicitAutograd")

        def fake_kernel(*values):
            named = dict(zip(self.arg_names, values[:-1]))
            return self._to_sentinels(fake(**named), self.device_of(named))

        torch.library.register_fake(f"{NAMESPACE}::{self.name}", fake_kernel, lib=_LIB)
        # Tensors on the meta device run the chosen backend itself (on meta), not the fake kernel: that
        # is how the tests prove a backend never reads a value back to the host. FakeTensors (torch.compile,
        # shape propagation) use `fake`. Older torch (seen on 2.9) refuses a Meta kernel beside a fake
        # one: there the meta device gets the fake kernel (`META_RUNS_BACKENDS` says which).
        global META_RUNS_BACKENDS
        try:
            _LIB.impl(self.name, self._kernel, "Meta")
        except RuntimeError:
            META_RUNS_BACKENDS = False
        self.custom_op = getattr(getattr(torch.ops, NAMESPACE), self.name)
        OPS[self.name] = self

    # --- backends ---------------------------------------------------------------------------------
    def register(self, backend: str, *, supports: Supports | None = None) -> Callable[[Callable], Callable]:
        """Decorator: `impl(**args)` computes this op on `backend`; `supports(device, **args)` says
        whether it can take the arguments (None: whatever the validator accepts)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

        def decorate(impl: Callable) -> Callable:
            self.backends[backend] = Backend(backend, impl, supports)
            return impl

        return decorate

    def registered(self) -> tuple[str, ...]:
        return tuple(b for b in BACKENDS if b in self.backends)

    def check(self, backend: str, device: torch.device, args: dict) -> tuple[bool, str]:
        """(ok, reason): can `backend` take `args` (tensors may be meta) on `device`?"""
        if backend not in self.backends:
            return False, f"backend {backend!r} is not implemented (have {', '.join(self.registered())})"
        dev_check = BACKEND_DEVICE_CHECKS.get(backend)
        if dev_check is not None:
            ok, why = dev_check(device)
            if not ok:
                return ok, why
        pred = self.backends[backend].supports
        return OK if (pred is None or not args) else pred(device, **args)

    def select(self, backend: str, device: torch.device, args: dict) -> str:
        """The backend that will run `args` on `device` for the requested `backend`."""
        if backend == "auto":
            order = list(_device.auto_backends(device))
            for fallback in ("torch", "reference"):
                if fallback not in order:
                    order.append(fallback)
            reasons = []
            for name in order:
                if name not in self.backends:
                    continue
                ok, why = self.check(name, device, args)
                if ok:
                    if reasons:
                        _log_once("%s: backend auto -> %s (%s)", self.name, name, "; ".join(reasons))
                    return name
                reasons.append(f"{name}: {why}")
            raise ValueError(f"{self.name}: no backend can take these arguments ({'; '.join(reasons)})")
        if backend not in BACKENDS:
            raise ValueError(f"{self.name}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if backend not in self.backends:
            raise NotImplementedError(f"{self.name}: backend {backend!r} is not implemented "
                                      f"(have {', '.join(self.registered())})")
        ok, why = self.check(backend, device, args)
        if not ok:
            raise ValueError(f"{self.name}: backend {backend!r} cannot take these arguments: {why}")
        return backend

    # --- calling ----------------------------------------------------------------------------------
    def bind(self, args: tuple, kwargs: dict) -> dict:
        """{argument name: value} of a call, defaults applied (the order of the schema)."""
        names = self.arg_names
        if len(args) <= self._n_positional and all(k in self._keywords for k in kwargs):
            # the common call, bound without inspect (microseconds per op call on the eager host path)
            values = dict(zip(names, args))
            if not kwargs and len(args) == len(names):
                return values
            if not any(k in values for k in kwargs):  # (plain loops: Dynamo traces them)
                values.update(kwargs)
                defaults = self._defaults
                if all(n in values or n in defaults for n in names):
                    return {n: values[n] if n in values else defaults[n] for n in names}
        bound = self.signature.bind(*args, **kwargs)  # anything else, with Python's own TypeError
        bound.apply_defaults()
        return dict(bound.arguments)

    def device_of(self, values: dict) -> torch.device:
        for name in self.tensor_args:
            t = values[name]
            if isinstance(t, torch.Tensor):
                return t.device
        return torch.device("cpu")

    def call(self, values: dict, backend: str = "auto"):
        """Validate, choose the backend, apply the autograd policy, run."""
        tracing = _tracing()
        self.validate(values, remember=not tracing)
        for name in self.int_args:  # numpy integers and 0-d tensors, after the validator rejected bools
            values[name] = operator.index(values[name])
        if self._empty is not None:  # empty inputs: one result for every backend (ops/_empty.py)
            result = self._empty(**values)
            if result is not None:
                return result
        # one pass over the tensor arguments: the device, whether any requires grad, whether all are plain
        device, grad, plain = None, False, True
        grad_mode = torch.is_grad_enabled()
        for n in self.tensor_args:
            t = values[n]
            if isinstance(t, torch.Tensor):
                if device is None:
                    device = t.device
                grad = grad or (grad_mode and t.requires_grad)
                plain = plain and type(t) in _PLAIN_TENSORS
        device = device if device is not None else _CPU
        if grad:
            _log_once("%s: an input requires grad; running the differentiable reference path", self.name)
            if self._grad_path is not None:
                return self._grad_path(self.backends["reference"].impl, values)
            return self._run_backend("reference", values, finish=True)
        name = self.select(backend, device, values)
        if plain and not tracing and (device.type != "meta" or META_RUNS_BACKENDS):
            return self._run_backend(name, values, finish=True)
        out = self._from_sentinels(self.custom_op(*values.values(), name))
        return self._finish(values, out) if self._finish is not None else out

    def validate(self, values: dict, *, remember: bool = False) -> None:
        """Run the validator, once per call signature: in eager mode a call whose arguments have the shapes,
        strides, dtypes, devices and (other arguments) values of one the validator accepted before is
        accepted again without running it (a decode step repeats the same signature every token, and the
        checks cost tens of microseconds of host time per op). Arguments in `reads_values` are checked
        from their values, so a call with any of them given is always validated. Without `remember` (the
        default; `call` passes it when nothing traces) the validator simply runs."""
        key = self._metadata_key(values) if remember else None
        if key is not None and key in self._validated:
            return
        self.validator(**values)
        if key is not None:
            if len(self._validated) >= 1024:
                self._validated.clear()
            self._validated.add(key)

    def _metadata_key(self, values: dict):
        for n in self.reads_values:
            if values[n] is not None:
                return None
        key = []
        for v in values.values():
            if type(v) in _PLAIN_TENSORS:
                key.append((v.shape, v.stride(), v.dtype, v.device))
            elif v is None or type(v) in _SCALARS:
                key.append((type(v), v))
            else:  # a tensor subclass or another type: let the validator judge it
                return None
        return tuple(key)

    def _to_sentinels(self, out, device):
        if not self._optional:
            return out
        return tuple(torch.empty(0, dtype=torch.uint8, device=device) if (i in self._optional and o is None) else o
                     for i, o in enumerate(out))

    def _from_sentinels(self, out):
        if not self._optional:
            return out
        return tuple(None if (i in self._optional and o.dtype == torch.uint8 and o.numel() == 0) else o
                     for i, o in enumerate(out))

    def _run_backend(self, name: str, values: dict, *, finish: bool):
        out = self.backends[name].impl(**values)
        if self._strip is not None:
            out = self._strip(values, out)
        return self._finish(values, out) if (finish and self._finish is not None) else out

    def _kernel(self, *values):
        """The custom op's kernel (every dispatch key): run the chosen backend."""
        *vals, backend = values
        named = dict(zip(self.arg_names, vals))
        out = self._run_backend(backend, named, finish=False)
        out = _no_input_aliases(out, [v for v in vals if isinstance(v, torch.Tensor)])
        return self._to_sentinels(out, self.device_of(named))

    def __call__(self, *args, **kwargs):
        backend = kwargs.pop("backend", "auto")
        return self.call(self.bind(args, kwargs), backend)

    def __repr__(self) -> str:
        return f"<interns2_fast op {self.name}{self.signature} backends={self.registered()}>"

    def __reduce__(self):  # ops pickle by name (they are module-level singletons)
        return (_op_by_name, (self.name,))


def _op_by_name(name: str) -> Op:
    import interns2_fast.ops  # noqa: F401  (defines every op)

    return OPS[name]


def _tracing() -> bool:
    """Is anything compiling or tracing, so that calls must go through the custom op: Dynamo, a
    TorchDispatchMode (fake tensors, functionalization, make_fx), a functorch transform (vmap, grad)?
    Otherwise a call on plain tensors runs its backend directly (except on the meta device where
    older torch runs the fake kernel, `META_RUNS_BACKENDS`)."""
    if torch.compiler.is_compiling():  # first: Dynamo folds it, and cannot trace the two C queries below
        return True
    return bool(_len_dispatch_stack()) or _peek_functorch() is not None


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # subclasses (FakeTensor, DTensor, ...) take the dispatcher
_CPU = torch.device("cpu")
_SCALARS = (bool, int, float, str)
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_peek_functorch = torch._C._functorch.peek_interpreter_stack


def _no_input_aliases(out, inputs: list):
    """Custom ops may not return (views of) their inputs, nor two views of one buffer: copy any
    output that shares storage with an input or with an earlier output."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t.device.type != "meta"}
    seen.discard(0)

    def fix(o):
        if isinstance(o, torch.Tensor) and o.device.type != "meta":
            ptr = o.untyped_storage().data_ptr()
            # a view into a larger buffer is copied too: outputs own their storage, as fake kernels say
            if ptr in seen or o.storage_offset() or o.untyped_storage().nbytes() > o.numel() * o.element_size():
                return o.clone()
            if ptr:
                seen.add(ptr)
        return o

    return tuple(fix(o) for o in out) if isinstance(out, (tuple, list)) else fix(out)


def define(schema: str, *, fake: Callable, strip: Callable | None = None, finish: Callable | None = None,
           grad_path: Callable | None = None, empty: Callable | None = None,
           reads_values: tuple[str, ...] = ()) -> Callable[[Callable], Op]:
    """Decorator turning a validator into an `Op` (see the module docstring). `grad_path(reference,
    args)`, when given, is how a grad-requiring call runs the reference (e.g. without an in-place
    update that autograd would reject). `empty(**args)`, when given, returns the result for empty
    inputs (None otherwise), so that every backend agrees on them. `reads_values` names the tensor
    arguments whose values the validator reads (see `Op.validate`; tests/ops/test_registry.py checks
    that every other tensor argument's values leave the validator's verdict unchanged)."""
    return lambda validator: Op(validator, schema, fake=fake, strip=strip, finish=finish, grad_path=grad_path,
                                empty=empty, reads_values=reads_values)


def registered(op: str) -> tuple[str, ...]:
    return OPS[op].registered()


def resolve(op: str, backend: str, device: torch.device, args: dict | None = None) -> str:
    """The backend `op` runs for `backend` on `device` (with `args`, its predicates are evaluated too)."""
    return OPS[op].select(backend, device, args if args is not None else {})
