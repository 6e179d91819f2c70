#!/usr/bin/env bash
# Fetch and unpack the Descanning data, or generate the synthetic demo set. Run with -h for usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage:
  bash data_download.sh [DATA_DIR]         real competition data (three zips from Google Drive)
  bash data_download.sh --demo [DATA_DIR]  synthetic demo data (no network, a few seconds)
  bash data_download.sh -h | --help        this text

Real data: downloads train_clean.zip, train_scan.zip and test_scan.zip with gdown into the zip
cache, checks each one, unpacks them flat into DATA_DIR/train/clean, DATA_DIR/train/scan and
DATA_DIR/test/scan, then checks the pairing. Re-running skips every step already done: a complete
zip in the cache is never downloaded again, and a zip already unpacked is not unpacked again.
You can put the zips into the cache folder by hand (e.g. copies from your own Google Drive).

Demo data: procedural magazine pages with a simulated print-and-scan, in the same layout, marked
by a DEMO_DATA.txt file. Never written into a folder that holds real data.

DATA_DIR default: $DESCAN_DATA if set; else /content/data in Colab (real) and ./data/real here;
./data/demo for --demo.

Environment:
  DESCAN_DATA            data folder (see above)
  DESCAN_ZIP_CACHE       where the zips are kept (default: DATA_DIR/zips)
  DESCAN_GDOWN           downloader command (default: gdown)
  DESCAN_GDOWN_TIMEOUT   seconds without data before a download attempt gives up (default: 30)
  DESCAN_DOWNLOAD_TRIES  attempts per zip for transient failures (default: 3)
  DESCAN_RETRY_WAIT      seconds between attempts (default: 10)
  DESCAN_DEMO_PAGES, DESCAN_DEMO_TEST_PAGES, DESCAN_DEMO_SIZE
                         demo training pages (40), test pages (4), crop size (256)
  PYTHON                 Python interpreter (default: python3)
EOF
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
HELPERS="$HERE/helpers.py"
DEMO_MARKER="DEMO_DATA.txt"

# name|Google Drive id|folder inside DATA_DIR
ZIPS=(
  "train_clean.zip|16zAeGDmqbAvn7Iy8V-mByIKx6rG-wgLD|train/clean"
  "train_scan.zip|1cqxSVFxfonx5qKVldfBy0q7uYdNZY8ea|train/scan"
  "test_scan.zip|1zmfrXzT9InLg7NIQ-hXekZIyX9aGNNqj|test/scan"
)

say() { printf '%s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
helpers() { "$PY" "$HELPERS" "$@"; }

# ---------------------------------------------------------------- arguments
MODE=real
DATA_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --demo) MODE=demo ;;
    -*) usage >&2; printf '\nERROR: unknown option %s\n' "$1" >&2; exit 2 ;;
    *)
      if [ -n "$DATA_DIR" ]; then
        usage >&2; printf '\nERROR: only one DATA_DIR may be given (got %s and %s)\n' "$DATA_DIR" "$1" >&2
        exit 2
      fi
      DATA_DIR="$1" ;;
  esac
  shift
done

in_colab() { [ -d /content ] && "$PY" -c "import google.colab" >/dev/null 2>&1; }

if [ -z "$DATA_DIR" ]; then
  if [ -n "${DESCAN_DATA:-}" ]; then
    DATA_DIR="$DESCAN_DATA"
  elif [ "$MODE" = demo ]; then
    DATA_DIR="$HERE/data/demo"
  elif in_colab; then
    DATA_DIR="/content/data"
  else
    DATA_DIR="$HERE/data/real"
  fi
fi
[ -f "$HELPERS" ] || die "helpers.py not found next to this script (looked for $HELPERS)."

# ---------------------------------------------------------------- demo data
if [ "$MODE" = demo ]; then
  if [ -d "$DATA_DIR/train" ] || [ -d "$DATA_DIR/test" ]; then
    [ -f "$DATA_DIR/$DEMO_MARKER" ] || die "$DATA_DIR already holds data without a $DEMO_MARKER marker,
