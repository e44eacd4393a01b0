"""Bring the testbed up: processes, databases, bootstrap, readiness.

Runs with the testbed's venv.  The steps run in parallel where they can: the
five services set up their databases at the same time, each API starts as soon
as its database is ready, and Nova's daemons follow Keystone's bootstrap.
"""

import concurrent.futures as cf
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import bootstrap
import configs
import pymysql
import realconf
from configs import COMPUTE_HOST, HOST, PORTS, REGION
from cryptography.fernet import Fernet
from realstart import RealMode
from runner import LOG_TAIL, NotReady, Runner, port_free, tail, tcp_open

from testbed import HERE, Failure, down, group_alive, read_records
from testbed import mode as testbed_mode


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")



RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve_ports(ports) -> None:
    """Keep the kernel from giving the services' fixed ports (in its ephemeral
    range) to outgoing connections, which made a service's bind fail now and
    then. Added to what is reserved already; only root can, others go on."""
    try:
        have = RESERVED.read_text().strip()
        wanted = ",".join([have] * bool(have) + [str(p) for p in sorted(ports)])
        RESERVED.write_text(wanted + "\n")
    except OSError:
        pass

class Starter(RealMode, Runner):
    def __init__(self, state, password, timeout, debug=False, real=False):
        super().__init__(state, password, timeout, real=real)
        self.debug = debug
        self.futures = []

    # ----------------------------------------------------------------- steps

    def prepare(self):
        lay = self.lay
        reserve_ports(PORTS.values())
        busy = [f"{port} ({name})" for name, port in PORTS.items() if not port_free(port)]
        if busy:
            raise Failure("ports", "in use on 127.0.0.1: " + ", ".join(busy)
                          + ". Something else listens there (a testbed started from "
                          "another directory?)")
        shutil.rmtree(lay.run, ignore_errors=True)
        shutil.rmtree(lay.logs, ignore_errors=True)
        for path in (lay.run, lay.logs, lay.pids):
            path.mkdir(parents=True, exist_ok=True)
        lay.mysql_socket.unlink(missing_ok=True)
        configs.write_all(lay, self.debug)
        (lay.run / "mode").write_text("fake\n")
        if lay.real:
            self.prepare_real()
        # Fernet and credential keys: what keystone-manage fernet_setup and
        # credential_setup write, without paying two more CLI start-ups.
        for repo in ("fernet-keys", "credential-keys"):
            path = lay.run / "keystone" / repo
            path.mkdir(parents=True, mode=0o700)
            for index in ("0", "1"):
                (path / index).write_bytes(Fernet.generate_key())
                os.chmod(path / index, 0o600)

    def start_rabbitmq(self):
        base = self.lay.run / "rabbitmq"
        (base / "home").mkdir(parents=True, exist_ok=True)
        env = self.env(
            HOME=base / "home",
            RABBITMQ_NODENAME="testbed@localhost",
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=PORTS["rabbitmq"],
            RABBITMQ_DIST_PORT=PORTS["rabbitmq-dist"],
            RABBITMQ_MNESIA_BASE=base / "mnesia",
            RABBITMQ_LOG_BASE=base / "log",
            RABBITMQ_PID_FILE=base / "rabbitmq.pid",
            RABBITMQ_CONFIG_FILE=base / "rabbitmq.conf",
            RABBITMQ_ADVANCED_CONFIG_FILE=base / "advanced.config",
            RABBITMQ_CONF_ENV_FILE=base / "rabbitmq-env.conf",
            RABBITMQ_ENABLED_PLUGINS_FILE=base / "enabled_plugins",
            RABBITMQ_PLUGINS_EXPAND_DIR=base / "plugins-expand",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS=HOST,
            ERL_EPMD_PORT=PORTS["epmd"],
        )
        # Our own epmd, in the foreground, on its own port: Erlang would
        # otherwise start a daemonized one that nobody records.
        self.start("epmd", ["epmd", "-port", PORTS["epmd"], "-address", HOST], env)

        def epmd_probe():
            if not tcp_open(PORTS["epmd"]):
                raise NotReady("epmd port closed")

        self.wait("epmd", "epmd", epmd_probe)
        self.start("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env)
        self.step("rabbitmq starting")

    def rabbitmq_answers(self):
        """The probe of RabbitMQ's AMQP listener (NotReady while it is closed)."""
        if not tcp_open(PORTS["rabbitmq"]):
            raise NotReady("AMQP port closed")

    def wait_rabbitmq(self):
        self.wait("rabbitmq", "AMQP listener", self.rabbitmq_answers, watch=("rabbitmq", "epmd"))
        self.step("rabbitmq answers")

    def start_mariadb(self):
        lay = self.lay
        base = lay.run / "mysql"
        (base / "tmp").mkdir(parents=True, exist_ok=True)
        self.run("mariadb", ["mariadb-install-db", "--no-defaults", f"--datadir={base / 'data'}",
                             "--user=root", "--auth-root-authentication-method=normal",
                             "--skip-test-db", "--skip-name-resolve"])
        self.start("mariadb", [
            shutil.which("mariadbd", path=self.env()["PATH"]) or "/usr/sbin/mariadbd",
            "--no-defaults", f"--datadir={base / 'data'}", f"--tmpdir={base / 'tmp'}",
            f"--socket={lay.mysql_socket}", f"--pid-file={base / 'mysqld.pid'}",
            f"--bind-address={HOST}", f"--port={PORTS['mariadb']}", "--user=root",
            "--skip-name-resolve", "--skip-log-bin",
            # A throwaway database: durability is not needed, speed is.
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=256M", "--max-connections=1000",
            "--character-set-server=utf8", "--collation-server=utf8_general_ci",
        ])

        def probe():
            try:
                pymysql.connect(unix_socket=str(lay.mysql_socket), user="root",
                                connect_timeout=2).close()
            except pymysql.err.OperationalError as exc:
                raise NotReady(str(exc)) from None

        self.wait("mariadb", "MariaDB", probe)
        conn = pymysql.connect(unix_socket=str(lay.mysql_socket), user="root")
        with conn.cursor() as cur:
            for name in configs.DATABASES:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8")
            cur.execute("CREATE USER 'openstack'@'127.0.0.1' IDENTIFIED BY %s",
                        (lay.password,))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'openstack'@'127.0.0.1'")
        conn.commit()
        conn.close()
        self.step("mariadb answers, databases created")

    def keystone(self):
        lay = self.lay
        conf = lay.etc / "keystone" / "keystone.conf"
        manage = [lay.venv / "bin" / "keystone-manage", "--config-file", conf]
        self.run("keystone", manage + ["db_sync"])
        self.run("keystone", manage + [
            "bootstrap", "--bootstrap-username", "admin",
            "--bootstrap-project-name", "admin",
            "--bootstrap-admin-url", lay.auth_url,
            "--bootstrap-internal-url", lay.auth_url,
            "--bootstrap-public-url", lay.public_auth_url,
            "--bootstrap-region-id", REGION,
        ], env=self.env(OS_BOOTSTRAP_PASSWORD=lay.password))
        self.serve("keystone", "keystone.wsgi.api:application",
                   OS_KEYSTONE_CONFIG_DIR=lay.etc / "keystone")

    def placement(self):
        conf = self.lay.etc / "placement" / "placement.conf"
        self.run("placement", [self.lay.venv / "bin" / "placement-manage",
                               "--config-file", conf, "db", "sync"])
        self.serve("placement", "placement.wsgi.api:application",
                   OS_PLACEMENT_CONFIG_DIR=self.lay.etc / "placement")

    def glance(self):
        conf = self.lay.etc / "glance" / "glance-api.conf"
        self.run("glance", [self.lay.venv / "bin" / "glance-manage",
                            "--config-file", conf, "db_sync"])
        self.serve("glance", "glance.wsgi.api:application",
                   OS_GLANCE_CONFIG_DIR=self.lay.etc / "glance")

    def neutron(self):
        etc = self.lay.etc / "neutron"
        self.run("neutron", [self.lay.venv / "bin" / "python", HERE / "testbed.py",
                             "neutron-db", "--config-file", etc / "neutron.conf",
                             "--config-file", etc / "plugins" / "ml2" / "ml2_conf.ini"])
        self.serve("neutron", "neutron.wsgi.api:application", OS_NEUTRON_CONFIG_DIR=etc)
        if self.lay.real:
            self.neutron_real()

    def nova_manage(self):
        etc = self.lay.etc / "nova"
        return [self.lay.venv / "bin" / "nova-manage", "--config-file", etc / "nova.conf",
                "--config-file", etc / "nova-db.conf"]

    def nova(self):
        manage = self.nova_manage()
        self.run("nova", manage + ["api_db", "sync"])
        # The cell0 URL is derived from [database] connection (nova -> nova_cell0).
        self.run("nova", manage + ["cell_v2", "map_cell0"])
        self.run("nova", manage + ["cell_v2", "create_cell", "--name", "cell1"])
        self.run("nova", manage + ["db", "sync"])
        etc = self.lay.etc / "nova"
        self.serve("nova-api", "nova.wsgi.osapi_compute:application",
                   OS_NOVA_CONFIG_DIR=etc,
                   OS_NOVA_CONFIG_FILES="api-paste.ini;nova.conf;nova-db.conf")
        if self.lay.real:
            self.nova_metadata()

    def cinder(self):
        """Cinder's schema and its API (fake mode only: real mode has no volumes)."""
        conf = self.lay.etc / "cinder" / "cinder.conf"
        self.run("cinder", [self.lay.venv / "bin" / "cinder-manage", "--config-file", conf,
                            "db", "sync"])
        # cinder-api reads its configuration from its command line, which
        # `serve` gives it from TESTBED_APP_ARGS.
        self.serve("cinder", "cinder.wsgi.api:application",
                   TESTBED_APP_ARGS=f"--config-file {shlex.quote(str(conf))}")

    def start_cinder_daemons(self):
        conf = ["--config-file", self.lay.etc / "cinder" / "cinder.conf"]
        bin_ = self.lay.venv / "bin"
        self.start("cinder-scheduler", [bin_ / "cinder-scheduler", *conf])
        self.start("cinder-volume", [bin_ / "cinder-volume", *conf])
        self.step("cinder-scheduler and cinder-volume started")

    def wait_cinder(self):
        """cinder-volume's back end registered, and a volume made on it: the
        scheduler places none before it has heard the back end's capacity."""
        def backend_up():
            if not self.query("SELECT COUNT(*) FROM cinder.services WHERE topic=%s "
                              "AND disabled=0 AND deleted=0", "cinder-volume"):
                raise NotReady("cinder-volume has not registered its back end yet")

        watch = ("cinder-volume", "cinder-scheduler", "cinder", "mariadb", "rabbitmq")
        self.wait("cinder-volume", "volume back end", backend_up, watch)
        probe = bootstrap.VolumeProbe(self.lay)
        try:
            self.wait("cinder-volume", "a volume made on the back end", probe.made, watch)
        finally:
            probe.close()
        self.step(f"cinder back end {configs.CINDER_BACKEND!r} makes volumes")

    def serve(self, name, app, **env):
        self.start(name, [self.lay.venv / "bin" / "python", HERE / "testbed.py",
                          "serve", name, app, PORTS[name]], self.env(**env))
        self.wait_http(name)

    def query(self, sql, *args):
        """One value from the testbed's MariaDB, as root over the socket."""
        try:
            conn = pymysql.connect(unix_socket=str(self.lay.mysql_socket), user="root")
        except pymysql.err.OperationalError as exc:
            raise NotReady(str(exc)) from None
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone()[0]
        finally:
            conn.close()

    def start_conductor_scheduler(self):
        etc = self.lay.etc / "nova"
        bin_ = self.lay.venv / "bin"
        with_db = ["--config-file", etc / "nova.conf", "--config-file", etc / "nova-db.conf"]
        self.start("nova-conductor", [bin_ / "nova-conductor", *with_db])
        self.start("nova-scheduler", [bin_ / "nova-scheduler", *with_db])
        self.step("nova-conductor and nova-scheduler started")

    def start_compute(self):
        """Start nova-compute once nova-conductor is serving.

        nova-compute pings the conductor at start-up; a ping sent before the
        conductor's queue exists is lost and costs a 10 s timeout.
        """
        def conductor_registered():
            if not self.query("SELECT COUNT(*) FROM nova.services WHERE `binary`=%s "
                              "AND deleted=0", "nova-conductor"):
                raise NotReady("nova-conductor has not registered yet")

        self.wait("nova-conductor", "conductor service", conductor_registered)
        etc = self.lay.etc / "nova"
        # nova-compute must not see the database settings.
        self.start("nova-compute", [self.lay.venv / "bin" / "nova-compute",
                                    "--config-file", etc / "nova.conf"])
        self.step("nova-compute started")

    def wait_compute(self):
        """nova-compute registered, its inventory in placement, its host mapped."""
        watch = ("nova-compute", "nova-conductor", "nova-scheduler", "mariadb", "rabbitmq")

        def node_registered():
            if not self.query("SELECT COUNT(*) FROM nova.compute_nodes WHERE host=%s "
                              "AND deleted=0", COMPUTE_HOST):
                raise NotReady("no compute node record yet")
            if self.query("SELECT COUNT(*) FROM placement.inventories") < 3:
                raise NotReady("no compute inventory in placement yet")

        self.wait("nova-compute", "compute node registration", node_registered, watch)
        # The scheduler also discovers hosts periodically, but later.
        self.run("nova", self.nova_manage() + ["cell_v2", "discover_hosts"])

        def mapped():
            if not self.query("SELECT COUNT(*) FROM nova_api.host_mappings WHERE host=%s",
                              COMPUTE_HOST):
                raise NotReady("compute host not mapped to a cell yet")

        self.wait("nova-compute", "host mapping", mapped, watch)
        self.step(f"compute host {COMPUTE_HOST!r} registered and mapped to cell1")

    # ------------------------------------------------------------ top level

    def _await(self, future):
        """Wait for one task while failing fast on any other task's error."""
        while True:
            for other in self.futures:
                if other.done() and other.exception() is not None:
                    raise other.exception()
            if future.done():
                return future.result()
            if not self.remaining():
                raise Failure("testbed", f"not READY within {self.timeout:.0f} s")
            cf.wait([future], timeout=0.5)

    def _bring_up(self):
        lay = self.lay
        self.step(f"starting fresh in {lay.state}")
        self.prepare()
        self.start_rabbitmq()
        self.start_mariadb()
        if lay.real:
            self.start_dataplane()
        # Real compute has no volume back end (see README.md): Cinder runs in fake mode.
        services = ("keystone", "placement", "glance", "neutron", "nova", "wait_rabbitmq",
                    *(() if lay.real else ("cinder",)))
        with cf.ThreadPoolExecutor(max_workers=len(services)) as pool:
            try:
                tasks = {name: pool.submit(getattr(self, name)) for name in services}
                self.futures = list(tasks.values())
                self._await(tasks["keystone"])
                bootstrap.identity(lay, self.step)
                for name in ("placement", "wait_rabbitmq", "nova"):
                    self._await(tasks[name])
                self.start_conductor_scheduler()
                if not lay.real:
                    self.start_cinder_daemons()
                for name in ("glance", "neutron"):
                    self._await(tasks[name])
                resources = pool.submit(bootstrap.resources, lay, self.step)
                self.futures.append(resources)
                self.start_compute()
                self.wait_compute()
                self._await(resources)
                if lay.real:
                    self.wait_wired()
                else:
                    self._await(tasks["cinder"])
                    self.wait_cinder()
                self.check_alive(*self.procs)
            except BaseException:
                self.abort.set()
                for proc in list(self.oneshots):
                    proc.kill()
                raise
        bootstrap.write_clouds_yaml(lay)

    def current_state(self):
        records = read_records(self.lay.pids)
        if not records:
            return "down"
        alive = [group_alive(r) for r in records]
        if all(alive) and self.lay.clouds_yaml.exists() and tcp_open(PORTS["keystone"]):
            return "up"
        return "stale"

    def up(self):
        state = self.current_state()
        running = testbed_mode(self.lay.state)
        if state == "up" and running != ("real" if self.lay.real else "fake"):
            print(f"testbed: already up with {running} compute; run testbed/down first",
                  file=sys.stderr)
            return 1
        if state == "up":
            print(f"testbed already up (run testbed/down first to restart it)\n"
                  f"clouds.yaml: {self.lay.clouds_yaml}")
            return 0
        if state == "stale":
            self.step("found a partly running testbed: stopping it first")
            down(self.lay.state, grace=10, log=self.step)
        if self.lay.real:
            self.take_down_abandoned()
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            self._bring_up()
        except (Exception, KeyboardInterrupt) as exc:
            self.report_failure(exc)
            self.step("stopping what was started")
            down(self.lay.state, grace=5, log=self.step)
            return 130 if isinstance(exc, KeyboardInterrupt) else 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        elapsed = time.monotonic() - self.t0
        mode = "real compute" if self.lay.real else "fake compute"
        print(f"testbed READY ({mode}) in {elapsed:.0f} s\n"
              f"clouds.yaml: {self.lay.clouds_yaml}\n"
              f"use: export OS_CLIENT_CONFIG_FILE={self.lay.clouds_yaml} OS_CLOUD=testbed"
              f"   (admin: OS_CLOUD=testbed-admin)\n"
              f"logs: {self.lay.logs}")
        if self.lay.real:
            print(f"real compute: the public endpoints and floating IPs answer only inside "
                  f"network namespace {realconf.NETNS}: run clients with testbed/inet COMMAND")
        return 0

    def report_failure(self, exc):
        if isinstance(exc, KeyboardInterrupt):
            print("testbed: interrupted", file=sys.stderr)
            return
        if isinstance(exc, Failure):
            print(f"\ntestbed FAILED: {exc}", file=sys.stderr)
            log = exc.log
        else:
            import traceback
            print(f"\ntestbed FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc()
            log = None
        if log and Path(log).exists():
            print(f"--- last {LOG_TAIL} lines of {log} ---\n{tail(log)}\n--- end ---",
                  file=sys.stderr)
        print(f"all logs: {self.lay.logs}", file=sys.stderr)
