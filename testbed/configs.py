"""Configuration files of the testbed's services, rendered from one Layout."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REGION = "RegionOne"
HOST = "127.0.0.1"
#: Where real mode's public endpoints are (realconf.INET_ADDRESS).
PUBLIC_HOST = "203.0.113.1"
COMPUTE_HOST = "testbed"

# Fixed ports in an unusual range, so that the testbed does not clash with a
# system MariaDB, RabbitMQ or OpenStack.
PORTS = {
    "mariadb": 45306,
    "rabbitmq": 45672,
    "rabbitmq-dist": 45673,
    "epmd": 45369,
    "keystone": 45500,
    "glance": 45292,
    "placement": 45778,
    "neutron": 45696,
    "nova-api": 45774,
    "nova-metadata": 45775,
    "cinder": 45776,
}

DATABASES = ("keystone", "glance", "placement", "neutron",
             "nova_api", "nova", "nova_cell0", "cinder")

# Service users live in project "service" and hold roles admin and service.
SERVICE_USERS = ("nova", "neutron", "glance", "placement", "cinder")
#: Cinder's one back end (fake mode): a driver that stores nothing (plugins/volume.py).
CINDER_BACKEND = "nothing"


@dataclass(frozen=True)
class Layout:
    """Where everything of one testbed lives."""

    state: Path
    password: str
    #: Real compute (libvirt, Open vSwitch, Neutron's agents) instead of the fake driver.
    real: bool = False

    @property
    def venv(self):
        return self.state / "venv"

    @property
    def run(self):
        """Recreated on every start: configs, databases, keys, images."""
        return self.state / "run"

    @property
    def logs(self):
        return self.state / "logs"

    @property
    def pids(self):
        return self.state / "pids"

    @property
    def etc(self):
        return self.run / "etc"

    @property
    def clouds_yaml(self):
        return self.state / "clouds.yaml"

    @property
    def mysql_socket(self):
        # A unix socket path must stay under 108 bytes.
        path = self.run / "mysql" / "mysqld.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
        return Path("/tmp") / f"vmbinder-testbed-{digest}.sock"

    def url(self, service, path=""):
        return f"http://{HOST}:{PORTS[service]}{path}"

    def public_url(self, service, path=""):
        """The public endpoint: on loopback, or in real mode at the external
        gateway's address inside "the internet" namespace, where guests reach it."""
        host = PUBLIC_HOST if self.real else HOST
        return f"http://{host}:{PORTS[service]}{path}"

    @property
    def public_auth_url(self):
        return self.public_url("keystone", "/v3")

    @property
    def auth_url(self):
        return self.url("keystone", "/v3")

    def db_url(self, name):
        return (f"mysql+pymysql://openstack:{self.password}@{HOST}:"
                f"{PORTS['mariadb']}/{name}?charset=utf8")

    @property
    def transport_url(self):
        return f"rabbit://openstack:{self.password}@{HOST}:{PORTS['rabbitmq']}/"


def render_ini(sections):
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            out.append(f"{key} = {value}")
        out.append("")
    return "\n".join(out)


