"""The serving core, apart from HTTP: the guard state, the model thread, scoring a batch, reloading.

Everything that touches the model runs on one thread (``model_thread``): each batch, and each
reload's build and swap. A batch therefore reads one state from start to end, and a reload
never changes a state in use: it builds a complete new guard (the loaded encoder reused, the
blacklist, allowlist and threshold files re-read, every concept encoded) and swaps it in between
two batches. A failed reload leaves the serving state as it was.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..errors import LatentGuardError, UnreadableTextError
from ..guard.forms import form_cost
from .audit import Auditor, VerdictEvent
from .batcher import Job, MicroBatcher
from .metrics import ServerMetrics
from .settings import ServeSettings
from .state import GuardFactory, GuardState, build_state

log = logging.getLogger("latentguard.serve")


@dataclasses.dataclass(frozen=True)
class Split:
    """A request's prompts as one serving state's guard splits them: per prompt ``(forms, sentences)``."""

    generation: int
    forms: list[tuple[list[str], int]]
    units: int = 0  # what the forms cost to encode: form_cost with the serving encoder, summed when split
    unreadable: dict = dataclasses.field(default_factory=dict)  # prompt index -> its UnreadableTextError

    @property
    def cost(self) -> int:
        """What the encoder reads for the request, in prompt-sized units (the request's share of a batch and of
        the queue): a form one encoder pass reads costs one unit, a longer one a unit per
        :data:`~latentguard.guard.forms.CHARS_PER_UNIT` characters. Counting texts alone let one in-limit request
        of 24 prompts of 10,000 characters (long prompts are read over windows) hold the model thread for a
        minute (a hostile review)."""
        return self.units


class OverLimit(Exception):
    """A request found over a limit while it was being split, before the rest was split: ``index`` is the
    prompt over --max-sentences (``sentences`` of them), or None when the request passed ``cost`` units."""

    def __init__(self, index: int | None, sentences: int = 0, cost: int = 0) -> None:
        super().__init__(index, sentences, cost)
        self.index, self.sentences, self.cost = index, sentences, cost


class GuardServer:
    """A guard served to concurrent requests: ``load()``, then ``start()`` on the event loop, ``submit`` jobs."""

    def __init__(self, factory: GuardFactory, settings: ServeSettings | None = None, *,
                 on_verdict: Callable[[VerdictEvent], None] | None = None) -> None:
        self.factory = factory
        self.settings = settings or ServeSettings()
        self.metrics = ServerMetrics()
        self.auditor = Auditor(self.settings.audit_log, include_prompts=self.settings.audit_prompts,
                               on_verdict=on_verdict)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentguard-model")
        # long requests are split here, one at a time, so they never hold the threads short ones are split on
        self.split_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentguard-split")
        self.state: GuardState | None = None
        self.batcher: MicroBatcher | None = None
        self.last_reload: dict | None = None
        self._reload_lock: asyncio.Lock | None = None
        # Sanitizing's edits run on the model thread outside the batcher's queue: one piece at a time, whoever asks
        # (a /v1/check batch waits for one piece at most), and no more flagged prompts waiting for edits than the
        # queue holds at SANITIZE_WORK texts each (eight requests' edits had held a one-prompt check for 50 s).
        self.sanitize_turn: asyncio.Lock | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def load(self) -> GuardState:
        """Build the first state (on the model thread); a guard that cannot be built or cannot judge raises."""
        state = self.model_thread.submit(build_state, self.factory, 1).result()
        self._serve(state)
        return state

    @property
    def ready(self) -> bool:
        return self.state is not None and self.batcher is not None and self.batcher.running

    def start(self) -> None:
        """Start the batcher on the running event loop (the app's startup)."""
        s = self.settings
        self.batcher = MicroBatcher(self._score, self.model_thread, max_batch_size=s.max_batch_size,
                                    max_wait_s=s.max_wait_ms / 1000.0, queue_size=s.queue_size,
                                    on_depth=self.metrics.queue_depth.set)
        self._reload_lock = asyncio.Lock()
        self.sanitize_turn = asyncio.Lock()  # fair: pieces of concurrent /v1/sanitize requests take turns
        self.sanitizing = 0  # /v1/sanitize requests editing now
        self.batcher.start()
        self.metrics.ready.set(1 if self.state is not None else 0)

    async def stop(self) -> None:
        """Score what is queued, then stop the model thread and close the audit log (the app's shutdown)."""
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.close()
        self.model_thread.shutdown(wait=True)
        self.split_thread.shutdown(wait=False, cancel_futures=True)  # nothing split now would be scored
        self.auditor.close()

    def submit(self, prompts: list[str], *, explain: bool, request_id: str, endpoint: str,
               cost: int = 0, split: "Split | None" = None, refuse_each: bool = False,
               audit: bool = True, indices: list[int] | None = None) -> asyncio.Future:
        """Queue one request's prompts; the future gives ``(state, verdicts)`` (raises QueueFull / Closed).
        ``split``: the prompts' forms from :meth:`split`, scored as they are (each text is split once).
        ``refuse_each``: a prompt the guard cannot read gets a refused (blocked) verdict of its own
        (:mod:`latentguard.guard.refusals`) instead of failing the request (/v1/sanitize). ``audit=False``: the
        verdicts are not recorded with the batch; the caller records them with what it adds (/v1/sanitize's edits)."""
        forms, generation = ([f for f, _ in split.forms], split.generation) if split is not None else (None, 0)
        return self.batcher.submit(Job(prompts, cost, explain, request_id, endpoint, forms, generation,
                                       refuse_each, audit, unreadable=dict(split.unreadable) if split else {},
                                       indices=indices))

    def split(self, prompts: list[str], budget: int | None = None, max_sentences: int | None = None) -> "Split":
        """The texts the encoder will read for ``prompts`` (each prompt's forms under the serving guard's
        defences) and each prompt's sentence count: plain Python, off the model thread, done once per
        request; the batch scores these same forms. Prompt by prompt, stopping with :class:`OverLimit` at
        the first prompt over ``max_sentences`` or once the forms cost more than ``budget`` units: a request
        that is refused costs no more splitting than one the server would take (a hostile pass held every
        other request for 23 s with requests split whole, then refused)."""
        from ..guard.forms import forms_of

        state, out, cost, unreadable = self.state, [], 0, {}
        for i, prompt in enumerate(prompts):
            ((forms, sentences),) = forms_of(state.guard, [prompt])
            if max_sentences is not None and sentences > max_sentences:
                raise OverLimit(i, sentences=sentences)
            cost += form_cost(forms, state.guard.encoder)
            if budget is not None and cost > budget:
                raise OverLimit(None, cost=cost)
            out.append((forms, sentences))
            try:  # what the batch would find, found here: the request's own 422, or its refused verdict
                for form in forms:
                    state.guard.encoder.refuse_unreadable(form)
            except UnreadableTextError as exc:
                unreadable[i] = exc
            except Exception as exc:  # noqa: BLE001 - a tokenizer fault here is no verdict: the batch reads it again
                log.warning("reading a prompt ahead of its batch failed (%s: %s); the batch checks it",
                            type(exc).__name__, exc)
        return Split(state.generation, out, cost, unreadable)

    # -------------------------------------------------------------------------------- scoring
    def _score(self, jobs: list[Job]) -> list[tuple[GuardState, list]]:
        """One batch, on the model thread: one ``check()`` over every job's prompts, with one state."""
        state = self.state
        if state is None:
            raise LatentGuardError("no guard is loaded")
        prompts = [p for job in jobs for p in job.prompts]
        started = time.perf_counter()
        fresh = [job.forms is not None and job.generation == state.generation for job in jobs]
        forms = [f for job, ok in zip(jobs, fresh) for f in (job.forms if ok else [None] * len(job.prompts))]
        # prompts found unreadable when split (refuse_each jobs: the others were answered 422) are not scored
        refused, start = {}, 0
        for job, ok in zip(jobs, fresh):
            refused.update({start + i: exc for i, exc in job.unreadable.items()} if ok else {})
            start += len(job.prompts)
        keep = [i for i in range(len(prompts)) if i not in refused]
        explain = any(job.explain for job in jobs)
        if all(job.refuse_each for job in jobs):  # else an unreadable text fails the batch; each job is retried alone
            from ..guard.refusals import check_or_refused

            scored = check_or_refused(state.guard, [prompts[i] for i in keep], explain, [forms[i] for i in keep])
        else:
            scored = state.guard.check([prompts[i] for i in keep], explain=explain, forms=[forms[i] for i in keep])
        if len(scored) != len(keep):
            raise LatentGuardError(f"the guard gave {len(scored)} verdicts for {len(keep)} prompts")
        if refused:
            from ..guard.refusals import refused_verdict

            verdicts = [None] * len(prompts)
            for i, v in zip(keep, scored):
                verdicts[i] = v
            for i, exc in refused.items():
                verdicts[i] = refused_verdict(state.guard, prompts[i], exc)
        else:
            verdicts = list(scored)
        if len(verdicts) != len(prompts):
            raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {len(prompts)} prompts")
        out, start, events, now = [], 0, [], time.time()
        for job in jobs:
            mine = verdicts[start : start + len(job.prompts)]
            start += len(job.prompts)
            if not job.explain:
                mine = [dataclasses.replace(v, evidence=[]) if v.evidence else v for v in mine]
            out.append((state, mine))
            if self.auditor.active and job.audit:
                events.extend(VerdictEvent(now, job.request_id, job.endpoint, job.indices[i] if job.indices else i,
                                           state.model, state.generation, v) for i, v in enumerate(mine))
        if events:
            self.auditor(events)  # before any answer: a failure fails the batch
        m = self.metrics
        m.batch_size.observe(len(prompts))
        m.batch_seconds.observe(time.perf_counter() - started)
        flagged = [v for v in verdicts if v.unsafe]
        if flagged:
            m.flagged.inc(len(flagged))
            for v in flagged:
                for name, on in v.categories.items():
                    if on:
                        m.flagged_categories.labels(name).inc()
        return out

    # -------------------------------------------------------------------------------- reload
    async def reload(self, reason: str) -> GuardState:
        """Re-read the key files, the blacklist and threshold files, encode the new blacklist, swap both in
        between batches; open the audit log at its path again (log rotation).

        Keys read well apply at once, whatever becomes of the rest. Raises :class:`LatentGuardError` (one line) and
        keeps the serving state when a step fails (a key file now empty or unreadable: the old keys serve on rather
        than none or a server locked shut).
        """
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            try:
                # the key files are read off the model thread: a slow read must not stall scoring
                # keys apply as soon as they are read, whatever becomes of the rest: a revoked key had kept serving
                # whenever the blacklist or the audit log then failed the reload (a twenty-fourth hostile pass)
                self.settings = await loop.run_in_executor(None, self._reread_keys)
                await loop.run_in_executor(None, self.auditor.reopen)  # log rotation: a new file at the path
                state = await loop.run_in_executor(self.model_thread, self._build_and_swap)
            except LatentGuardError as exc:
                self._reloaded(reason, None, str(exc))
                raise
            except Exception as exc:  # a fault while building: reported in one line, old state kept
                self._reloaded(reason, None, f"{type(exc).__name__}: {exc}")
                raise LatentGuardError(f"{type(exc).__name__}: {exc}") from None
            self._reloaded(reason, state, None)
            return state

    def _build_and_swap(self) -> GuardState:
        current = self.state
        state = build_state(self.factory, current.generation + 1, encoder=current.guard.encoder)
        self._serve(state)  # on the model thread, between batches
        return state

    def _reread_keys(self) -> ServeSettings:
        """The settings with the key files read again (the same settings when none is named)."""
        from .settings import read_keys

        s = self.settings
        api = read_keys(s.api_key_file, "--api-key-file") if s.api_key_file else s.api_keys
        admin = read_keys(s.admin_key_file, "--admin-key-file") if s.admin_key_file else s.admin_keys
        return dataclasses.replace(s, api_keys=api, admin_keys=admin)

    def _serve(self, state: GuardState) -> None:
        self.state = state
        self.metrics.concepts.set(len(state.guard.concepts))
        self.metrics.generation.set(state.generation)

    def _reloaded(self, reason: str, state: GuardState | None, error: str | None) -> None:
        self.metrics.reloads.labels("ok" if error is None else "failed").inc()
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if error is None:
            from ..guard.options import threshold_line

            self.last_reload = {"time": when, "reason": reason, "ok": True, "generation": state.generation}
            log.info("reload (%s): generation %d, %d concepts in %d categories, %s", reason, state.generation,
                     len(state.guard.concepts), len(state.guard.options.groups()), threshold_line(state.guard))
        else:
            self.metrics.errors.labels("reload").inc()
            self.last_reload = {"time": when, "reason": reason, "ok": False, "error": error}
            log.error("reload (%s) failed, still serving generation %d: %s", reason, self.state.generation, error)
