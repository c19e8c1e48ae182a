"""Teacher registry: ``backend[:spec]`` strings -> :class:`Teacher` instances.

Examples::

    conse                               offline ConSE teacher (default)
    lit  /  lit:NAME  /  lit:/path      offline LiT teacher built by `vl2v teacher build NAME`
    openclip:ViT-B-16:openai            OpenAI CLIP ViT-B/16 via open_clip (downloads once)
    openclip:ViT-B-16:/path/model.pt    a local open_clip checkpoint
    openclip:ViT-B-16:none              random weights (tests, speed)
    openclip:local-dir:/path            a downloaded open_clip Hub folder (offline)
    transformers:google/siglip-base-patch16-224   a Hugging Face model (hub id or local dir)

This module is the machinery only and imports no backend. Each backend registers itself, beside its code,
with :func:`register_teacher` (``teachers/conse.py``, ``lit.py``, ``openclip.py``, ``hf.py``, ``remote.py``,
``privileged.py``, ``vendors/__init__.py``), and ``vl2v/teachers/__init__.py`` names those modules
(``BACKENDS``, in `vl2v teacher list` order; timm's ``models/__init__.py`` + ``_registry.py`` pattern, as
:mod:`vl2v.methods.registry`). They are imported on the first look-up in :data:`TEACHERS` rather than with
the package, so a light submodule such as :mod:`vl2v.teachers.wire` stays free of torch; every look-up sees
the full list.

Options (``--teacher-opt key=value``) go to the backend's constructor, e.g.
``k=5`` or ``runtime=onnx`` (ONNX Runtime for the classifier) for ConSE. Each backend
declares them as a typed config dataclass (``options=``), so ``k=abc`` or an unknown
key is a one-line error naming the option before anything is loaded.
``blackbox=True`` wraps any teacher so that only the embed functions are reachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from vl2v.errors import ConfigError
from vl2v.registry import Entry, Registry

if TYPE_CHECKING:  # pragma: no cover
    from vl2v.teachers.base import Teacher


@dataclass(frozen=True)
class TeacherInfo:
    """One teacher backend: how to build it (``factory(spec, **options)``) and what `vl2v teacher list` says of it."""

    name: str
    factory: Callable[..., Teacher]
    summary: str
    white_box: bool  # the backend can hand VL2V-SD a differentiable image tower
    offline: bool = False  # its weights ship with vl2v's dependencies (no download, no local path)
    options: type | None = None  # a config_dataclass of its --teacher-opt options (None: passed on unchecked)
    # trained on the experiment's own splits (the privileged diagnostic): one target and one trial seed per
    # experiment, and the experiment binds it (teachers.privileged.bind_to_experiment) before it answers
    experiment_bound: bool = False

    def check_options(self, options: dict[str, Any], what: str | None = None) -> dict[str, Any]:
        """``options`` (``--teacher-opt`` text values) typed and range-checked by the backend's options class;
        only the keys given (the constructor's own defaults stay in force for the rest). ``what``: where they
        were written, for the error (default ``--teacher-opt for teacher NAME``)."""
        from vl2v.config import validated
        from vl2v.teachers.base import TeacherError

        if self.options is None or not options:
            return dict(options)
        try:
            typed = validated(self.options, options, what=what or f"--teacher-opt for teacher {self.name!r}")
        except TeacherError:
            raise
        except ConfigError as exc:
            raise TeacherError(str(exc)) from None
        return {k: getattr(typed, k) for k in options}


class TeacherRegistry(Registry[TeacherInfo]):
    """The teacher :class:`~vl2v.registry.Registry`, whose built-in members are imported on its first use.

    ``vl2v/teachers/__init__.py`` hands it (:meth:`members`) the backend modules, in `vl2v teacher list` order,
    and the function that imports them; any look-up, listing or registration runs that function once, first.
    A built-in member takes its module's place in that order whichever module was imported first (a backend
    imported directly registers before the others), and the built-ins come before a plug-in's or a test's."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._load: Callable[[], object] | None = None
        self._order: dict[str, int] = {}

    def members(self, load: Callable[[], object], modules: Sequence[str]) -> None:
        """``load()`` imports ``modules``, each of which registers its built-in members; it runs before the first
        use, and ``modules``' order is the members' order."""
        self._load, self._order = load, {m: i for i, m in enumerate(modules)}

    def _loaded(self) -> None:
        load, self._load = self._load, None  # cleared first: the members register while it runs
        if load is not None:
            try:
                load()
            except BaseException:
                self._load = load  # tried again (and fails again, with its own error) on the next use
                raise

    def _rank(self, entry: Entry[TeacherInfo]) -> int:
        module = getattr(getattr(entry.obj, "factory", None), "__module__", None)
        return self._order.get(module or "", len(self._order))

    def register(self, name: str | None = None) -> Callable[[TeacherInfo], TeacherInfo]:
        deco = super().register(name)

        def in_order(obj: TeacherInfo) -> TeacherInfo:
            self._loaded()
            deco(obj)
            # sorted by module rank, stable (registration order among a module's and among the other members)
            self._entries = dict(sorted(self._entries.items(), key=lambda kv: self._rank(kv[1])))
            return obj

        return in_order

    def unregister(self, name: str) -> None:
        self._loaded()
        super().unregister(name)

    def entry(self, name: str) -> Entry[TeacherInfo]:
        self._loaded()
        return super().entry(name)

    def names(self) -> list[str]:
        self._loaded()
        return super().names()

    def entries(self) -> list[Entry[TeacherInfo]]:
        self._loaded()
        return super().entries()

    def __contains__(self, name: object) -> bool:
        self._loaded()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._loaded()
        return super().__len__()


