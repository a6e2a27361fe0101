"""The ``ray`` engine: decode tasks over a whole Ray cluster feed embedding actors.

The driver (the machine running ``vidfeat extract``) hands out work and writes nothing:

- **Decoding** runs as one-CPU tasks anywhere in the cluster, at most ``--workers`` at once,
  each in an isolated process with the local wall-clock limit (``_ray_workers``).
- **Embedding** runs in ``--embed-workers`` actors, one GPU each (or one CPU each when the
  cluster has no GPU or ``--device cpu``). Each writes its own part of the store.
- **Work is pulled**: a video is decoded when a decode slot frees up and goes to the actor
  with the fewest calls in flight, so a slow or dead node holds back only what it holds.
- **Progress** counts videos whose rows are committed, reported back by the actors.

Nothing is retried by Ray in a way that could write twice: decode tasks (which write nothing)
are retried on worker loss; actors are not restarted. When an actor dies, the videos it held
but had not reported committed go back to the queue and a new actor (a new part) takes its
place. A video the dead actor committed just before dying is then written twice, in two parts;
readers show one row per video (the first ``ok`` row in part-name order, see
docs/store-format.md), and both rows hold the same features.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import socket
import time
from typing import Any

from vidfeat.config import ExtractConfig
from vidfeat.decode.pool import VideoFailed
from vidfeat.engines.base import ENGINES
from vidfeat.errors import ConfigError, EngineError, StoreError, VidfeatError
from vidfeat.location import Location, RemotePath
from vidfeat.manifest import ManifestEntry

log = logging.getLogger(__name__)

_CALLS_PER_ACTOR = 2  # one being embedded, one waiting: the GPU never idles on a round trip
_MAX_ACTOR_DEATHS = 3  # actors lost in a row, none reporting in between: give up
_STOP_TIMEOUT_S = 60.0  # for actors to commit what is whole when the job stops early


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray: pip install 'vidfeat[ray]' (on every node)"
        ) from None
    return ray


_HOST_PORT = re.compile(r"(?:ray://)?\[?(?P<host>[^\[\]/]+?)\]?:(?P<port>\d+)/?")
_PROBE_TIMEOUT_S = 10.0


def _unreachable(address: str, detail: object) -> EngineError:
    # Ray's own advice names its CLI's --address flag; ours is --ray-address.
    return EngineError(
        f"cannot reach the Ray cluster at {address}: {detail} (vidfeat: --ray-address or "
        "RAY_ADDRESS; how to start a cluster: docs/ray.md)"
    )


def _probe(address: str) -> None:
    """Refuse a ``host:port`` where nothing answers, before Ray retries it for many minutes."""
    match = _HOST_PORT.fullmatch(address)
    if match is None:  # "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((match["host"], int(match["port"])), _PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise _unreachable(address, f"nothing answers there ({exc.strerror or exc})") from exc


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or (None) start one on this machine; True when this
    call started Ray."""
    if ray.is_initialized():
        return False
    if address:
        _probe(address)
    try:
        # "local": a new cluster for this job even where one already runs on this machine
        # (ray.init() alone would join that one, with its workers' environment).
        ray.init(address=address or "local", log_to_driver=False)
    except ConnectionError as exc:
        detail = str(exc)
        if address and _HOST_PORT.fullmatch(address) and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray logs the refusal but raises a generic "failed to connect"; `ray start` uses
            # token authentication by default since Ray 2.59, a driver only when told to.
            detail += (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token here "
                "(and RAY_AUTH_TOKEN to the output of `ray get-auth-token` on another machine)"
            )
        raise _unreachable(address, detail) from exc
    return True


def _recorded(cfg: ExtractConfig) -> tuple[set[str], dict[str, tuple[str, int]]]:
    """The store's extracted ids and its failures (``ExtractJob.resume`` takes both)."""
    from vidfeat.store import open_store

    try:
        reader = open_store(cfg.out, cfg.format)
    except StoreError:
        return set(), {}
    with reader:
        return set(reader.ok_ids), reader.failed_attempts()


