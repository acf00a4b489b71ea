#!/bin/sh
# Secrets for deploy/docker-compose.yml, readable only by the container user that needs them
# (mode 0400, owner = that uid: never world-readable on the host). Run as root (chown):
#   sudo scripts/compose-secrets.sh deploy
# Writes <dir>/secrets/: psk-kek (a fresh KEK unless one exists), admin-tokens (empty unless
# it exists: tenant:sha256hex[:name] lines), redis-url and redis-acl (a fresh Redis password,
# as the brokers' URL and as its SHA-256 in Redis' ACL file), and restricts <dir>/certs/*.key.
# COREM_INGRESS names the CLI (default: corem-ingress); BROKER_UID/REDIS_UID the owners.
set -eu
dir=${1:-deploy}
cli=${COREM_INGRESS:-corem-ingress}
broker_uid=${BROKER_UID:-10001}
redis_uid=${REDIS_UID:-999}
secrets="$dir/secrets"
umask 077
mkdir -p "$secrets"

[ -s "$secrets/psk-kek" ] || $cli kek generate --id k1 > "$secrets/psk-kek"
[ -e "$secrets/admin-tokens" ] || : > "$secrets/admin-tokens"

password=$(openssl rand -hex 32)
hash=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
printf 'redis://corem:%s@redis:6379/0\n' "$password" > "$secrets/redis-url"
cat > "$secrets/redis-acl" <<ACL
user default off
user corem on #$hash ~* &* +@all
user healthcheck on nopass -@all +ping
ACL

chmod 0400 "$secrets/psk-kek" "$secrets/admin-tokens" "$secrets/redis-url" "$secrets/redis-acl"
chown "$broker_uid:$broker_uid" "$secrets/psk-kek" "$secrets/admin-tokens" "$secrets/redis-url"
chown "$redis_uid:$redis_uid" "$secrets/redis-acl"
for key in "$dir"/certs/*.key; do
    [ -e "$key" ] || continue
    chown "$broker_uid:$broker_uid" "$key"
    chmod 0400 "$key"
done
echo "secrets written to $secrets (owners $broker_uid and $redis_uid, mode 0400)" >&2