so it looks like the real competition data. Demo data is never written there.
Give another folder: bash data_download.sh --demo ./data/demo"
  fi
  PAGES="${DESCAN_DEMO_PAGES:-40}"
  TEST_PAGES="${DESCAN_DEMO_TEST_PAGES:-4}"
  SIZE="${DESCAN_DEMO_SIZE:-256}"
  wanted="seed=0 train_pages=$PAGES test_pages=$TEST_PAGES crops_per_page=2 crop=$SIZE"
  if [ -f "$DATA_DIR/$DEMO_MARKER" ] && grep -qxF "$wanted" "$DATA_DIR/$DEMO_MARKER" \
      && helpers check "$DATA_DIR" 2>/dev/null; then
    say "Demo data already in $DATA_DIR ($wanted); nothing to do."
    exit 0
  fi
  if [ -f "$DATA_DIR/$DEMO_MARKER" ]; then
    say "Replacing the older demo data in $DATA_DIR (other settings, or incomplete)."
    rm -rf "$DATA_DIR/train" "$DATA_DIR/test"
  fi
  say "Generating SYNTHETIC DEMO DATA in $DATA_DIR ($wanted) ..."
  helpers demo "$DATA_DIR" --train-pages "$PAGES" --test-pages "$TEST_PAGES" --size "$SIZE" --seed 0 \
    || die "generating the demo data failed (see the message above)."
  helpers check "$DATA_DIR" || die "the demo data in $DATA_DIR does not pass the check (see above)."
  say "Done: demo data in $DATA_DIR. It is NOT the competition data."
  exit 0
fi

# ---------------------------------------------------------------- real data
[ -f "$DATA_DIR/$DEMO_MARKER" ] && die "$DATA_DIR holds the synthetic demo data ($DEMO_MARKER).
Real data is never mixed into it. Use another folder, e.g. bash data_download.sh ./data/real"

CACHE="${DESCAN_ZIP_CACHE:-$DATA_DIR/zips}"
STAMPS="$DATA_DIR/.unpacked"
mkdir -p "$CACHE" "$STAMPS"
CACHE="$(cd "$CACHE" && pwd)"

read -r -a GDOWN <<< "${DESCAN_GDOWN:-gdown}"
[ "${#GDOWN[@]}" -gt 0 ] || die "DESCAN_GDOWN is set but empty."
TIMEOUT="${DESCAN_GDOWN_TIMEOUT:-30}"
TRIES="${DESCAN_DOWNLOAD_TRIES:-3}"
WAIT="${DESCAN_RETRY_WAIT:-10}"

