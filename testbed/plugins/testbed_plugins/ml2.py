"""An ML2 mechanism driver that binds every port, for a Neutron without agents.

With no L2 agent, ML2 cannot bind ports and Nova's builds fail with
PortBindingFailed.  This driver binds each port that has a host to the first
segment offered, as an OVS port, and marks it ACTIVE.  There is no dataplane.
"""

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindAllMechanismDriver(api.MechanismDriver):
    """Binds every port as vif_type=ovs and reports it ACTIVE."""

    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: True,
                 portbindings.OVS_HYBRID_PLUG: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