def _write(path, text, mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def service_auth(lay, user):
    """A keystoneauth password section for a service user."""
    return {
        "auth_type": "password",
        "auth_url": lay.auth_url,
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": user,
        "password": lay.password,
        "region_name": REGION,
    }


#: Each service's type in the catalog: its auth_token middleware checks an
#: application credential's access rules against it (as clouds set it).
SERVICE_TYPES = {"nova": "compute", "glance": "image", "neutron": "network",
                 "placement": "placement", "cinder": "block-storage"}


def authtoken(lay, user):
    return {
        "www_authenticate_uri": lay.url("keystone"),
        "service_token_roles_required": True,
        "service_type": SERVICE_TYPES[user],
        **service_auth(lay, user),
    }


def common(lay, debug):
    return {"debug": debug, "use_stderr": True, "graceful_shutdown_timeout": 5}


def keystone_conf(lay, debug):
    return {
        "DEFAULT": common(lay, debug),
        "database": {"connection": lay.db_url("keystone")},
        "token": {"provider": "fernet"},
        "fernet_tokens": {"key_repository": lay.run / "keystone" / "fernet-keys"},
        "fernet_receipts": {"key_repository": lay.run / "keystone" / "fernet-keys"},
        "credential": {"key_repository": lay.run / "keystone" / "credential-keys"},
        # Without a cache every authenticated request costs 0.3-0.5 s.
        "cache": {"enabled": True, "backend": "dogpile.cache.memory"},
        # Cheap password hashes: this is a throwaway test cloud.
        "identity": {"password_hash_rounds": 4},
    }


def placement_conf(lay, debug):
    return {
        "DEFAULT": common(lay, debug),
        "placement_database": {"connection": lay.db_url("placement")},
        "api": {"auth_strategy": "keystone"},
        "keystone_authtoken": authtoken(lay, "placement"),
    }


def glance_conf(lay, debug):
    data = lay.run / "glance"
    return {
        "DEFAULT": {
            **common(lay, debug),
            "enabled_backends": "fs:file",
            "worker_self_reference_url": lay.url("glance"),
        },
        "database": {"connection": lay.db_url("glance")},
        "glance_store": {"default_backend": "fs"},
        "fs": {"filesystem_store_datadir": data / "images"},
        "os_glance_staging_store": {"filesystem_store_datadir": data / "staging"},
        "os_glance_tasks_store": {"filesystem_store_datadir": data / "tasks"},
        "keystone_authtoken": authtoken(lay, "glance"),
        "paste_deploy": {"flavor": "keystone",
                         "config_file": lay.etc / "glance" / "glance-api-paste.ini"},
        "oslo_concurrency": {"lock_path": lay.run / "lock" / "glance"},
    }


def neutron_conf(lay, debug):
    return {
        "DEFAULT": {
            **common(lay, debug),
            "core_plugin": "ml2",
            "service_plugins": "router",
            "auth_strategy": "keystone",
            "transport_url": lay.transport_url,
            "state_path": lay.run / "neutron",
            "api_paste_config": lay.etc / "neutron" / "api-paste.ini",
            "allow_overlapping_ips": True,
            # No DHCP agent exists: do not cast to one.
            "dhcp_agent_notification": False,
            # Floating IPs reach server.addresses only if Nova is told.
            "notify_nova_on_port_status_changes": True,
            "notify_nova_on_port_data_changes": True,
        },
        "database": {"connection": lay.db_url("neutron")},
        "keystone_authtoken": authtoken(lay, "neutron"),
        "nova": {**service_auth(lay, "nova"), "endpoint_type": "public"},
        "oslo_concurrency": {"lock_path": lay.run / "lock" / "neutron"},
    }


def ml2_conf(lay, debug):
    return {
        "ml2": {
            "type_drivers": "flat,vxlan",
            "project_network_types": "vxlan",
            "mechanism_drivers": "testbed_bindall",
            "extension_drivers": "port_security",
        },
        "ml2_type_flat": {"flat_networks": "public"},
        "ml2_type_vxlan": {"vni_ranges": "1:1000"},
    }


def nova_conf(lay, debug):
    return {
        "DEFAULT": {
            **common(lay, debug),
            "host": COMPUTE_HOST,
            "my_ip": HOST,
            "transport_url": lay.transport_url,
            "compute_driver": "testbed_fake.CloudInitFakeDriver",
            "state_path": lay.run / "nova",
            "instances_path": lay.run / "nova" / "instances",
        },
        "api": {"auth_strategy": "keystone"},
        "wsgi": {"api_paste_config": lay.etc / "nova" / "api-paste.ini"},
        "keystone_authtoken": authtoken(lay, "nova"),
        "placement": service_auth(lay, "placement"),
        "neutron": service_auth(lay, "neutron"),
        "glance": {"region_name": REGION},
        # Attaching and detaching volumes at server create and delete; the
        # service user for the calls Nova makes on its own (a user's token
        # may have expired by then).
        "cinder": {"os_region_name": REGION, **service_auth(lay, "nova")},
        # Neutron lets only a service delete a compute port: send a service
        # token along with the user's.
        "service_user": {"send_service_user_token": True,
                         **service_auth(lay, "nova")},
        "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": 5},
        "conductor": {"workers": 1},
        "vnc": {"enabled": False},
        "oslo_concurrency": {"lock_path": lay.run / "lock" / "nova"},
    }


