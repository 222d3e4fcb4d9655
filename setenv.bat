@echo off
rem Select the Prefect profile of pipeline-test (creating it when missing), point it at the local server
rem started with `prefect server start`, and set PIPELINE_TEST_HOME to this folder (prefect.yaml's pull
rem step uses it), and PYTHONUTF8=1. Run it in every new cmd terminal, after activating .venv:
rem
rem     .venv\Scripts\activate
rem     setenv.bat
rem
rem In PowerShell use setenv.ps1 instead (a .bat runs in a child cmd: PIPELINE_TEST_HOME would not stay).
rem Overrides (set them first, e.g. `set PIPELINE_TEST_PORT=4300`, no quotes around the value):
rem     PIPELINE_TEST_PORT      another port for the local server (default 4200; also the port that
rem                             `prefect server start` listens on in this profile)
rem For the local server the profile also turns its telemetry off (it would report failures to send every ten
rem minutes on a machine without internet) and keeps the resource locks' leases on disk (a restarted server
rem still knows them), and lets a writer wait 60 s for the SQLite database. Either way Prefect's client
rem retries a busy API (429, 503, a dropped connection) 7 times, with wide jitter (see flows/run/prefect_client.py).
rem     PIPELINE_TEST_API_URL   another server altogether (e.g. your team's), instead of the local one
rem     PIPELINE_TEST_PROFILE   another profile name (default pipeline-test)
setlocal
set "PT_PROFILE=pipeline-test"
if defined PIPELINE_TEST_PROFILE set "PT_PROFILE=%PIPELINE_TEST_PROFILE%"
set "PT_PORT=4200"
if defined PIPELINE_TEST_PORT set "PT_PORT=%PIPELINE_TEST_PORT%"
set "PT_API_URL=http://127.0.0.1:%PT_PORT%/api"
if defined PIPELINE_TEST_API_URL set "PT_API_URL=%PIPELINE_TEST_API_URL%"
rem this script's folder, without its trailing backslash
set "PT_HOME=%~dp0"
set "PT_HOME=%PT_HOME:~0,-1%"

where prefect >nul 2>&1
if errorlevel 1 (
    echo setenv.bat: prefect not found: activate the virtual environment first ^(.venv\Scripts\activate^)
    endlocal
    exit /b 1
)
rem creates the profile when it is missing (and says so, quietly, when it exists)
prefect profile create %PT_PROFILE% >nul 2>&1
rem set "NAME=value" keeps the quotes out of the value; here the URL goes to Prefect with no quotes at
rem all: cmd passes quotes on literally, and PREFECT_API_URL='http://...' cannot be connected to
if defined PIPELINE_TEST_API_URL (
    prefect -p %PT_PROFILE% config set PREFECT_API_URL=%PT_API_URL% PREFECT_CLIENT_MAX_RETRIES=7 PREFECT_CLIENT_RETRY_JITTER_FACTOR=0.5 >nul
) else (
    prefect -p %PT_PROFILE% config set PREFECT_API_URL=%PT_API_URL% PREFECT_SERVER_API_PORT=%PT_PORT% PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem PREFECT_SERVER_DATABASE_TIMEOUT=60 PREFECT_CLIENT_MAX_RETRIES=7 PREFECT_CLIENT_RETRY_JITTER_FACTOR=0.5 >nul
)
if errorlevel 1 (
    echo setenv.bat: could not configure the profile %PT_PROFILE%
    endlocal
    exit /b 1
)
rem `profile use` also checks the server, which need not be running yet: its verdict is not shown
prefect profile use %PT_PROFILE% >nul 2>&1
prefect config view
rem keep PIPELINE_TEST_HOME after endlocal (the line is expanded before endlocal runs)
endlocal & set "PIPELINE_TEST_HOME=%PT_HOME%"
rem Python writes UTF-8 also when its output is redirected (cp1252 has no characters such as the checks' marks)
set "PYTHONUTF8=1"
rem in quotes: a folder name may hold & (cmd would run what follows it as a command)
echo PIPELINE_TEST_HOME="%PIPELINE_TEST_HOME%"
