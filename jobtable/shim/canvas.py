"""Canvas: ``Signature`` (``task.s()``), ``chain``, ``group`` and ``chord`` on
top of jobtable rows.

Messages carry the steps as Celery does: a chain's first task has the rest
of the chain (reversed) in its message; a chord's header parts carry the
group id and the body.  Whoever runs a step sends the next one (the native
worker through ``followups.py``, or a Celery worker), so no coordinator
process is needed.  A chord is counted in its ``jobtable_group`` row: it is
created, sized and its header enqueued in one transaction, so no part can
finish before the count is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .. import messages, params
from ..db import engine as db_engine
from ..db import results as db_results
from . import send
from .current import App, current_app
from .exceptions import NotSupported
from .registry import registry
from .canvas_rows import ChordStart, first_task, result_task, rows_for, start_chords
from .canvas_shapes import check_header_member, checked_depth, in_order, unrolled
from .result import AsyncResult, GroupResult

__all__ = ["ChordStart", "first_task", "result_task", "rows_for", "start_chords"]


def _app(app: App | None) -> App:
    return app or current_app()


def _name(task: Any) -> str:
    return task if isinstance(task, str) else str(task.name)


class Signature(dict):  # type: ignore[type-arg]
    """A task call to make later: ``add.s(2, 3)``, ``add.si(2, 3)``,
    ``signature("proj.tasks.add", args=(2, 3), countdown=10)``."""

    #: Canvas levels this signature nests (canvas_shapes.depth); a task's is 0.
    _depth: int | None = None

    def __init__(
        self,
        task: Any = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: App | None = None,
        **extra_options: Any,
    ) -> None:
        options = {**(options or {}), **extra_options}
        immutable = bool(options.pop("immutable", immutable))
        super().__init__(
            task=_name(task) if task is not None else None,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=options,
            subtask_type=subtask_type,
            immutable=immutable,
        )
        # A shared task has no app of its own: the one current when sent.
        self._app = app if app is not None else getattr(task, "_bound_app", None)

    # -- fields -----------------------------------------------------------------------

    task = property(lambda self: self["task"])
    args = property(lambda self: self["args"])
    kwargs = property(lambda self: self["kwargs"])
    options = property(lambda self: self["options"])
    immutable = property(lambda self: self["immutable"])
    subtask_type = property(lambda self: self["subtask_type"])

    @property
    def id(self) -> str | None:
        task_id = self.options.get("task_id")
        return str(task_id) if task_id is not None else None

    @property
    def type(self) -> Any:
        return registry.get(self.task)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    # -- building -----------------------------------------------------------------------

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        return Signature(self.task, new_args, new_kwargs, new_options, immutable=self.immutable, app=self._app)

    def _merge(
        self, args: Any, kwargs: Any, options: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        # Celery's partial arguments: new positional arguments come first.
        if self.immutable:
            return tuple(self.args), dict(self.kwargs), {**self.options, **options}
        return tuple(args or ()) + tuple(self.args), {**self.kwargs, **(kwargs or {})}, {**self.options, **options}

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def freeze(self, _id: str | None = None, **kwargs: Any) -> AsyncResult:
        """Fix the task id now (the result can be handed out before sending)."""
        if _id is not None:
            self.options["task_id"] = _id
        self.options.setdefault("task_id", messages.new_task_id())
        return AsyncResult(self.options["task_id"], app=self._app, task_name=self.task)

    def link(self, callback: Signature) -> Signature:
        links = self.options.setdefault("link", [])
        links.append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback`` if this task fails (Celery's rules, followups.py)."""
        if not isinstance(errback, Signature):
            raise TypeError(f"link_error() takes a signature (task.s(...)), got {errback!r}.")
        errbacks = self.options.setdefault("link_error", [])
        errbacks.append(errback)
        return errback

    def on_error(self, errback: Signature) -> Signature:
        self.link_error(errback)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in messages (arguments encoded as when sent)."""
        args, kwargs = send.encode_args(self.args, self.kwargs, str(self.task))
        options = dict(self.options)
        for key in ("link", "link_error"):
            if options.get(key):
                options[key] = send._signature_dicts(key, options[key])
        return {
            "task": self.task,
            "args": args,
            "kwargs": kwargs,
            "options": params.encode(options, f"options of {self.task}"),
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
            "chord_size": None,
        }

    # -- calling ------------------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        app = _app(self._app)
        sig = self.clone(args, kwargs, **options)
        send.check_options(sig.options)
        if app.conf.task_always_eager:
            return sig.apply()
        sig.freeze()
        rows = rows_for(app, sig.to_dict(), [], now=send.utcnow())
        if not send.insert_rows(rows):
            return None  # its concurrency key is taken
        return AsyncResult(sig.id or "", app=app, task_name=sig.task)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Run now, in this process (eager)."""
        sig = self.clone(args, kwargs, **options)
        opts = dict(sig.options)
        send.check_options(opts)
        return registry.get(sig.task).apply(
            sig.args,
            sig.kwargs,
            task_id=opts.get("task_id"),
            link=opts.get("link"),
            link_error=opts.get("link_error"),
            parent_id=opts.get("parent_id"),
            root_id=opts.get("root_id"),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task function here (not through the queue), as Celery does."""
        new_args, new_kwargs, _ = self._merge(args, kwargs, {})
        return registry.get(self.task)(*new_args, **new_kwargs)

    def __or__(self, other: Any) -> chain:
        # a | group(...) runs the group with a's value; a | group | b is a
        # chord after a (chain() makes it one, as Celery does).
        if isinstance(other, Signature):
            return chain(self, other)
        return NotImplemented

    # -- Celery's unsupported canvas helpers --------------------------------------------

    def stamp(self, *args: Any, **kwargs: Any) -> Any:
        raise NotSupported("signature stamping", "Pass what you need as task arguments or headers=.")


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """``signature("proj.tasks.add", args=(2, 3))`` or a copy of a signature."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, dict):
        raise NotSupported("signature(dict)", "Build signatures with task.s(...) or signature('name', args=...).")
    return Signature(varies, *args, **kwargs)


def _flatten(tasks: tuple[Any, ...]) -> list[Any]:
    if len(tasks) == 1 and not isinstance(tasks[0], Signature) and isinstance(tasks[0], Iterable):
        return list(tasks[0])
    return list(tasks)


class chain(Signature):  # noqa: N801  (Celery's name)
    """``chain(a.s(1), b.s(), c.s())`` or ``a.s(1) | b.s()``: each result is
    the first argument of the next step (unless it is immutable, ``.si``)."""

    def __new__(cls, *tasks: Any, app: App | None = None, **options: Any) -> Any:
        # A chain that starts with a group is a chord, as Celery upgrades it:
        # chain(group(a, b), c, d) runs c(results) then d.
        items = _flatten(tasks)
        if items and isinstance(items[0], group) and not options:
            rest = items[1:]
            if not rest:
                return items[0]
            body = rest[0] if len(rest) == 1 else chain(*rest, app=app)
            return chord(items[0], body, app=app)
        return super().__new__(cls)

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        flat: list[Any] = []
        for task in _flatten(tasks):
            if isinstance(task, chain):
                flat.extend(task.tasks)
            elif isinstance(task, Signature):
                flat.append(task)
            else:
                raise TypeError(f"chain() takes signatures (task.s(...)), got {task!r}.")
        steps: list[Signature] = []
        for index, task in enumerate(flat):
            rest = flat[index + 1 :]
            if isinstance(task, group) and rest:
                # As Celery: a group followed by more steps is a chord whose body is the rest.
                steps.append(chord(task, rest[0] if len(rest) == 1 else chain(*rest, app=app), app=app))
                break
            if isinstance(task, chord) and rest:
                if task.body is None:
                    raise ValueError("A chord in a chain needs a body: chord(header, body).")
                steps.append(chord(task.kwargs["header"], chain(task.body, *rest, app=app), app=app))
                break
            steps.append(task)
        for step in steps[1:]:
            # Such a group is fanned out by the step before it, in the worker
            # (canvas_rows.py): refused here, not as that step finishes.
            for member in step.tasks if isinstance(step, group) else []:
                check_header_member(member, "inside a group that follows a chain step")
        super().__init__("celery.chain", (), {"tasks": steps}, options, subtask_type="chain", app=app)
        self._depth = checked_depth("chain", steps)

    @property
    def tasks(self) -> list[Signature]:
        return list(self.kwargs["tasks"])

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))

    def link_error(self, errback: Signature) -> Signature:
        # As Celery: every step gets it (any of them may fail).
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def __or__(self, other: Any) -> chain:
        if isinstance(other, Signature):
            return chain(*self.tasks, other)
        return NotImplemented

    def clone(self, args: Any = None, kwargs: Any = None, **options: Any) -> chain:
        steps = [step.clone() for step in self.tasks]
        if steps and (args or kwargs):
            steps[0] = steps[0].clone(args, kwargs)
        return chain(*steps, app=self._app, **{**self.options, **options})

    def freeze(self, _id: str | None = None, **kwargs: Any) -> Any:
        """Fix every step's id; the chain's result is its last step's (a
        GroupResult for a group; a chord's body's), with the earlier steps as
        parents."""

        result: Any = None
        steps = self.tasks
        for index, step in enumerate(steps):
            if index == len(steps) - 1 and _id is not None and not isinstance(step, (group, chord)):
                step.options["task_id"] = _id
            parent = result
            result = step.freeze()
            node = result
            while getattr(node, "parent", None) is not None:  # a chord's body -> its header
                node = node.parent
            node.parent = parent
        if result is None:
            raise ValueError("An empty chain has no result.")
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "celery.chain",
            "args": [],
            "kwargs": {"tasks": [step.to_dict() for step in self.tasks]},
            "options": {},
            "subtask_type": "chain",
            "immutable": False,
            "chord_size": None,
        }

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        app = _app(self._app)
        sig = self.clone(args, kwargs)
        if options:
            raise NotSupported(
                f"chain.apply_async({', '.join(sorted(options))}=...)",
                "Set options on each step: a.s().set(queue=...).",
            )
        if not sig.tasks:
            raise ValueError("chain() needs at least one task.")
        if app.conf.task_always_eager:
            return sig.apply()
        result = sig.freeze()
        now = send.utcnow()
        starts: list[ChordStart] = []
        rows = rows_for(app, sig.to_dict(), [], now=now, chord_starts=starts)
        with db_engine.connect() as conn, conn.begin():
            start_chords(conn, starts, now)
            if not send.insert_rows(rows, conn):
                return None
        return result

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        sig = self.clone(args, kwargs)
        result: Any = None
        for index, step in enumerate(sig.tasks):
            parent = result
            result = step.apply() if index == 0 else step.apply((parent.get(),))
            result.parent = parent
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


