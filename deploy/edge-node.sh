#!/bin/sh
# The try-out edge node of docker-compose.yml: OpenSSH serving SFTP to the workers.
# Keys live in the shared volume mounted at /ssh: the host key, a client key pair for the
# workers, authorized_keys and the known_hosts line the workers verify the host key with.
# Created once, kept across restarts. A real edge node has its own keys; mount them instead.
#   EDGE_SSH_PORT        port sshd listens on (default 22)
#   EDGE_LISTEN_ADDRESS  address sshd listens on (default 0.0.0.0: the container's own network)
#   EDGE_KNOWN_HOST      the host name the workers connect to (config sftp.host; default edge)
set -eu
KEYS=/ssh
USER_NAME=mediation
PORT="${EDGE_SSH_PORT:-22}"
LISTEN="${EDGE_LISTEN_ADDRESS:-0.0.0.0}"
NAME="${EDGE_KNOWN_HOST:-edge}"
mkdir -p "$KEYS" /run/sshd /backups/edge
[ -f "$KEYS/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$KEYS/host_ed25519"
[ -f "$KEYS/client_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$KEYS/client_key"
if [ "$PORT" = 22 ]; then HOST_ID="$NAME"; else HOST_ID="[$NAME]:$PORT"; fi
echo "$HOST_ID $(cut -d' ' -f1,2 "$KEYS/host_ed25519.pub")" > "$KEYS/known_hosts"
install -d -m 700 -o "$USER_NAME" "/home/$USER_NAME/.ssh"
install -m 600 -o "$USER_NAME" "$KEYS/client_key.pub" "/home/$USER_NAME/.ssh/authorized_keys"
chown "$USER_NAME" /backups/edge "$KEYS/client_key"
# Key login only, without PAM (pam_loginuid fails in containers): the account must not be locked ("!").
usermod -p '*' "$USER_NAME"
cat > /etc/ssh/sshd_config.d/edge.conf <<CONF
Port $PORT
ListenAddress $LISTEN
HostKey $KEYS/host_ed25519
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
AllowUsers $USER_NAME
CONF
exec /usr/sbin/sshd -D -e
