#!/bin/sh
# Starts one Redis node of the compose deployment: "primary" or "replica" (a data node; Sentinel
# decides which one is primary after the first start) or "sentinel". ACL users and passwords come
# from the environment (etc/xtb.env) and are written to files under /data (mode 0600), never to
# a command line. The same script runs under systemd (deploy/systemd/xtb-redis@.service,
# xtb-sentinel.service) with the variables of /etc/xtb/redis.env; XTB_REDIS_DATA and
# XTB_REDIS_PORT move a data node elsewhere (tests/system/test_deploy.py runs one).
set -eu
umask 077
role="$1"
user="${XTB_REDIS_USER:-xtb}"
data="${XTB_REDIS_DATA:-/data}"
port="${XTB_REDIS_PORT:-6379}"
# Where the first primary is (compose: the service "redis"; systemd: the primary host's address),
# and the address this node gives the others (compose: the service's hostname).
primary="${XTB_REDIS_PRIMARY_HOST:-redis}"
primary_port="${XTB_REDIS_PRIMARY_PORT:-6379}"
announce="${XTB_REDIS_ANNOUNCE:-$(hostname)}"
: "${XTB_REDIS_PASSWORD:?set XTB_REDIS_PASSWORD in etc/xtb.env}"
: "${XTB_REDIS_SENTINEL_PASSWORD:?set XTB_REDIS_SENTINEL_PASSWORD in etc/xtb.env}"

if [ "$role" = sentinel ]; then
    # Sentinel rewrites its own file (the current primary, the epochs): written once, kept after.
    conf="$data/sentinel.conf"
    if [ ! -f "$conf" ]; then
        cat > "$conf" <<CONF
port ${XTB_SENTINEL_PORT:-26379}
sentinel announce-ip $announce
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel monitor xtb $primary $primary_port 2
sentinel down-after-milliseconds xtb 5000
sentinel failover-timeout xtb 60000
sentinel parallel-syncs xtb 1
sentinel auth-user xtb sentinel
sentinel auth-pass xtb $XTB_REDIS_SENTINEL_PASSWORD
CONF
    fi
    exec redis-server "$conf" --sentinel
fi

# default off: every client authenticates. The bot's user may do everything but wipe, reconfigure
# or stop the server; the Sentinels' user only what failover needs.
cat > "$data/users.acl" <<ACL
user default off
user $user on >$XTB_REDIS_PASSWORD ~* &* +@all -flushall -flushdb -debug -shutdown -config -save -bgsave -bgrewriteaof -replicaof -slaveof -failover -acl -module -monitor
user sentinel on >$XTB_REDIS_SENTINEL_PASSWORD allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill
ACL
cat > "$data/redis.conf" <<CONF
port $port
dir $data
appendonly yes
appendfsync everysec
save ""
maxmemory 512mb
maxmemory-policy noeviction
aclfile $data/users.acl
masteruser $user
masterauth $XTB_REDIS_PASSWORD
replica-announce-ip $announce
CONF
# The replica follows the first primary on its first start only; afterwards Sentinel tells each
# node whom to follow (a node that comes back after a failover rejoins as a replica).
if [ "$role" = replica ] && [ ! -d "$data/appendonlydir" ]; then
    echo "replicaof $primary $primary_port" >> "$data/redis.conf"
fi
exec redis-server "$data/redis.conf"