def _absolute_paths(cfg: ExtractConfig) -> ExtractConfig:
    """The paths workers open, made absolute: Ray workers run in other folders. (The store
    records weights by file name and PCA by content, so this changes no store attrs.)"""
    changes: dict[str, Any] = {"out": _absolute(cfg.out)}
    for name in ("weights", "pca", "audio_weights", "audio_pca"):
        value = getattr(cfg, name)
        if value and os.path.exists(value):
            changes[name] = os.path.abspath(value)
    return dataclasses.replace(cfg, **changes)


def _absolute(location: Location) -> Location:
    """A local path made absolute; a URL (an object store) as it is."""
    return location if isinstance(location, RemotePath) else location.absolute()


@ENGINES.register("ray")
def run_ray(cfg: ExtractConfig) -> Any:
    """Extract this shard of the manifest on a Ray cluster."""
    from vidfeat.pipeline import prepare, progress_bar
    from vidfeat.signals import sigterm_as_interrupt
    from vidfeat.store import check_store

    ray = _import_ray()
    cfg = _absolute_paths(cfg)
    # The driver needs the backbone's spec only (store attrs, preprocessing); the actors load
    # their own on their devices, so it is loaded here on the CPU, eagerly at full precision.
    job = prepare(cfg, device="cpu", precision="fp32", runtime="eager")
    spec, job.backbone = job.backbone.spec, None
    audio_front = None if job.audio is None else job.audio.backbone.spec.front_end
    job.audio = None
    # Connected first: a job that cannot reach its cluster writes nothing (not even the
    # store's root, whose attrs would hold this run's settings).
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    started_ray = _connect(ray, address)
    try:
        check_store(cfg.out, **job.store_settings)  # refuse other settings before starting
        todo = job.resume(*_recorded(cfg))
        with sigterm_as_interrupt(), progress_bar(len(todo), cfg.progress) as bar:
            # A cluster started here, on this machine, has the CPUs it has.
            local = started_ray and not address
            scheduler = _Scheduler(ray, cfg, job, spec, audio_front, bar, local)
            scheduler.start()
            job.summary.setup_s = time.monotonic() - job.started
            scheduler.run(todo)
    finally:
        if started_ray:
            ray.shutdown()
    return job.summary


def _described(view: dict | str) -> str:
    """A store view of ``_ray_workers.store_view`` in words."""
    if isinstance(view, str):
        return view
    return (
        f"the store created {view.get('created_at', '?')} by vidfeat {view.get('vidfeat_version')}"
    )


@dataclasses.dataclass
class _Actor:
    handle: Any
    calls: int = 0  # calls in flight
    held: dict[str, ManifestEntry] = dataclasses.field(default_factory=dict)  # not yet committed
    finishing: bool = False
    finished: bool = False


