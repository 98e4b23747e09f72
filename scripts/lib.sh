# shellcheck shell=bash
# What the device scripts (h100_run.sh, tp_h100x2.sh) share: status notes, packing the job's files into one tarball
# (the device returns at most 8 files) and installing this copy once. The caller sets R (results folder), STATUS (its
# status file), NAME (the tarball's name), DEST (where the tarball goes; empty: nowhere), PACKED (paths and globs of
# the job's files) and PY (the interpreter).

note() { echo "$*" | tee -a "$STATUS"; }

pack() {  # this job's files only: unpacking never overwrites another job's file with an older copy
  [ -n "$DEST" ] || return 0
  local have=() f
  for f in ${PACKED[@]}; do [ -e "$f" ] && have+=("$f"); done  # unquoted: the steps' globs expand here
  tar czf "$DEST/$NAME.tgz.part" "${have[@]}" && mv "$DEST/$NAME.tgz.part" "$DEST/$NAME.tgz"
}

install() {  # pip install -e . unless this copy is the installed one; two jobs starting at once take turns
  local log=$R/install_$NAME.log
  # -I: without it the check imports ./nanoflow_compiler from the working directory, which looks installed but is not
  # (its runtime subpackage comes from the install's package-dir mapping), and the steps then fail to import it
  if "$PY" -I -c "import nanoflow_compiler, sys; sys.exit(not nanoflow_compiler.__file__.startswith('$PWD'))" 2>/dev/null
  then return 0; fi
  flock /tmp/nanoflow_install.lock "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$log" 2>&1 \
    || { note "pip install -e . failed: see $log"; PACKED+=("$log"); pack; exit 1; }
}
