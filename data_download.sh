#!/usr/bin/env bash
# Fetch and unpack the Descanning data, or generate the synthetic demo set. Run with -h for usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage:
  bash data_download.sh [DATA_DIR]         real competition data (three zips from Google Drive)
  bash data_download.sh --demo [DATA_DIR]  synthetic demo data (no network, a few seconds)
  bash data_download.sh -h | --help        this text

Real data: when DATA_DIR already holds the images in train/clean, train/scan and test/scan and
they pass the check, nothing else happens (nothing is written into DATA_DIR, which may be
read-only). Otherwise: downloads the three zips with gdown into the zip cache, each under the
name Google Drive gives it, identifies each one (train_clean.zip, train_scan.zip or
test_scan.zip) by that name or its contents, never by its place in the list of ids, checks that
the three zips hold what their names say, unpacks them flat into DATA_DIR/train/clean,
DATA_DIR/train/scan and DATA_DIR/test/scan, then checks the pairing. Re-running skips every step
already done: a complete zip in the cache is never downloaded again, and a zip already unpacked
is not unpacked again. You can put the zips into the cache folder by hand, under those three
names (e.g. copies from your own Google Drive).

Demo data: procedural magazine pages with a simulated print-and-scan, in the same layout, marked
by a DEMO_DATA.txt file. Never written into a folder that holds real data.

DATA_DIR default: $DESCAN_DATA if set; else /content/data in Colab (real) and ./data/real here;
./data/demo for --demo.

Environment:
  DESCAN_DATA            data folder (see above)
  DESCAN_ZIP_CACHE       where the zips are kept (default: DATA_DIR/zips)
  DESCAN_DRIVE_IDS       Google Drive ids of the zips, space-separated, in any order (default:
                           16zAeGDmqbAvn7Iy8V-mBylKx6rG-wgLD 1cqxSVFxfonx5qKVIdfByOq7uYdNZY8ea
                           1zmfrXzT9lnLg7NlQ-hXekZlyX9aGNNqj, then, only while test_scan.zip is
                           still missing, 1DEavUuFh6x7n1XEMQCaW8yaU3wQxqfBu, the replaced test zip)
  DESCAN_GDOWN           downloader command (default: gdown); run without -O in an empty
                         folder, it must save the file under the name Drive gives it
  DESCAN_GDOWN_TIMEOUT   seconds without data before a download attempt gives up (default: 30)
  DESCAN_DOWNLOAD_TRIES  attempts per zip for transient failures (default: 3)
  DESCAN_RETRY_WAIT      seconds between attempts (default: 10)
  DESCAN_WORKSPACE       where the record of a passed check is kept (never in DATA_DIR)
  DESCAN_DEMO_PAGES, DESCAN_DEMO_TEST_PAGES, DESCAN_DEMO_SIZE
                         demo training pages, test pages, crop size (defaults: python -m descan demo -h)
  PYTHON                 Python interpreter (default: python3)
EOF
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
ZIP_NAMES=(train_clean.zip train_scan.zip test_scan.zip)
DEFAULT_IDS="16zAeGDmqbAvn7Iy8V-mBylKx6rG-wgLD 1cqxSVFxfonx5qKVIdfByOq7uYdNZY8ea 1zmfrXzT9lnLg7NlQ-hXekZlyX9aGNNqj"
FALLBACK_TEST_ID="1DEavUuFh6x7n1XEMQCaW8yaU3wQxqfBu"  # the test zip as replaced during the competition

