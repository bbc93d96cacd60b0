# Sourced by the install scripts before `apt-get install`: keeps Debian packages from starting their services.
# A policy-rc.d that exits 101 tells invoke-rc.d (run by the packages' postinst scripts) not to start anything;
# it is put in place only when there is none, and removed again when the sourcing script exits. Expects $SUDO
# ("" as root, "sudo -n" otherwise), and takes over the EXIT trap.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  ADDED_POLICY=1
fi
remove_added_policy() { if [ "$ADDED_POLICY" -eq 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap remove_added_policy EXIT
