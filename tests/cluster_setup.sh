#!/usr/bin/env bash
# Tools for the loopback `ray up` test (tests/e2e/test_ray_up_on_loopback.py): an ssh server and rsync.
# Idempotent: installs only what is missing, from Debian's packages (apt-get), and starts nothing --
# the test runs its own sshd on 127.0.0.1 with its own config, and stops it. The distribution's
# ssh service is kept from starting during the install (policy-rc.d), so no sshd ends up
# listening on port 22 of every interface.
#
#   tests/cluster_setup.sh        # then: pytest -m slow tests/e2e/test_ray_up_on_loopback.py
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)

if [ ${#need[@]} -eq 0 ]; then
    echo "cluster_setup: sshd, ssh, ssh-keygen and rsync present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "cluster_setup: need root (or passwordless sudo) to install: ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cluster_setup: no apt-get here; install ${need[*]} with the system's package manager" >&2
    exit 1
fi

# Keep package scripts from starting services while installing (Debian's policy-rc.d protocol).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

# shellcheck disable=SC2207
uniq_need=($(printf '%s\n' "${need[@]}" | sort -u))
echo "cluster_setup: installing ${uniq_need[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${uniq_need[@]}"
echo "cluster_setup: done"