say() { printf '%s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
descan() { PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m descan "$@"; }
python_help() {  # $1 a descan command's output [$2 "always"]: what to install when the Python failed
  local mod req="$PY -m pip install -r $HERE/requirements.txt"
  mod="$(sed -n "s/.*No module named '\([^'.]*\).*/\1/p" <<< "$1" | head -n 1)"
  [ "$mod" = cv2 ] && mod="opencv-python (the module cv2)"
  if [ -n "$mod" ]; then
    printf "The Python '%s' lacks %s. Install the requirements:\n  %s\nor point PYTHON at a Python that has them.\n" "$PY" "$mod" "$req"
  elif grep -q "^Traceback" <<< "$1"; then
    printf "The Python '%s' crashed (see above). Install the requirements:\n  %s\nor point PYTHON at a Python that has them.\n" "$PY" "$req"
  elif [ "${2:-}" = always ]; then
    printf "Install the requirements:\n  %s\nor point PYTHON at a Python that has them.\n" "$req"
  fi
}
whole_number() {  # $1 variable name, $2 its value, $3 minimum: refuse a bad value by name
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || die "$1=$2 is not a whole number of at least $3.
Set it to one (or unset it for the default) and run this script again."
}
folder_of() {  # $1 zip name -> its folder inside DATA_DIR
  case "$1" in
    train_clean.zip) say train/clean ;;
    train_scan.zip) say train/scan ;;
    test_scan.zip) say test/scan ;;
  esac
}

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
[ -f "$HERE/descan/__main__.py" ] || die "the descan package was not found next to this script
(looked for $HERE/descan/__main__.py). Get the whole repository (git clone) and try again."

# ---------------------------------------------------------------- demo data
# descan.demo owns the settings (DESCAN_DEMO_*), the marker, the refusal of a real-data folder,
# the replacement of older demo data and the check; its exit status and message pass through.
if [ "$MODE" = demo ]; then
  descan demo "$DATA_DIR" || exit $?
  exit 0
fi

# ---------------------------------------------------------------- real data
# Every step below needs a Python that can run the descan package (numpy, OpenCV): the first call
# says so at once, before anything is downloaded, moved or judged by its output. It also tells
# whether DATA_DIR holds the demo set (its marker file, known to descan alone).
if ! kind="$(descan kind "$DATA_DIR" 2>&1)"; then
  die "the Python '$PY' cannot run this kit's descan package:
$(printf '%s\n' "$kind" | tail -n 5)
$(python_help "$kind" always)
Then run this script again. Nothing was changed."
fi
[ "$kind" = demo ] && die "$DATA_DIR holds the synthetic demo data (its marker file says so).
Real data is never mixed into it. Use another folder, e.g. bash data_download.sh ./data/real"

has_images() {  # $1 folder: true when it holds at least one image file (not recursive)
  [ -d "$1" ] && [ -n "$(find "$1" -maxdepth 1 -type f ! -name '.*' \( -iname '*.png' -o -iname '*.tif' \
    -o -iname '*.tiff' -o -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.bmp' \) -print -quit 2>/dev/null)" ]
}

# Data already in place (unpacked before, by hand, or on a read-only disk): check it, and when it
# passes, stop without writing anything into DATA_DIR. The check records itself in the workspace.
CHECK_FAILED=""
if has_images "$DATA_DIR/train/clean" && has_images "$DATA_DIR/train/scan" && has_images "$DATA_DIR/test/scan"; then
  say "Competition data found in $DATA_DIR; checking it (pairing, readability, sizes) ..."
  if descan check "$DATA_DIR"; then
    say "Done: competition data already in place in $DATA_DIR (nothing downloaded or unpacked)."
    exit 0
  fi
  say "The data in $DATA_DIR does not pass the check (see the message above); going on with the zips
(download what the cache lacks, unpack)."
  CHECK_FAILED=1
fi

CACHE="${DESCAN_ZIP_CACHE:-$DATA_DIR/zips}"
STAMPS="$DATA_DIR/.unpacked"
mkdir -p "$CACHE" "$STAMPS"
CACHE="$(cd "$CACHE" && pwd)"
ID_RECORD="$CACHE/.drive_ids"  # lines "<Drive id> <zip name>" of earlier downloads

