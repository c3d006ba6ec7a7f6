#!/bin/sh
# The login program of the console gettys (agetty --login-program), installed by the ucernvm boot
# loader. A login name "#<PIN>" pairs the machine with a CernVM Online context, as CernVM's
# pam_cernvm did; any other name goes to login(1) untouched.
SERVICE_URL=@SERVICE_URL@
LIB_DIR=@LIB_DIR@
CONTEXT_DIR=@CONTEXT_DIR@
SEED_DIR=@SEED_DIR@

here=$(cd "$(dirname "$0")" && pwd)
root=${here%"$LIB_DIR"}  # the tree this was installed in: "" in the booted OS

name=
for argument do name=$argument; done  # agetty runs: <this program> -p -- <name>
case $name in
    '#'*) ;;
    *) exec "$root/bin/login" "$@" ;;
esac

if ! command -v python3 >/dev/null 2>&1; then
    echo "CernVM Online pairing needs python3, which this system does not have." >&2
    exit 1
fi
# The boot loader's own copy of the client: the same code as the loader that reads the context.
PYTHONPATH="$here/python" python3 -m ucernvm.context.pairing --service "$SERVICE_URL" \
    --context-dir "$root$CONTEXT_DIR" --seed-dir "$root$SEED_DIR" -- "${name#?}" || exit 1
printf 'Reboot now to apply it? [y/N] '
read -r answer || answer=
case $answer in
    [yY]*) exec "$root/bin/systemctl" reboot ;;
esac