class group(Signature):  # noqa: N801
    """``group(add.s(i, i) for i in range(10))``: run in parallel; the result
    is a GroupResult whose ``get()`` lists the values in order."""

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        steps = []
        for task in _flatten(tasks):
            # A group in a group stays one member until it runs: Celery
            # unrolls it then (canvas_shapes.py), in an order that depends on
            # whether the group is frozen.
            if not isinstance(task, Signature):
                raise TypeError(f"group() takes signatures (task.s(...)), got {task!r}.")
            steps.append(task)
        super().__init__("celery.group", (), {"tasks": steps}, options, subtask_type="group", app=app)
        self._depth = checked_depth("group", steps)

    @property
    def tasks(self) -> list[Signature]:
        """The members, inner groups unrolled in order (empty chains dropped)."""
        return in_order(self.kwargs["tasks"])

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"

    def link_error(self, errback: Signature) -> Signature:
        # As Celery: every member gets an immutable copy (a failed member's
        # id is not passed), so it may run once per failed member.
        for step in self.tasks:
            step.link_error(errback.clone().set(immutable=True))
        return errback

    # -- as a chain step (canvas_rows.py sends it) --------------------------------------

    def clone(self, args: Any = None, kwargs: Any = None, **options: Any) -> group:
        # Partial arguments go to every member, as in Celery.
        return group(
            [step.clone(args, kwargs) for step in self.kwargs["tasks"]],
            app=self._app,
            **{**self.options, **options},
        )

    def freeze(self, _id: str | None = None, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        """Fix the group's id (options task_id, as Celery) and its members'.
        As Celery's ``_freeze_unroll``, inner groups are unrolled for good, in
        its order (canvas_shapes.unrolled)."""
        if _id is not None:
            self.options["task_id"] = _id
        group_id = self.options.setdefault("task_id", messages.new_task_id())
        self.kwargs["tasks"] = unrolled(self.kwargs["tasks"])
        return GroupResult(group_id, [step.freeze() for step in self.tasks], app=self._app)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "celery.group",
            "args": [],
            "kwargs": {"tasks": [step.to_dict() for step in self.tasks]},
            "options": {"task_id": self.options["task_id"]} if self.options.get("task_id") else {},
            "subtask_type": "group",
            "immutable": False,
            "chord_size": None,
        }

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> GroupResult:
        app = _app(self._app)
        if options:
            raise NotSupported(
                f"group.apply_async({', '.join(sorted(options))}=...)",
                "Set options on each task: a.s().set(queue=...).",
            )
        steps = [step.clone(args, kwargs) for step in self.tasks]
        group_id = messages.new_task_id()
        if app.conf.task_always_eager:
            return GroupResult(group_id, [step.apply() for step in steps], app=app)
        results = [step.freeze() for step in steps]
        now = send.utcnow()
        rows: list[dict[str, Any]] = []
        starts: list[ChordStart] = []
        for index, step in enumerate(steps):
            # A chain in a group is one member: its last step is the result;
            # so is a chord (its body), as in Celery, its counter row made
            # in the group's transaction.
            if isinstance(step, (chain, chord)):
                rows += rows_for(app, step.to_dict(), [], now=now, chord_starts=starts)
            else:
                rows += rows_for(app, step.to_dict(), [], now=now, group_id=group_id, group_index=index)
        with db_engine.connect() as conn, conn.begin():
            start_chords(conn, starts, now)
            send.insert_rows(rows, conn)
        return GroupResult(group_id, results, app=app)

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> GroupResult:
        steps = [step.clone(args, kwargs) for step in self.tasks]
        return GroupResult(messages.new_task_id(), [step.apply() for step in steps], app=self._app)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chord:  # type: ignore[override]
        # Celery upgrades ``group | task`` to a chord.
        if isinstance(other, Signature) and not isinstance(other, (group, chord)):
            return chord(self, other)
        raise NotSupported("group | (group or chord)", "Pipe a group into one task (a chord body).")


