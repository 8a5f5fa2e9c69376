#!/bin/sh
# Lays out the image's own files (deploy/image/files) under OUT, as they will be in the
# image: built binaries stripped, scripts as they are. deploy/Dockerfile runs it in its
# build stage; the test harness runs it to build the same image without Docker.
#
#   deploy/image/stage.sh OUT BINDIR...    (BINDIRs are searched in order for bin:NAME)
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUT BINDIR..." >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$1
shift
# Comments and blank lines out; then SOURCE DEST MODE per line.
sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/files" | while read -r src dest mode; do
  [ -n "$mode" ] || { echo "stage: bad line in $here/files: $src $dest" >&2; exit 1; }
  case "$src" in
    bin:*)
      name=${src#bin:}
      from=""
      for d in "$@"; do
        if [ -f "$d/$name" ]; then from=$d/$name; break; fi
      done
      [ -n "$from" ] || { echo "stage: $name is not built in any of: $*" >&2; exit 1; }
      mkdir -p "$out$(dirname "$dest")"
      # Stripped, as an image ships them: a debug build is 10 times the size otherwise.
      strip -o "$out$dest" "$from"
      chmod "$mode" "$out$dest"
      ;;
    *)
      mkdir -p "$out$(dirname "$dest")"
      cp "$repo/$src" "$out$dest"
      chmod "$mode" "$out$dest"
      ;;
  esac
done
