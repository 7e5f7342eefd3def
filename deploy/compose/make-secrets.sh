#!/usr/bin/env bash
# Creates the secret files compose.yaml mounts (deploy/compose/secrets/, git-ignored): random passwords,
# tokens and the sealing key, the database URLs built from the password, and a private CA with one TLS
# certificate for the services' ports. Needs bash and openssl. Existing files are kept (re-running fills in
# only what is missing), so it never rotates a secret behind your back: delete a file to replace it.
#
#   cd deploy/compose && ./make-secrets.sh            # or: ./make-secrets.sh /some/other/folder
#
# Compose mounts file secrets as they are on the host (its uid/gid/mode options are not applied to file
# secrets), and two users read them: the image's (uid 10001) and PostgreSQL's (uid 999). So the files are
# readable by all (0444) inside a folder only its owner can enter (0700): on the host only you (and root)
# reach them. Keep it that way; never commit the folder (.gitignore).
set -euo pipefail

DIR="${1:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"}"
# The names the services are reached by (compose service names) and the loopback the healthcheck uses.
TLS_NAMES="${TLS_NAMES:-DNS:procedure,DNS:procedure-b,DNS:notifier,DNS:detector-a,DNS:detector-b,DNS:detector-c,DNS:localhost,IP:127.0.0.1}"
TLS_DAYS=825

umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
say() { printf 'make-secrets: %s\n' "$*"; }

random_hex() { openssl rand -hex "$1"; }

secret() {  # secret NAME VALUE: write the file unless it exists
    local file="$DIR/$1"
    if [[ -e "$file" ]]; then return; fi
    printf '%s\n' "$2" >"$file"
    say "created $1"
}

if [[ -e "$DIR/postgres_password" ]]; then
    password="$(tr -d '[:space:]' <"$DIR/postgres_password")"
else
    password="$(random_hex 24)"
fi
secret postgres_password "$password"
secret procedure_database_url "postgresql://luccs:${password}@postgres:5432/luccs_procedure"
secret notifier_database_url "postgresql://luccs:${password}@postgres:5432/luccs_notifier"
# One named token per role (add more lines to rotate: several tokens per role are accepted at once).
secret operator_tokens "servicedesk:$(random_hex 32)"
secret viewer_tokens "wallboard:$(random_hex 32)"
secret bureau_tokens "bureau:$(random_hex 32)"
# Fernet key: 32 random bytes, URL-safe base64. Back it up WITH the procedure database.
secret sealing_key "$(openssl rand -base64 32 | tr '+/' '-_')"
# The SMTP relay's password (smtp.username in luccs.toml): REPLACE with the real one.
secret smtp_password "REPLACE_ME"

if [[ ! -e "$DIR/tls_ca" ]]; then
    openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 3650 -subj "/CN=luccs-fallback compose CA" \
        -keyout "$DIR/tls_ca.key" -out "$DIR/tls_ca" 2>/dev/null
    rm -f "$DIR/tls_cert"  # a new CA: the certificate must be re-issued
    say "created tls_ca (private CA; its key tls_ca.key stays here, it is mounted nowhere)"
fi
if [[ ! -e "$DIR/tls_cert" ]]; then
    openssl req -newkey rsa:3072 -sha256 -nodes -subj "/CN=luccs-fallback" \
        -keyout "$DIR/tls_key" -out "$DIR/tls.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$TLS_NAMES" >"$DIR/tls.ext"
    openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/tls_ca" -CAkey "$DIR/tls_ca.key" -CAcreateserial \
        -days "$TLS_DAYS" -sha256 -extfile "$DIR/tls.ext" -out "$DIR/tls_cert" 2>/dev/null
    rm -f "$DIR/tls.csr" "$DIR/tls.ext"
    say "created tls_cert and tls_key (${TLS_NAMES}), valid ${TLS_DAYS} days"
fi

mounted=(postgres_password procedure_database_url notifier_database_url operator_tokens viewer_tokens
         bureau_tokens sealing_key smtp_password tls_ca tls_cert tls_key)
chmod 0444 "${mounted[@]/#/$DIR/}"
say "done: $DIR"