read -r -a GDOWN <<< "${DESCAN_GDOWN:-gdown}"
[ "${#GDOWN[@]}" -gt 0 ] || die "DESCAN_GDOWN is set but empty."
if [[ "${GDOWN[0]}" == */* ]] && [ -e "${GDOWN[0]}" ]; then  # downloads run in another folder
  GDOWN[0]="$(cd "$(dirname "${GDOWN[0]}")" && pwd)/$(basename "${GDOWN[0]}")"
fi
if [ -n "${DESCAN_DRIVE_IDS:-}" ]; then
  read -r -a IDS <<< "$DESCAN_DRIVE_IDS"
  FALLBACK_IDS=()
else
  read -r -a IDS <<< "$DEFAULT_IDS"
  FALLBACK_IDS=("$FALLBACK_TEST_ID")
fi
TIMEOUT="${DESCAN_GDOWN_TIMEOUT:-30}"
TRIES="${DESCAN_DOWNLOAD_TRIES:-3}"
WAIT="${DESCAN_RETRY_WAIT:-10}"
whole_number DESCAN_GDOWN_TIMEOUT "$TIMEOUT" 1
whole_number DESCAN_DOWNLOAD_TRIES "$TRIES" 1
whole_number DESCAN_RETRY_WAIT "$WAIT" 0

TMP_PATHS=()
cleanup() { local f; for f in "${TMP_PATHS[@]+"${TMP_PATHS[@]}"}"; do rm -rf "$f" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

missing_zips() { local n; for n in "${ZIP_NAMES[@]}"; do [ -f "$CACHE/$n" ] || say "$n"; done; }

by_hand_hint() {  # $1 Drive id
  local n
  cat <<EOF
  - or put the zips into the cache folder by hand, each under its name, i.e. as
$(missing_zips | while read -r n; do printf '      %s\n' "$CACHE/$n"; done)
    either downloaded in a browser from https://drive.google.com/uc?id=$1
    or added to your own Google Drive first (open https://drive.google.com/file/d/$1/view,
    File > Make a copy) and copied from there; in Colab: mount Drive, then
      cp "/content/drive/MyDrive/<your copy>" "$CACHE/<its name>"
    Then run this script again: zips found in the cache are checked and used, not downloaded again.
EOF
}

quota_help() {  # $1 Drive id
  cat <<EOF
Google Drive refused to send the file with id $1: "Too many users have viewed or downloaded this
file recently" (the file's download quota is used up for now, or Drive sent a sign-in page).
What to do:
  - wait (up to 24 hours) and retry later: run this script again; zips already complete are kept;
$(by_hand_hint "$1")
EOF
}

network_help() {  # $1 Drive id
  cat <<EOF
could not reach Google Drive (drive.google.com:443) to download the file with id $1:
no network connection (the name lookup or the connection failed).
What to do:
  - check the internet connection, then run this script again;
$(by_hand_hint "$1")
  - to try the notebooks without the competition data: bash data_download.sh --demo
EOF
}

# Fail fast when Google Drive cannot be reached at all (no network), instead of waiting for
# timeouts and retries. Only for the default downloader without a proxy: a proxy or another
# downloader (DESCAN_GDOWN) may reach the files by another way.
NET_CHECKED=0
check_network() {  # $1 Drive id
  [ "$NET_CHECKED" = 0 ] || return 0
  NET_CHECKED=1
  [ -z "${DESCAN_GDOWN:-}" ] || return 0
  [ -z "${HTTPS_PROXY:-}${https_proxy:-}${ALL_PROXY:-}${all_proxy:-}" ] || return 0
  if ! "$PY" -c "import socket; socket.create_connection(('drive.google.com', 443), timeout=5).close()" \
      >/dev/null 2>&1; then
    die "$(network_help "$1")"
  fi
}

gdown_supports_timeout() { "${GDOWN[@]}" --help 2>/dev/null | grep -q -- '--timeout'; }

recorded_name() {  # $1 Drive id -> the zip name an earlier download of it turned out to be
  [ -f "$ID_RECORD" ] || return 0
  awk -v id="$1" '$1 == id { n = $2 } END { if (n != "") print n }' "$ID_RECORD"
}

record_id() {  # $1 Drive id, $2 zip name; replaces the file in one step
  local tmp="$ID_RECORD.$$.partial"
  TMP_PATHS+=("$tmp")
  { [ -f "$ID_RECORD" ] && awk -v id="$1" '$1 != id' "$ID_RECORD"; printf '%s %s\n' "$1" "$2"; } > "$tmp"
  mv -f "$tmp" "$ID_RECORD"
}

# A python failure that is check-zip's verdict on the file itself (not a broken Python).
zip_is_broken() { grep -qE '^error: .*(is not a complete zip file \(|is corrupt \(entry)' <<< "$1"; }

download_id() {  # $1 Drive id; leaves the checked zip at $CACHE/<what it is>, or exits
  local id="$1" dir log try=1 rc checkmsg name drive_name opts=() files=()
  dir="$(mktemp -d "$CACHE/.download.XXXXXX")"
  log="$dir.log"
  TMP_PATHS+=("$dir" "$log")
  command -v "${GDOWN[0]}" >/dev/null 2>&1 || die "the downloader '${GDOWN[0]}' is not installed.
Install it with: pip install gdown   (then run this script again)
$(by_hand_hint "$id")"
  check_network "$id"
  if gdown_supports_timeout; then opts=(--timeout "$TIMEOUT"); fi
  while :; do
    rm -rf "$dir" "$log"
    mkdir "$dir"
    say "Downloading Google Drive id $id (attempt $try of $TRIES) ..."
    set +e
    # No -O: the file gets the name Drive gives it, in a folder of its own.
    (cd "$dir" && exec "${GDOWN[@]}" "${opts[@]+"${opts[@]}"}" "$id") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 0 ]; then
      files=()
      while IFS= read -r -d '' f; do files+=("$f"); done \
        < <(find "$dir" -mindepth 1 -maxdepth 1 ! -name '*.part' -print0)
      if [ "${#files[@]}" -gt 1 ]; then
        die "the downloader wrote ${#files[@]} files for id $id ($(for f in "${files[@]}"; do printf '%s ' "$(basename "$f")"; done)),
not one zip; none of them was used. Check DESCAN_DRIVE_IDS (is $id a folder?)."
      fi
      if [ "${#files[@]}" -eq 0 ] || [ ! -f "${files[0]}" ]; then
        checkmsg="the downloader exited without writing a file"
      elif checkmsg="$(descan check-zip "${files[0]}" 2>&1)"; then
        drive_name="$(basename "${files[0]}")"
        rm -f "$log"
        if ! name="$(descan identify-zip "${files[0]}" --drive-name "$drive_name" 2>&1)"; then
          mv -f "${files[0]}" "$CACHE/$drive_name"
          die "$name
The download (id $id) is kept as $CACHE/$drive_name."
        fi
        case "$name" in
          train_clean.zip|train_scan.zip|test_scan.zip) ;;
          *) die "could not tell which zip the download of id $id ('$drive_name') is: $name" ;;
        esac
        record_id "$id" "$name"
        if [ -f "$CACHE/$name" ]; then
          say "Id $id ('$drive_name') is $name, which is already in the cache: the new copy is discarded."
        else
          mv -f "${files[0]}" "$CACHE/$name"
          say "$name: downloaded (id $id, named '$drive_name' by Drive) and complete."
        fi
        rm -rf "$dir"
        return 0
      fi
      if ! zip_is_broken "$checkmsg" && [ "${#files[@]}" -eq 1 ]; then
        drive_name="$(basename "${files[0]}")"
        mv -f "${files[0]}" "$CACHE/$drive_name.unchecked"
        die "checking the download of id $id failed:
$checkmsg
$(python_help "$checkmsg")
The download is kept, unchecked, as $CACHE/$drive_name.unchecked."
      fi
      rm -rf "$dir"
      if grep -qi "web page" <<< "$checkmsg"; then
        die "the file downloaded for id $id is not a zip but a web page; it has been deleted.
$(quota_help "$id")"
      fi
      say "Id $id: the download is not a complete zip; deleted it. ($checkmsg)"
    else
      rm -rf "$dir"
      if grep -qiE "too many users|quota|cannot retrieve the public link|uc-error" "$log"; then
        die "$(quota_help "$id")"
      fi
      if grep -qiE "name or service not known|failed to resolve|temporary failure in name resolution|nodename nor servname|getaddrinfo|network is unreachable|no route to host|NameResolutionError" "$log"; then
        die "$(network_help "$id")"
      fi
      say "Id $id: the download failed (exit status $rc)."
    fi
    if [ "$try" -ge "$TRIES" ]; then
      die "the file with id $id could not be downloaded after $TRIES attempts (see the messages
above; nothing incomplete was kept).
What to do:
  - run this script again later (a timeout or a broken connection is often temporary);
$(by_hand_hint "$id")"
    fi
    try=$((try + 1))
    say "Retrying in $WAIT s ..."
    sleep "$WAIT"
  done
}

fetch_ids() {  # Drive ids...: download each while some zip is missing, skipping known ones
  local id known
  for id in "$@"; do
    [ -n "$(missing_zips)" ] || return 0
    known="$(recorded_name "$id")"
    if [ -n "$known" ] && [ -f "$CACHE/$known" ]; then
      say "Id $id is $known, already in the cache: not downloading it again."
      continue
    fi
    download_id "$id"
  done
}

say "Competition data -> $DATA_DIR (zip cache: $CACHE)"
TO_UNPACK=()
for name in "${ZIP_NAMES[@]}"; do
  stamp="$STAMPS/$name.done"
  sub="$(folder_of "$name")"
  if [ -f "$stamp" ] && [ -d "$DATA_DIR/$sub" ]; then
    say "$name: already unpacked into $DATA_DIR/$sub (delete $stamp to unpack again)."
  else
    TO_UNPACK+=("$name")
  fi
done

if [ "${#TO_UNPACK[@]}" -gt 0 ]; then
  # The zips in the cache: a file that is not a complete zip is moved aside, never deleted.
  for name in "${ZIP_NAMES[@]}"; do
    zip="$CACHE/$name"
    [ -f "$zip" ] || continue
    if checkmsg="$(descan check-zip "$zip" 2>&1)"; then
      say "$name: complete zip already in the cache, not downloading it again."
    elif zip_is_broken "$checkmsg"; then
      mv -f "$zip" "$zip.bad"
      say "$name: the copy in the cache is not a complete zip; moved it aside to $zip.bad and
downloading it again. ($checkmsg)"
    else
      die "checking $zip failed (the file is kept):
$checkmsg
$(python_help "$checkmsg")"
    fi
  done

  # Download while a zip is missing; each download is named by what it is, not by its id's place.
  fetch_ids "${IDS[@]}"
  [ -f "$CACHE/test_scan.zip" ] || fetch_ids "${FALLBACK_IDS[@]+"${FALLBACK_IDS[@]}"}"
  missing="$(missing_zips | tr '\n' ' ')"
  if [ -n "$missing" ]; then
    tried="${IDS[*]}"
    [ -f "$CACHE/test_scan.zip" ] || tried="$tried${FALLBACK_IDS[*]+ ${FALLBACK_IDS[*]}}"
    die "still missing from the zip cache after trying the Google Drive ids $tried:
  ${missing% }
(none of those downloads turned out to be that zip; see $ID_RECORD for what each id gave).
What to do:
  - set DESCAN_DRIVE_IDS to the ids your course hands out (space-separated, any order), e.g.
      DESCAN_DRIVE_IDS=\"ID1 ID2 ID3\" bash data_download.sh $DATA_DIR
  - or put the missing zip into the cache by hand under its name:
$(missing_zips | while read -r n; do printf '      %s\n' "$CACHE/$n"; done)
    then run this script again."
  fi

  say "Checking that the three zips hold what their names say ..."
  descan check-zips "$CACHE" || die "the zips in $CACHE do not hold what their names say (see the
message above); nothing was unpacked."

  for name in "${TO_UNPACK[@]}"; do
    zip="$CACHE/$name"
    sub="$(folder_of "$name")"
    descan unpack "$zip" "$DATA_DIR/$sub" || die "unpacking $zip failed (see the message above).
Delete $zip and run this script again."
    printf '%s unpacked into %s\n' "$name" "$sub" > "$STAMPS/.$name.done.partial"
    mv -f "$STAMPS/.$name.done.partial" "$STAMPS/$name.done"
  done
elif [ -n "$CHECK_FAILED" ]; then
  # Nothing was unpacked since the check above failed: checking again would only repeat it.
  die "the data in $DATA_DIR does not pass the check (see the message above) and every zip
is marked as unpacked, so there is nothing to unpack again.
To start again: delete $DATA_DIR/train, $DATA_DIR/test and $STAMPS, then run this script again
(complete zips in $CACHE are reused)."
fi

say "Checking the data (pairing, readability, sizes) ..."
descan check "$DATA_DIR" || die "the data in $DATA_DIR does not pass the check (see the message above).
To start again: delete $DATA_DIR/train, $DATA_DIR/test and $STAMPS, then run this script again
(complete zips in $CACHE are reused)."
say "Done: competition data in $DATA_DIR."
