#!/bin/sh
# Load the routing and NAT rules once; supervisord records the exit status.
set -eu
: "${SMS_PROVISION_NETWORK:?provision_network missing from site.env}"
: "${SMS_PUBLIC_INTERFACE:=eth1}"
if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
    # /proc/sys is read-only in a container: forwarding is set by the network
    # config (CNI tuning plugin) when the instance starts.
    echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null || {
        echo "nat: net.ipv4.ip_forward is 0 and cannot be set here; enable it in the instance's network config" >&2
        exit 1; }
fi
# Idempotent: a restarted program must not stack duplicate rules.
iptables -t nat -C POSTROUTING -s "$SMS_PROVISION_NETWORK" -o "$SMS_PUBLIC_INTERFACE" -j MASQUERADE 2>/dev/null ||
    iptables -t nat -A POSTROUTING -s "$SMS_PROVISION_NETWORK" -o "$SMS_PUBLIC_INTERFACE" -j MASQUERADE
iptables -C FORWARD -s "$SMS_PROVISION_NETWORK" -o "$SMS_PUBLIC_INTERFACE" -j ACCEPT 2>/dev/null ||
    iptables -A FORWARD -s "$SMS_PROVISION_NETWORK" -o "$SMS_PUBLIC_INTERFACE" -j ACCEPT
iptables -C FORWARD -d "$SMS_PROVISION_NETWORK" -m state --state RELATED,ESTABLISHED -j ACCEPT 2>/dev/null ||
    iptables -A FORWARD -d "$SMS_PROVISION_NETWORK" -m state --state RELATED,ESTABLISHED -j ACCEPT
# The public network reaches no service here: every fragment serves the provisioning
# network (or loopback) only, but slurmctld and rsyslog listen on every address.
# Replies to what SMS-services started (NTP, mail relay, syslog forward) and ICMP
# still come in. REJECT, not DROP: a client on the public side is told at once
# instead of waiting for its timeout. `-C` before `-A` keeps a re-run from stacking rules.
for rule in "-m state --state RELATED,ESTABLISHED -j ACCEPT" "-p icmp -j ACCEPT" "-j REJECT"; do
    # shellcheck disable=SC2086 # each rule is meant to split into words
    iptables -C INPUT -i "$SMS_PUBLIC_INTERFACE" $rule 2>/dev/null ||
        iptables -A INPUT -i "$SMS_PUBLIC_INTERFACE" $rule
done
echo "nat: $SMS_PROVISION_NETWORK masqueraded out of $SMS_PUBLIC_INTERFACE; nothing served to it"
