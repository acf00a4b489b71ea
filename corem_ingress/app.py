"""Wiring from config: Redis (embedded or URL), registry, resolver, bus, sessions, listeners.

The Node owns every task and the graceful shutdown: stop accepting, tell
devices to go, finish in-flight appends, exit within the configured deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from corem_ingress import __version__, compiled, event_loop, fdlimit, gc_tuning, health, metrics
from corem_ingress.adapters import Listener
from corem_ingress.config import Config
from corem_ingress.core.access import AccessPolicy
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.events import CredentialEvent, EventType
from corem_ingress.core.limits import DeviceRateLimiter, TenantConnections
from corem_ingress.core.resolver_cache import ResolverCache
from corem_ingress.core.throttle import AuthThrottle
from corem_ingress.core.trusted_proxies import TrustedProxies
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.resolver import Resolver
from corem_ingress.services import Services, Stores
from corem_ingress.session_hub import SessionHub
from corem_ingress.state_dir import CONFIG_PATH_FILE, KEK_PATH_FILE, REDIS_URL_FILE
from corem_ingress.store import connection
from corem_ingress.store.bus import RevocationBus
from corem_ingress.store.clients import RedisClients
from corem_ingress.store.device_sessions import DeviceSessions
from corem_ingress.store.downlinks import DownlinkPublisher, DownlinkRouter
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.limits_sync import LimitsSync
from corem_ingress.store.lookups import LookupBatcher
from corem_ingress.store.lwm2m import Lwm2mStore
from corem_ingress.store.registry import Registry
from corem_ingress.store.sessions_index import SessionsIndexWriter, disconnect_listener
from corem_ingress.store.uplinks import UplinkStore
from corem_ingress.tasks import still_running
from corem_ingress.trust_bootstrap import bootstrap_cas

log = structlog.get_logger("corem.app")


def redis_client(url: str, *, socket_timeout: float = 2.0) -> aioredis.Redis:
    """Kept for existing callers: see ``corem_ingress.store.connection.redis_client``."""
    return connection.redis_client(url, socket_timeout=socket_timeout)


ListenerFactory = Callable[[Services], Listener | None]


def default_listener_factories() -> list[ListenerFactory]:
    """Adapters present in this build, each deciding from config whether it is enabled."""
    factories: list[ListenerFactory] = []
    for module in ("http", "mqtt", "coap"):
        try:
            mod = __import__(f"corem_ingress.adapters.{module}", fromlist=["build"])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("corem_ingress.adapters"):
                continue
            raise
        factories.append(mod.build)
    return factories


class Node:
    def __init__(
        self,
        config: Config,
        *,
        keyring_environ: dict[str, str] | None = None,
        listener_factories: list[ListenerFactory] | None = None,
        clock: Callable[[], float] = time.time,
        config_file: str | Path | None = None,
    ) -> None:
        self.config = config
        #: The file ``config`` was loaded from (recorded in the state dir for the dev CLI).
        self._config_file = Path(config_file) if config_file is not None else None
        self.keyring = config.load_keyring(keyring_environ)
        self._kek_file = config.kek_file(keyring_environ) if self.keyring is not None else None
        self.clock = clock
        self._factories = (
            listener_factories if listener_factories is not None else default_listener_factories()
        )
        self.embedded: EmbeddedRedis | None = None
        self.redis_url = config.redis.url
        self.listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._health_runner: web.AppRunner | None = None
        self.health_port: int | None = None
        self.services: Services | None = None
        #: The node's Redis clients, one pool per class of traffic (store/clients.py).
        self.clients: RedisClients | None = None
        #: The admin (registry) client: what tests and tools use to look at the data.
        self.redis: aioredis.Redis | None = None
        #: The dependencies' last check ({"redis", "bus"}), refreshed every
        #: health.check_interval_s: /readyz and corem_degraded report it.
        self.dependencies: dict[str, bool] = {"redis": False, "bus": False}
        #: Listeners started and not stopping: devices can be served by this node.
        self.accepting = False
        self.keys = KeySchema(config.redis.key_prefix)
        self.bus: RevocationBus | None = None
        self.limits_sync: LimitsSync | None = None
        self.sessions_index: SessionsIndexWriter | None = None
        self._lwm2m_stop = asyncio.Event()
        self._lwm2m_store: Lwm2mStore | None = None
        self._event_tasks: set[asyncio.Task[None]] = set()

    async def start(self, before_listeners: Callable[[], None] | None = None) -> None:
        """Start everything; ``before_listeners`` runs once the services are built and before
        the first listener accepts (``serve`` freezes the collector there: a connection
        accepted before the freeze would be frozen with it and never freed)."""
        cfg = self.config
        if not self.redis_url:
            self.embedded = await asyncio.to_thread(
                EmbeddedRedis(binary=cfg.redis.embedded_binary).start
            )
            self.redis_url = self.embedded.url
            log.warning(
                "redis.embedded_started",
                url=self.redis_url,
                pid=self.embedded.pid,
                note="no redis.url configured: private redis-server, dev only, data not kept",
            )
            self._write_state(REDIS_URL_FILE, self.redis_url + "\n")
            if self._kek_file is not None:
                self._write_state(KEK_PATH_FILE, str(self._kek_file.resolve()) + "\n")
            if self._config_file is not None:
                self._write_state(CONFIG_PATH_FILE, str(self._config_file.resolve()) + "\n")
        timeout_s = cfg.redis.socket_timeout_s
        clients = RedisClients.connect(
            self.redis_url,
            socket_timeout_s=timeout_s,
            max_connections=cfg.redis.pool_max_connections,
            admin_max_connections=cfg.redis.admin_pool_max_connections,
            pool_wait_s=cfg.redis.pool_wait_s,
            admin_pool_wait_s=cfg.redis.admin_pool_wait_s,
            streams_max_connections=cfg.console.max_streams,
        )
        self.clients = clients
        redis = self.redis = clients.admin
        keys = self.keys
        cache = ResolverCache(
            ttl=cfg.resolver.cache_ttl_s,
            negative_ttl=cfg.resolver.negative_ttl_s,
            max_entries=cfg.resolver.cache_max_entries,
        )
        resolver = Resolver(
            redis,
            keys,
            cache,
            keyring=self.keyring,
            clock=self.clock,
            # Fewer reads in flight than pooled connections: a lookup never waits for the pool.
            lookups=LookupBatcher(
                clients.lookups,
                timeout_s=timeout_s,
                max_in_flight=max(1, min(4, cfg.redis.pool_max_connections - 1)),
            ),
            timeout_s=timeout_s,
            outage_grace_s=cfg.resolver.outage_grace_s,
        )
        hub = SessionHub(resolver, clock=self.clock)
        metrics.track(resolver=resolver, hub=hub)
        registry = Registry(
            redis,
            keys,
            keyring=self.keyring,
            api_key_overlap=cfg.credentials.api_key_overlap_s,
            api_key_overlap_max=cfg.credentials.api_key_overlap_max_s,
            psk_min_bytes=cfg.credentials.psk_min_bytes,
            clock=self.clock,
        )
        # Just-in-time provisioning: the resolver hands unregistered certificates over.
        registry.jitp_rate_per_minute = cfg.provisioning.tenant_rate_per_minute
        resolver.on_unknown_cert = registry.jit_provision
        self.services = Services(
            config=cfg,
            node_id=cfg.node_id,
            stores=Stores(clients, keys, timeout_s=timeout_s),
            registry=registry,
            resolver=resolver,
            sessions=hub,
            uplinks=UplinkStore(
                clients.uplinks_client or redis, keys, keyed=clients.uplinks, timeout_s=timeout_s
            ),
            downlinks=DownlinkRouter(),
            downlink_publisher=DownlinkPublisher(redis, keys),
            device_sessions=DeviceSessions(clients.sessions, keys),
            clock=self.clock,
            access=AccessPolicy(
                throttle=AuthThrottle(
                    max_failures=cfg.limits.auth_fail_max,
                    window_s=cfg.limits.auth_fail_window_s,
                    block_s=cfg.limits.auth_block_s,
                    max_sources=cfg.limits.auth_max_sources,
                ),
                device_rate=DeviceRateLimiter(
                    rate_per_s=cfg.limits.per_device_msgs_per_s,
                    burst=cfg.limits.per_device_burst,
                    max_keys=cfg.limits.rate_limit_max_devices,
                ),
                tenant_connections=TenantConnections(
                    max_per_tenant=cfg.limits.per_tenant_max_connections
                ),
                trusted_proxies=TrustedProxies(cfg.proxy.trusted_cidrs),
            ),
        )
        background = clients.background
        self.services.downlinks.reply_redis = background
        if cfg.lwm2m.enabled:
            self._lwm2m_store = Lwm2mStore(background, keys, grace_s=cfg.lwm2m.expiry_grace_s)
        metrics.track(throttle=self.services.access.throttle)
        self.bus = RevocationBus(
            background,
            keys.bus_channel,
            on_event=self._on_credential_event,
            on_resync=hub.resync,
            extra_channels={
                keys.downlink_channel: self.services.downlinks.on_message,
                keys.sessions_channel: disconnect_listener(
                    cfg.node_id,
                    lambda t, s: hub.disconnect_session(t, s, Cause.OPERATOR_DISCONNECT),
                ),
            },
            clock=self.clock,
        )
        self._spawn(self.bus.run(), "bus")
        self._spawn(hub.run_expiry_timer(), "expiry-timer")
        if cfg.sessions.index_interval_s > 0:
            self.sessions_index = SessionsIndexWriter(
                background,
                keys,
                cfg.node_id,
                interval_s=cfg.sessions.index_interval_s,
                max_entries=cfg.sessions.index_max_per_node,
                status=self._status_figures,
                clock=self.clock,
            )
            hub.mirror = self.sessions_index
            self._spawn(self.sessions_index.run_writer(), "sessions-index-writer")
            self._spawn(self.sessions_index.run_heartbeat(), "sessions-index-heartbeat")
        limits = cfg.limits
        if limits.sync_interval_s > 0 and (
            limits.per_tenant_max_connections > 0 or self.services.access.throttle.enabled
        ):
            self.limits_sync = LimitsSync(
                background,
                keys,
                cfg.node_id,
                self.services.access.tenant_connections,
                self.services.access.throttle,
                interval_s=limits.sync_interval_s,
                clock=self.clock,
            )
            self._spawn(self.limits_sync.run(), "limits-sync")
        await bootstrap_cas(registry, cfg.trust)
        await self._start_health()
        if before_listeners is not None:
            before_listeners()
        for factory in self._factories:
            listener = factory(self.services)
            if listener is None:
                continue
            await listener.start()
            self.listeners.append(listener)
            log.info("listener.started", listener=listener.name)
            lwm2m = getattr(listener, "lwm2m", None)
            if lwm2m is not None:
                # Operator requests for the LwM2M sessions this node holds (routed via Redis).
                await lwm2m.request_server.start_position()
                self._spawn(lwm2m.request_server.run(self._lwm2m_stop), "lwm2m-requests")
        self.accepting = True
        self._spawn(self._watch_dependencies(), "dependencies")
        if self.keyring is None:
            log.warning("psk.no_kek", note="PSK credentials are disabled: set COREM_PSK_KEK(_FILE)")
        modules = compiled.build()
        metrics.build_info(__version__, modules)
        log.info(
            "node.started",
            node=cfg.node_id,
            health_port=self.health_port,
            event_loop=event_loop.loop_name(asyncio.get_running_loop()),
            version=__version__,
            modules=modules,
        )
        why_pure = compiled.why_pure()
        if modules != "compiled" and why_pure != f"{compiled.PURE_ENV} is set":
            log.warning("node.pure_modules", modules=modules, reason=why_pure)

    def _status_figures(self) -> dict[str, Any]:
        """What this node shares each sessions-index heartbeat (the console's Health page)."""
        per_transport: dict[str, int] = {}
        if self.services is not None:
            for session in self.services.sessions.registry.sessions():
                per_transport[session.transport] = per_transport.get(session.transport, 0) + 1
        return {
            "accepting": self.accepting,
            "dependencies": dict(self.dependencies),
            "sessions": per_transport,
            "modules": compiled.build(),
            **metrics.key_figures(),
        }

    def _on_credential_event(self, event: CredentialEvent) -> None:
        assert self.services is not None
        self.services.sessions.on_event(event)  # closes this node's sessions of the credential
        if event.type is EventType.REVOKED and self._lwm2m_store is not None:
            # Every node does it (idempotent): the registration goes even if no node holds
            # a session for the device any more.
            task = asyncio.ensure_future(self._drop_registration(event))
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    async def _drop_registration(self, event: CredentialEvent) -> None:
        assert self._lwm2m_store is not None
        try:
            reg = await self._lwm2m_store.delete_device(
                event.device_id, credential_id=event.credential_id
            )
        except Unavailable as exc:
            log.warning("lwm2m.revocation_delete_failed", device=event.device_id, error=str(exc))
            return
        if reg is not None:
            log.info(
                "lwm2m.deregistered_on_revocation",
                device=event.device_id,
                registration=reg.registration_id,
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)

    def _write_state(self, name: str, text: str) -> None:
        state = Path(self.config.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True)
            (state / name).write_text(text)
        except OSError as exc:
            log.warning("state.write_failed", path=str(state / name), error=exc.strerror)

    async def _start_health(self) -> None:
        cfg = self.config.health
        runner = web.AppRunner(health.build_app(self.health_report), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        self._health_runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.health_port = sockets[0].getsockname()[1] if sockets else cfg.port

    async def ready_checks(self) -> dict[str, bool]:
        """The dependencies now: Redis answers a credential lookup (on a cluster: the
        registry's slot) within the timeout, and the revocation bus is subscribed."""
        redis_ok = False
        if self.services is not None:
            redis_ok = await self.services.resolver.redis_answers()
        bus_ok = self.bus is not None and self.bus.subscribed.is_set()
        return {"redis": redis_ok, "bus": bus_ok}

    def health_report(self) -> health.Report:
        """Liveness is the process answering; readiness is this node serving devices (not
        a shared dependency's state, unless health.readiness_requires_redis); "degraded"
        says what devices get meanwhile (docs/operations.md)."""
        deps = dict(self.dependencies)
        reasons = [name for name, ok in deps.items() if not ok]
        if self.services is not None and self.services.resolver.cache.fallbacks:
            reasons.append("outage_grace")
        ready = self.accepting and (
            not self.config.health.readiness_requires_redis or all(deps.values())
        )
        return health.Report(
            ready=ready, accepting=self.accepting, dependencies=deps, degraded=reasons
        )

    async def _watch_dependencies(self) -> None:
        interval = self.config.health.check_interval_s
        first = True
        while still_running():
            checks = await self.ready_checks()
            down = sorted(k for k, ok in checks.items() if not ok)
            if down and (first or checks != self.dependencies):
                log.warning("node.degraded", down=down)
            elif not down and not first and checks != self.dependencies:
                log.info("node.recovered")
            first = False
            self.dependencies = checks
            metrics.dependencies(checks)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        deadline = self.config.shutdown_deadline_s
        log.info("node.stopping", deadline_s=deadline)
        self.accepting = False  # /readyz turns 503 at once: load balancers stop sending
        self._lwm2m_stop.set()
        started = time.monotonic()
        for listener in reversed(self.listeners):
            remaining = max(0.1, deadline - (time.monotonic() - started))
            try:
                await asyncio.wait_for(listener.stop(remaining), timeout=remaining)
            except TimeoutError:
                log.warning("listener.stop_deadline", listener=listener.name)
            except Exception:
                log.exception("listener.stop_failed", listener=listener.name)
        if self.services is not None:
            self.services.sessions.disconnect_all(Cause.SHUTTING_DOWN)
        if self.sessions_index is not None:
            try:  # a clean leave; if Redis is away, the entries expire with the heartbeat
                await asyncio.wait_for(self.sessions_index.leave(), timeout=1.0)
            except Exception as exc:
                log.warning("sessions_index.leave_failed", error=str(exc))
        if self.bus is not None:
            self.bus.close()  # the bus task ends by itself within ~1 s
        for task in self._tasks:
            if task.get_name() != "bus":
                task.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                log.error("node.task_did_not_stop", task=task.get_name())
                task.print_stack()
        if self._health_runner is not None:
            await self._health_runner.cleanup()
        if self.services is not None:
            metrics.untrack(
                resolver=self.services.resolver,
                hub=self.services.sessions,
                throttle=self.services.access.throttle,
            )
        if self.clients is not None:
            await self.clients.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.close)
            for name in (REDIS_URL_FILE, KEK_PATH_FILE, CONFIG_PATH_FILE):
                with contextlib.suppress(OSError):
                    (Path(self.config.state_dir) / name).unlink()
        log.info("node.stopped")


def raise_open_files(wanted: int) -> fdlimit.OpenFilesLimit:
    """Raise RLIMIT_NOFILE (``limits.open_files``) and say what the node got."""
    got = fdlimit.raise_open_files(wanted)
    log.info(
        "node.open_files",
        soft=got.soft,
        hard=got.hard,
        soft_before=got.soft_before,
        hard_before=got.hard_before,
        wanted=got.wanted,
    )
    if got.short or got.refused:
        log.warning(
            "node.open_files_short",
            soft=got.soft,
            wanted=got.wanted,
            reason=got.refused or "above the hard limit",
            note="each MQTT/HTTP connection takes one; raise LimitNOFILE / ulimit -n "
            "(docs/operations.md)",
        )
    return got


async def serve(config: Config, config_file: str | Path | None = None) -> None:
    raise_open_files(config.limits.open_files)
    node = Node(config, config_file=config_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start(
            before_listeners=lambda: log.info(
                "gc.frozen", objects=gc_tuning.freeze_startup_objects()
            )
        )
        await stop.wait()
    finally:
        await node.stop()
