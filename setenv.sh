#!/bin/sh
# Select the Prefect profile of pipeline-test (creating it when missing), point it at the local server started
# with `prefect server start`, and set PIPELINE_TEST_HOME to this folder (prefect.yaml's pull step uses it) and
# PYTHONUTF8=1.
# Source it in every new terminal, after activating .venv, from the project folder:
#
#     . .venv/bin/activate
#     . ./setenv.sh
#
# Run as `sh setenv.sh` it sets up the profile the same way, but cannot export PIPELINE_TEST_HOME to your shell.
# Overrides (environment variables):
#     PIPELINE_TEST_PORT=4300        another port for the local server (default 4200; also the port that
#                                    `prefect server start` listens on in this profile)
#     PIPELINE_TEST_API_URL=URL      another server altogether (e.g. your team's), instead of the local one
#     PIPELINE_TEST_PROFILE=NAME     another profile name (default pipeline-test)

_pipeline_test_setenv() {
    if [ -n "${BASH_SOURCE:-}" ]; then
        _pt_script=${BASH_SOURCE}
    elif [ -n "${ZSH_VERSION:-}" ]; then
        eval '_pt_script=${(%):-%x}'
    else
        _pt_script=$0
    fi
    case $_pt_script in
        setenv.sh | */setenv.sh) _pt_home=$(cd "$(dirname "$_pt_script")" && pwd -P) ;;
        *) _pt_home=$(pwd -P) ;;  # sourced by a shell that does not tell the script's path: the current folder
    esac
    _pt_profile=${PIPELINE_TEST_PROFILE:-pipeline-test}
    _pt_port=${PIPELINE_TEST_PORT:-4200}
    _pt_api_url=${PIPELINE_TEST_API_URL:-http://127.0.0.1:${_pt_port}/api}

    if ! command -v prefect >/dev/null 2>&1; then
        echo "setenv.sh: prefect not found: activate the virtual environment first (. .venv/bin/activate)" >&2
        return 1
    fi
    # creates the profile when it is missing (and says so, quietly, when it exists)
    prefect profile create "$_pt_profile" >/dev/null 2>&1
    if [ -z "${PIPELINE_TEST_API_URL:-}" ]; then
        # the local server: its URL, the port `prefect server start` listens on, no telemetry (offline it logs
        # failures to send every ten minutes), and the resource locks' leases kept on disk (a restarted server
        # still knows them), and a writer waits 60 s for the SQLite database; either way Prefect's client retries
        # a busy API (429, 503, a dropped connection) 7 times with wide jitter (see flows/run/prefect_client.py)
        prefect -p "$_pt_profile" config set "PREFECT_API_URL=${_pt_api_url}" \
            "PREFECT_SERVER_API_PORT=${_pt_port}" "PREFECT_SERVER_ANALYTICS_ENABLED=false" \
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem" \
            "PREFECT_SERVER_DATABASE_TIMEOUT=60" "PREFECT_CLIENT_MAX_RETRIES=7" "PREFECT_CLIENT_RETRY_JITTER_FACTOR=0.5" >/dev/null || return 1
    else
        prefect -p "$_pt_profile" config set "PREFECT_API_URL=${_pt_api_url}" \
            "PREFECT_CLIENT_MAX_RETRIES=7" "PREFECT_CLIENT_RETRY_JITTER_FACTOR=0.5" >/dev/null || return 1
    fi
    # `profile use` also checks the server, which need not be running yet: its verdict is not shown
    prefect profile use "$_pt_profile" >/dev/null 2>&1
    PIPELINE_TEST_HOME=$_pt_home
    export PIPELINE_TEST_HOME
    # as setenv.bat and setenv.ps1 do: Python writes UTF-8 also when its output is redirected
    PYTHONUTF8=1
    export PYTHONUTF8
    prefect config view
    echo "PIPELINE_TEST_HOME=${PIPELINE_TEST_HOME}"
}

_pipeline_test_setenv
_pt_rc=$?
unset -f _pipeline_test_setenv 2>/dev/null
unset _pt_script _pt_home _pt_profile _pt_port _pt_api_url
eval "unset _pt_rc; (exit $_pt_rc)"  # the status of the set-up, without leaving a variable behind