TEACHERS = TeacherRegistry("teacher")


def register_teacher(name: str, *, summary: str, white_box: bool, offline: bool = False,
                     options: type | None = None,
                     experiment_bound: bool = False) -> Callable[[Callable[..., Teacher]], Callable[..., Teacher]]:
    """Decorator: register ``factory(spec, **options) -> Teacher`` as backend ``name``; ``options``: the
    config dataclass that types its ``--teacher-opt`` options (see :func:`vl2v.config.config_dataclass`)."""

    def deco(factory: Callable[..., Teacher]) -> Callable[..., Teacher]:
        TEACHERS.register(name)(TeacherInfo(name, factory, summary, white_box, offline, options, experiment_bound))
        return factory

    return deco


@dataclass(frozen=True)
class TeacherSpec:
    backend: str
    spec: str | None
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str, options: dict[str, Any] | None = None) -> "TeacherSpec":
        backend, _, rest = text.partition(":")
        TEACHERS.entry(backend)  # raises a clear error for unknown backends
        name = TEACHERS.canonical(backend)
        typed = teacher_info(name).check_options(options or {})
        return cls(name, rest or None, tuple(sorted(typed.items())))

    def __str__(self) -> str:
        return self.backend + (f":{self.spec}" if self.spec else "")


#: --teacher-opt keys that hold a secret: never written to a record (experiment.json, config.json, results)
SECRET_OPTIONS = frozenset({"api_key"})
#: what a record holds in place of a secret option's value
REDACTED = "<redacted>"


def public_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` as they may be recorded: secret values (an API key) replaced by :data:`REDACTED`."""
    return {k: REDACTED if k in SECRET_OPTIONS and v not in (None, "") else v for k, v in (options or {}).items()}


def create_teacher(text: str, blackbox: bool = False, **options: Any) -> Teacher:
    """The teacher ``text`` names, with its ``--teacher-opt`` options; a redacted secret read back from a record
    (an API key) is left out, so the backend takes it from its environment variable as usual."""
    from vl2v.teachers.base import TeacherError

    options = {k: v for k, v in options.items() if not (k in SECRET_OPTIONS and v == REDACTED)}
    spec = TeacherSpec.parse(text, options)
    try:
        teacher = teacher_info(spec.backend).factory(spec.spec, **dict(spec.options))
    except TypeError as exc:
        raise TeacherError(f"bad options for teacher {text!r}: {exc}") from exc
    if blackbox:
        from vl2v.teachers.blackbox import BlackBoxTeacher

        teacher = BlackBoxTeacher(teacher)
    return teacher


def teacher_info(name: str) -> TeacherInfo:
    info = TEACHERS.get(name)
    if not isinstance(info, TeacherInfo):
        raise TypeError(f"teacher {name!r} was registered as {type(info).__name__}, not TeacherInfo: "
                        "register backends with vl2v.teachers.registry.register_teacher")
    return info


def list_teachers() -> list[TeacherInfo]:
    return [teacher_info(name) for name in TEACHERS.names()]