class chord(Signature):  # noqa: N801
    """``chord(header)(body)`` / ``chord(header, body).apply_async()``: run the
    header in parallel, then the body with the list of their results."""

    def __init__(self, header: Any, body: Signature | None = None, app: App | None = None, **options: Any) -> None:
        # The header's members as given: groups stay whole until the header
        # is frozen (canvas_shapes.py: Celery's order); chains count the
        # chord when their last step ends (canvas_rows.member_step).
        tasks = list(header.kwargs["tasks"]) if isinstance(header, group) else _flatten((header,))
        for task in tasks:
            if not isinstance(task, Signature):
                raise TypeError(f"A chord header holds signatures (task.s(...)), got {task!r}.")
        for task in in_order(tasks):
            check_header_member(task, "in a chord header")
        if body is not None and (not isinstance(body, Signature) or isinstance(body, (group, chord))):
            raise NotSupported("a group or chord as chord body", "The body is a task signature or a chain.")
        super().__init__(
            "celery.chord", (), {"header": list(tasks), "body": body}, options, subtask_type="chord", app=app
        )
        self._depth = checked_depth("chord", [*tasks, body])

    @property
    def tasks(self) -> list[Signature]:
        """The header as the worker runs it: inner groups unrolled as Celery
        freezes a header (canvas_shapes.unrolled), empty chains dropped."""
        return unrolled(self.kwargs["header"])

    def _eager_tasks(self) -> list[Signature]:
        # Celery's eager chord applies its header unfrozen: in order.
        return in_order(self.kwargs["header"])

    @property
    def body(self) -> Signature | None:
        return self.kwargs["body"]  # type: ignore[no-any-return]

    def __call__(self, body: Signature | None = None, **options: Any) -> Any:
        return self.apply_async((), {}, body=body, **options)

    def __or__(self, other: Any) -> chord:  # type: ignore[override]
        # As Celery: chord(header, body) | c runs c after the body.
        if self.body is not None and isinstance(other, Signature) and not isinstance(other, (group, chord)):
            return chord(self.kwargs["header"], chain(self.body, other), app=self._app, **self.options)
        return NotImplemented

    # -- as a chain step (canvas_rows.py sends it) --------------------------------------

    def clone(self, args: Any = None, kwargs: Any = None, **options: Any) -> chord:
        body = self.body.clone() if self.body is not None else None
        header = [step.clone(args, kwargs) for step in self.kwargs["header"]]
        return chord(header, body, app=self._app, **{**self.options, **options})

    def freeze(self, _id: str | None = None, **kwargs: Any) -> Any:
        """Fix the header's ids (the group id in options task_id) and the
        body's; the result is the body's, its parent the header's GroupResult."""
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header, body).")
        group_id = self.options.setdefault("task_id", messages.new_task_id())
        self.kwargs["header"] = self.tasks  # unrolled for good, as Celery freezes it
        header = GroupResult(group_id, [step.freeze() for step in self.tasks], app=self._app)
        result = self.body.freeze(_id)
        node = result
        while getattr(node, "parent", None) is not None:  # a chain body: its first step
            node = node.parent
        node.parent = header
        return result

    def to_dict(self) -> dict[str, Any]:
        """Celery's form: the header is a group's dict."""
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header, body).")
        header = group(self.tasks, app=self._app)
        return {
            "task": "celery.chord",
            "args": [],
            "kwargs": {"header": header.to_dict(), "body": self.body.to_dict(), "kwargs": {}},
            "options": {"task_id": self.options["task_id"]} if self.options.get("task_id") else {},
            "subtask_type": "chord",
            "immutable": False,
            "chord_size": None,
        }

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Run now, in this process (eager): the header, then the body with their values."""
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header, body).")
        header = GroupResult(messages.new_task_id(), [s.clone(args, kwargs).apply() for s in self._eager_tasks()])
        result = self.body.clone().apply((header.get(),))
        result.parent = header
        return result

    def link_error(self, errback: Signature) -> Signature:
        # As Celery (task_allow_error_cb_on_chord_header off): the body's;
        # it runs if a header part fails (the body's ChordError) or the body does.
        if self.body is None:
            raise ValueError("chord.link_error() needs a body: chord(header, body).link_error(errback).")
        self.body.link_error(errback)
        return errback

    def apply_async(self, args: Any = None, kwargs: Any = None, body: Signature | None = None, **options: Any) -> Any:
        app = _app(self._app)
        body = body if body is not None else self.body
        if body is None:
            raise ValueError("chord() needs a body: chord(header)(body) or chord(header, body).")
        if options:
            raise NotSupported(
                f"chord.apply_async({', '.join(sorted(options))}=...)",
                "Set options on each task: a.s().set(queue=...).",
            )
        body = body.clone()
        if app.conf.task_always_eager:
            steps = [step.clone(args, kwargs) for step in self._eager_tasks()]
            header = GroupResult(messages.new_task_id(), [step.apply() for step in steps], app=app)
            result = body.apply((header.get(),))
            result.parent = header
            return result
        body_result = body.freeze()
        steps = [step.clone(args, kwargs) for step in self.tasks]
        if not steps:
            # Celery calls the body at once with an empty list.
            return body.apply_async(([],))
        group_id = messages.new_task_id()
        results = [step.freeze() for step in steps]
        header = GroupResult(group_id, results, app=app)
        body_dict = body.to_dict()
        now = send.utcnow()
        rows: list[dict[str, Any]] = []
        for index, step in enumerate(steps):
            rows += rows_for(app, step.to_dict(), [], now=now, group_id=group_id, group_index=index, chord=body_dict)
        with db_engine.connect() as conn, conn.begin():
            db_results.start_chord(conn, group_id, json.dumps({"result": header.as_tuple()}), now)
            db_results.set_chord_size(conn, group_id, len(rows))
            inserted = send.insert_rows(rows, conn)
            if len(inserted) != len(rows):
                # Rolled back: a chord with a missing part would never end.
                raise RuntimeError(
                    "A chord header task was not enqueued (its concurrency key is taken): the chord was not sent."
                )
        body_result.parent = header
        return body_result