class _Scheduler:
    """The driver's loop: decode tasks in flight, decoded videos waiting, actor calls."""

    def __init__(
        self,
        ray: Any,
        cfg: ExtractConfig,
        job: Any,
        spec: Any,
        audio: Any,
        bar: Any,
        fixed_cluster: bool = False,
    ) -> None:
        import functools

        from vidfeat.engines._ray_workers import (
            DecodeSettings,
            EmbedWorker,
            decode_video,
            store_view,
        )
        from vidfeat.preprocess import preprocess_frame

        self.ray, self.cfg, self.summary, self.bar = ray, cfg, job.summary, bar
        self.settings = DecodeSettings(
            cfg.decoder,
            cfg.fps_fraction,
            cfg.max_frames,
            functools.partial(preprocess_frame, spec=spec),
            cfg.timeout_s,
            audio=audio,
        )
        # A decode task whose worker or node dies is run again: it writes nothing.
        self.decode = ray.remote(decode_video).options(num_cpus=1, num_returns=2, max_retries=3)
        device, n_actors, resources = self._embed_resources()
        self.n_actors = n_actors
        self._check_cpus(n_actors * resources["num_cpus"], fixed=fixed_cluster)
        worker = ray.remote(EmbedWorker).options(max_restarts=0, max_task_retries=0, **resources)
        # The store as the driver sees it (created by check_store before the scheduler).
        self.store = store_view(cfg)
        self.new_actor = functools.partial(
            worker.remote, cfg, job.store_settings, device, self.store
        )
        self.queue: collections.deque[ManifestEntry] = collections.deque()
        self.decoding: dict[Any, tuple[ManifestEntry, Any]] = {}  # small ref -> entry, frames
        self.decoded: collections.deque[tuple[ManifestEntry, Any]] = collections.deque()
        self.actors: list[_Actor] = []
        self.calls: dict[Any, _Actor] = {}
        self.deaths = 0
        self.started = time.monotonic()

    def _embed_resources(self) -> tuple[str, int, dict]:
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        if self.cfg.device.startswith("cuda") and not gpus:
            raise ConfigError(f"--device {self.cfg.device}: the Ray cluster has no GPU")
        use_gpu = gpus > 0 and self.cfg.device != "cpu"
        n = self.cfg.embed_workers or (gpus if use_gpu else 1)
        if use_gpu:
            return "cuda", n, {"num_gpus": 1, "num_cpus": 1}
        return "cpu", n, {"num_cpus": 1}

    def _check_cpus(self, held: int, fixed: bool) -> None:
        """The embedding workers hold their CPUs for the whole job: with none left over, no
        decode task could ever start and the job would wait forever."""
        cpus = float(self.ray.cluster_resources().get("CPU", 0))
        if cpus - held >= 1:
            return
        problem = (
            f"the Ray cluster has {cpus:g} CPU(s) and the {self.n_actors} embedding worker(s) "
            f"hold {held}: none is left for decode tasks"
        )
        if fixed:  # the cluster this job started on this machine: it will not grow
            raise ConfigError(f"{problem}; use --engine local here, or a larger cluster")
        log.warning("%s; decoding starts once the cluster has more CPUs", problem)

    # ---------------------------------------------------------------- the loop

    def start(self) -> None:
        """Start the embedding workers and wait until each has loaded its model, so that a
        model that cannot load stops the job before any work, and setup is timed apart."""
        self.actors = [_Actor(self.new_actor()) for _ in range(self.n_actors)]
        try:
            answers = self.ray.get([a.handle.ready.remote() for a in self.actors])
        except self.ray.exceptions.RayError as exc:
            self._stop()
            raise EngineError(f"embedding workers cannot start: {exc}") from exc
        mine = self.store
        # A node with an older vidfeat answers with its part alone: the same environment is
        # required on every node (docs/ray.md), and its store cannot be compared.
        views = [a[1] if isinstance(a, tuple) else "an older vidfeat's answer" for a in answers]
        others = [view for view in views if view != mine]
        if others:  # their videos would go where this driver never looks
            self._stop()
            raise EngineError(
                f"{len(others)} of {len(answers)} embedding worker(s) see another store at "
                f"{self.cfg.out} than this driver: {_described(others[0])}, where this driver "
                f"sees {_described(mine)}. Workers use the environment `ray start` ran with: "
                "give every node the same path (a shared filesystem) or the same object-store "
                "settings (endpoint and credentials, e.g. AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID)"
            )

    def run(self, todo: list[ManifestEntry]) -> None:
        self.queue.extend(todo)
        try:
            while self._step():
                pass
        finally:
            self._stop()

    def _step(self) -> bool:
        """Hand out work, then wait for one result; False once every actor has finished."""
        self._launch_decodes()
        self._dispatch()
        if not (self.queue or self.decoding or self.decoded or self.calls):
            live = [a for a in self.actors if not a.finished]
            if not live:
                return False
            for actor in live:
                if not actor.finishing:
                    actor.finishing = True
                    self._call(actor, actor.handle.finish.remote())
        waiting = [*self.decoding, *self.calls]
        if not waiting:
            return True
        ready, _ = self.ray.wait(waiting, num_returns=1, timeout=5.0)
        for ref in ready:
            if ref in self.decoding:
                self._decoded(ref)
            else:
                self._reported(ref)
        return True

    def _launch_decodes(self) -> None:
        while (
            self.queue
            and len(self.decoding) < self.cfg.workers
            and len(self.decoded) < _CALLS_PER_ACTOR * self.n_actors
        ):
            entry = self.queue.popleft()
            path = str(_absolute(entry.path))  # relative to the driver's folder
            small, frames = self.decode.remote(self.settings, entry.video_id, path)
            self.decoding[small] = (entry, frames)

    def _decoded(self, ref: Any) -> None:
        entry, frames = self.decoding.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, VidfeatError):  # e.g. decode processes cannot start
                raise cause from exc
            raise
        except self.ray.exceptions.RayError as exc:  # its worker or node died, retries spent
            reason = f"decode task lost ({type(exc).__name__})"
            log.warning("%s: crashed (%s)", entry.path, reason)
            frames = [VideoFailed(entry.video_id, "crashed", reason)]
        self.decoded.append((entry, frames))

    def _dispatch(self) -> None:
        while self.decoded:
            open_actors = [a for a in self.actors if not a.finishing and a.calls < _CALLS_PER_ACTOR]
            if not open_actors:
                return
            actor = min(open_actors, key=lambda a: a.calls)
            entry, frames = self.decoded.popleft()
            actor.held[entry.video_id] = entry
            self._call(actor, actor.handle.add.remote(entry, frames))

    def _call(self, actor: _Actor, ref: Any) -> None:
        actor.calls += 1
        self.calls[ref] = actor

    def _reported(self, ref: Any) -> None:
        actor = self.calls.pop(ref)
        actor.calls -= 1
        try:
            reports = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._lost(actor, exc)
            return
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, VidfeatError):  # --fail-fast, a store error: as locally
                raise cause from exc
            raise
        self.deaths = 0
        if actor.finishing and actor.calls == 0:
            actor.finished = True
        for report in reports:
            actor.held.pop(report.video_id, None)
            self._count(report)

    def _lost(self, actor: _Actor, exc: Exception) -> None:
        """An actor died: requeue what it had not committed, and start another in its place."""
        if actor not in self.actors:
            return  # already handled through another of its calls
        self.actors.remove(actor)
        self.calls = {r: a for r, a in self.calls.items() if a is not actor}
        log.warning(
            "an embedding worker died (%s); %d uncommitted videos go back to the queue",
            type(exc).__name__,
            len(actor.held),
        )
        self.queue.extendleft(reversed(list(actor.held.values())))
        self.deaths += 1
        if self.deaths >= _MAX_ACTOR_DEATHS:
            raise EngineError(f"embedding workers keep dying: {exc}") from exc
        self.actors.append(_Actor(self.new_actor()))

    def _count(self, report: Any) -> None:
        s = self.summary
        if report.status == "ok":
            s.ok += 1
            s.frames += report.n_frames
            s.no_audio += report.no_audio
        else:
            s.failed += 1
            s.failures[report.video_id] = report.status
            log.warning("%s failed (%s): %s", report.video_id, report.status, report.reason)
        elapsed = max(1e-9, time.monotonic() - self.started)
        self.bar.set_postfix(frames_s=f"{s.frames / elapsed:.1f}", failed=s.failed, refresh=False)
        self.bar.update(1)

    def _stop(self) -> None:
        """Have live actors commit what is whole (after an error or Ctrl-C), then end them."""
        live = [a for a in self.actors if not a.finished]
        refs = [a.handle.finish.remote(False) for a in live]
        if refs:
            try:
                for reports in self.ray.get(refs, timeout=_STOP_TIMEOUT_S):
                    for report in reports:
                        self._count(report)
            except Exception as exc:  # the job is failing already; report that error, not this
                log.warning("embedding workers did not all commit before stopping: %s", exc)
        for actor in self.actors:
            self.ray.kill(actor.handle)