TMP_FILES=()
cleanup() { local f; for f in "${TMP_FILES[@]+"${TMP_FILES[@]}"}"; do rm -f "$f" "$f"*.part 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

by_hand_hint() {  # $1 zip name, $2 id
  cat <<EOF
  - or put the zip into the cache folder by hand, saved as
      $CACHE/$1
    either downloaded in a browser from https://drive.google.com/uc?id=$2
    or added to your own Google Drive first (open https://drive.google.com/file/d/$2/view,
    File > Make a copy) and copied from there; in Colab: mount Drive, then
      cp "/content/drive/MyDrive/<your copy>" "$CACHE/$1"
    Then run this script again: zips found in the cache are checked and used, not downloaded again.
EOF
}

quota_help() {  # $1 zip name, $2 id
  cat <<EOF
Google Drive refused to send $1: "Too many users have viewed or downloaded this file recently"
(the file's download quota is used up for now, or Drive sent a sign-in page).
What to do:
  - wait (up to 24 hours) and retry later: run this script again; zips already complete are kept;
$(by_hand_hint "$1" "$2")
EOF
}

network_help() {  # $1 zip name, $2 id
  cat <<EOF
could not reach Google Drive (drive.google.com:443) to download $1: no network connection
(the name lookup or the connection failed).
What to do:
  - check the internet connection, then run this script again;
$(by_hand_hint "$1" "$2")
  - to try the notebooks without the competition data: bash data_download.sh --demo
EOF
}

# Fail fast when Google Drive cannot be reached at all (no network), instead of waiting for
# timeouts and retries. Only for the default downloader without a proxy: a proxy or another
# downloader (DESCAN_GDOWN) may reach the files by another way.
NET_CHECKED=0
check_network() {  # $1 zip name, $2 id
  [ "$NET_CHECKED" = 0 ] || return 0
  NET_CHECKED=1
  [ -z "${DESCAN_GDOWN:-}" ] || return 0
  [ -z "${HTTPS_PROXY:-}${https_proxy:-}${ALL_PROXY:-}${all_proxy:-}" ] || return 0
  if ! "$PY" -c "import socket; socket.create_connection(('drive.google.com', 443), timeout=5).close()" \
      >/dev/null 2>&1; then
    die "$(network_help "$1" "$2")"
  fi
}

gdown_supports_timeout() { "${GDOWN[@]}" --help 2>/dev/null | grep -q -- '--timeout'; }

download() {  # $1 zip name, $2 id; leaves a checked zip at $CACHE/$1 or exits
  local name="$1" id="$2" final="$CACHE/$1" tmp="$CACHE/$1.partial" log="$CACHE/.$1.log"
  local try=1 rc checkmsg opts=()
  TMP_FILES+=("$tmp" "$log")
  command -v "${GDOWN[0]}" >/dev/null 2>&1 || die "the downloader '${GDOWN[0]}' is not installed.
Install it with: pip install gdown   (then run this script again)
$(by_hand_hint "$name" "$id")"
  check_network "$name" "$id"
  if gdown_supports_timeout; then opts=(--timeout "$TIMEOUT"); fi
  while :; do
    rm -f "$tmp" "$tmp"*.part "$log"
    say "Downloading $name (attempt $try of $TRIES) ..."
    set +e
    "${GDOWN[@]}" "${opts[@]+"${opts[@]}"}" -O "$tmp" "$id" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 0 ]; then
      if [ ! -f "$tmp" ]; then
        checkmsg="the downloader exited without writing $tmp"
      elif checkmsg="$(helpers check-zip "$tmp" 2>&1)"; then
        mv -f "$tmp" "$final"
        rm -f "$log"
        say "$name: downloaded and complete."
        return 0
      fi
      rm -f "$tmp" "$tmp"*.part
      if grep -qi "web page" <<< "$checkmsg"; then
        die "the file downloaded as $name is not a zip but a web page; it has been deleted.
$(quota_help "$name" "$id")"
      fi
      say "$name: the download is not a complete zip; deleted it. ($checkmsg)"
    else
      rm -f "$tmp" "$tmp"*.part
      if grep -qiE "too many users|quota|cannot retrieve the public link|uc-error" "$log"; then
        die "$(quota_help "$name" "$id")"
      fi
      if grep -qiE "name or service not known|failed to resolve|temporary failure in name resolution|nodename nor servname|getaddrinfo|network is unreachable|no route to host|NameResolutionError" "$log"; then
        die "$(network_help "$name" "$id")"
      fi
      say "$name: the download failed (exit status $rc)."
    fi
    if [ "$try" -ge "$TRIES" ]; then
      die "$name could not be downloaded after $TRIES attempts (see the messages above; nothing
incomplete was kept).
What to do:
  - run this script again later (a timeout or a broken connection is often temporary);
$(by_hand_hint "$name" "$id")"
    fi
    try=$((try + 1))
    say "Retrying in $WAIT s ..."
    sleep "$WAIT"
  done
}

say "Competition data -> $DATA_DIR (zip cache: $CACHE)"
for entry in "${ZIPS[@]}"; do
  IFS='|' read -r name id sub <<< "$entry"
  stamp="$STAMPS/$name.done"
  if [ -f "$stamp" ] && [ -d "$DATA_DIR/$sub" ]; then
    say "$name: already unpacked into $DATA_DIR/$sub (delete $stamp to unpack again)."
    continue
  fi
  zip="$CACHE/$name"
  if [ -f "$zip" ]; then
    if helpers check-zip "$zip" >/dev/null 2>&1; then
      say "$name: complete zip already in the cache, not downloading it again."
    else
      say "$name: the copy in the cache is not a complete zip; deleting it and downloading again."
      rm -f "$zip"
    fi
  fi
  [ -f "$zip" ] || download "$name" "$id"
  helpers unpack "$zip" "$DATA_DIR/$sub" || die "unpacking $zip failed (see the message above).
Delete $zip and run this script again."
  printf '%s unpacked into %s\n' "$name" "$sub" > "$stamp"
done

say "Checking the data (pairing, readability, sizes) ..."
helpers check "$DATA_DIR" || die "the data in $DATA_DIR does not pass the check (see the message above).
To start again: delete $DATA_DIR/train, $DATA_DIR/test and $STAMPS, then run this script again
(complete zips in $CACHE are reused)."
say "Done: competition data in $DATA_DIR."
