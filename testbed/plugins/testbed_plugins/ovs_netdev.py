"""ML2's openvswitch mechanism driver, with persistent guest taps on the
userspace datapath.

On OVS's userspace (netdev) datapath a guest's tap is a "system" port read
through a socket bound to the device.  When libvirt manages the tap, a soft
reboot deletes it and makes a new one of the same name, and OVS keeps reading
the old one: the guest is cut off.  On the kernel datapath Neutron asks os-vif
to create the tap itself (``ovs_create_tap``), libvirt then uses it as it is
(``managed=no``) and it outlives the guest's qemu; this driver asks for the
same on the netdev datapath.  Real clouds run the kernel datapath: this is a
property of the testbed's data plane only.
"""

from neutron.plugins.ml2.drivers.openvswitch.mech_driver import mech_openvswitch
from neutron_lib.api.definitions import portbindings

OVS_CREATE_TAP = "ovs_create_tap"


class NetdevTapMechanismDriver(mech_openvswitch.OpenvswitchMechanismDriver):
    def _pre_get_vif_details(self, agent, context):
        details = super()._pre_get_vif_details(agent, context)
        config = agent["configurations"]
        if (config.get("datapath_type") == "netdev"
                and not config.get(portbindings.OVS_HYBRID_PLUG)
                and portbindings.VHOST_USER_SOCKET not in details
                and context.current.get(portbindings.VNIC_TYPE,
                                        portbindings.VNIC_NORMAL) == portbindings.VNIC_NORMAL):
            details[OVS_CREATE_TAP] = True
        return details
