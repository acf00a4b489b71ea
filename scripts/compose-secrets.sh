#!/bin/sh
# Secrets for deploy/docker-compose.yml, readable only by the container user that needs them
# (mode 0400, owner = that uid: never world-readable on the host). Run as root (chown):
#   sudo scripts/compose-secrets.sh deploy
# Writes <dir>/secrets/: psk-kek (a fresh KEK unless one exists), admin-tokens (empty unless
# it exists: tenant:sha256hex[:name] lines), redis-url and redis-acl (a fresh Redis password,
# as the brokers' URL and as its SHA-256 in Redis' ACL file), Redis' TLS certificate
# (redis-tls.crt/.key, named redis, from a fresh private CA whose key is discarded; the CA
# certificate redis-ca.pem is public, mode 0444), and restricts <dir>/certs/*.key.
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
printf 'rediss://corem:%s@redis:6380/0?ssl_ca_certs=/run/secrets/corem-redis-ca\n' "$password" \
    > "$secrets/redis-url"
cat > "$secrets/redis-acl" <<ACL
user default off
user corem on #$hash ~* &* +@all
user healthcheck on nopass -@all +ping
ACL

# Redis' TLS: a CA used once (its key never touches the disk outside this temp dir), a P-256
# server certificate for the compose service name (and loopback, for the health check).
tls=$(mktemp -d)
trap 'rm -rf "$tls"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=corem redis CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=redis" \
    -keyout "$secrets/redis-tls.key" -out "$tls/redis.csr" 2>/dev/null
printf 'subjectAltName=DNS:redis,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
    > "$tls/ext"
openssl x509 -req -in "$tls/redis.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 825 -extfile "$tls/ext" -out "$secrets/redis-tls.crt" 2>/dev/null
cp "$tls/ca.pem" "$secrets/redis-ca.pem"

chmod 0400 "$secrets/psk-kek" "$secrets/admin-tokens" "$secrets/redis-url" "$secrets/redis-acl" \
    "$secrets/redis-tls.crt" "$secrets/redis-tls.key"
chmod 0444 "$secrets/redis-ca.pem"
chown "$broker_uid:$broker_uid" "$secrets/psk-kek" "$secrets/admin-tokens" "$secrets/redis-url"
chown "$redis_uid:$redis_uid" "$secrets/redis-acl" "$secrets/redis-tls.crt" "$secrets/redis-tls.key"
for key in "$dir"/certs/*.key; do
    [ -e "$key" ] || continue
    chown "$broker_uid:$broker_uid" "$key"
    chmod 0400 "$key"
done
echo "secrets written to $secrets (owners $broker_uid and $redis_uid, mode 0400)" >&2
