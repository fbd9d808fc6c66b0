# Sourced by the checks that run a Python tool: `pinned_venv DIR PACKAGE
# VERSION COMMAND` makes sure the virtual environment DIR (under target/)
# holds PACKAGE at VERSION, checked by `DIR/bin/COMMAND --version`, and
# installs it there otherwise.
pinned_venv() {
    local dir=$1 package=$2 version=$3 command=$4
    if ! "$dir/bin/$command" --version 2>/dev/null | grep -q "$version"; then
        python3 -m venv "$dir"
        "$dir/bin/pip" install --quiet "$package==$version"
    fi
}