def cinder_conf(lay, debug):
    """cinder-api, cinder-scheduler and cinder-volume with one back end whose
    driver stores nothing: volumes are database rows, as servers are with
    Nova's fake driver."""
    state = lay.run / "cinder"
    return {
        "DEFAULT": {
            **common(lay, debug),
            "host": COMPUTE_HOST,
            "my_ip": HOST,
            "transport_url": lay.transport_url,
            "auth_strategy": "keystone",
            "state_path": state,
            "api_paste_config": lay.etc / "cinder" / "api-paste.ini",
            "enabled_backends": CINDER_BACKEND,
            "default_volume_type": "__DEFAULT__",
            # Images are never copied to volumes here.
            "glance_api_servers": lay.url("glance"),
            "osapi_volume_workers": 1,
            # Which filters a list may use (name, status, metadata, ...), as shipped.
            "resource_query_filters_file": lay.venv / "etc" / "cinder" / "resource_filters.json",
        },
        "database": {"connection": lay.db_url("cinder")},
        "keystone_authtoken": authtoken(lay, "cinder"),
        "nova": {**service_auth(lay, "cinder"), "interface": "internal"},
        "oslo_concurrency": {"lock_path": lay.run / "lock" / "cinder"},
        "coordination": {"backend_url": f"file://{state / 'coordination'}"},
        CINDER_BACKEND: {
            "volume_driver": "testbed_plugins.volume.NothingStoredDriver",
            "volume_backend_name": CINDER_BACKEND,
        },
    }


def nova_db_conf(lay, debug):
    """Kept apart: nova-compute must not see database settings."""
    return {
        "api_database": {"connection": lay.db_url("nova_api")},
        "database": {"connection": lay.db_url("nova")},
    }


def rabbitmq_conf(lay):
    return "\n".join([
        f"listeners.tcp.1 = {HOST}:{PORTS['rabbitmq']}",
        "default_user = openstack",
        f"default_pass = {lay.password}",
        "loopback_users = none",
        "log.console = true",
        "log.console.level = warning",
        "log.file = false",
        "",
    ])


def write_all(lay, debug=False):
    """Write every service's configuration under run/etc."""
    etc = lay.etc
    venv_etc = lay.venv / "etc"
    files = {
        etc / "keystone" / "keystone.conf": keystone_conf(lay, debug),
        etc / "placement" / "placement.conf": placement_conf(lay, debug),
        etc / "glance" / "glance-api.conf": glance_conf(lay, debug),
        etc / "neutron" / "neutron.conf": neutron_conf(lay, debug),
        etc / "neutron" / "plugins" / "ml2" / "ml2_conf.ini": ml2_conf(lay, debug),
        etc / "nova" / "nova.conf": nova_conf(lay, debug),
        etc / "nova" / "nova-db.conf": nova_db_conf(lay, debug),
        etc / "cinder" / "cinder.conf": cinder_conf(lay, debug),
    }
    if lay.real:
        import realconf

        for path, change in (("neutron/neutron.conf", realconf.neutron_conf),
                             ("neutron/plugins/ml2/ml2_conf.ini", realconf.ml2_conf),
                             ("nova/nova.conf", realconf.nova_conf)):
            files[etc / path] = change(lay, files[etc / path])
        for name, sections in realconf.agent_confs(lay).items():
            files[etc / "neutron" / name] = sections
    for path, sections in files.items():
        _write(path, render_ini(sections))
    # Paste pipelines ship with the packages.
    for src, dst in [
        (venv_etc / "glance" / "glance-api-paste.ini", etc / "glance" / "glance-api-paste.ini"),
        (venv_etc / "neutron" / "api-paste.ini", etc / "neutron" / "api-paste.ini"),
        (venv_etc / "nova" / "api-paste.ini", etc / "nova" / "api-paste.ini"),
        (venv_etc / "cinder" / "api-paste.ini", etc / "cinder" / "api-paste.ini"),
    ]:
        _write(dst, src.read_text(), 0o644)
    rabbit = lay.run / "rabbitmq"
    _write(rabbit / "rabbitmq.conf", rabbitmq_conf(lay))
    _write(rabbit / "enabled_plugins", "[].\n")
    _write(rabbit / "rabbitmq-env.conf", "")
    for sub in ("glance/images", "glance/staging", "glance/tasks", "lock/glance",
                "lock/neutron", "lock/nova", "lock/cinder", "nova/instances", "neutron",
                "cinder/coordination"):
        (lay.run / sub).mkdir(parents=True, exist_ok=True)
