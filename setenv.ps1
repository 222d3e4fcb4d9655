# Select the Prefect profile of pipeline-test (creating it when missing), point it at the local server
# started with `prefect server start`, and set PIPELINE_TEST_HOME to this folder (prefect.yaml's pull step
# uses it), and PYTHONUTF8=1. Run it in every new PowerShell terminal, after activating .venv:
#
#     .\.venv\Scripts\Activate.ps1
#     .\setenv.ps1
#
# If PowerShell refuses to run scripts, allow local ones once: Set-ExecutionPolicy -Scope CurrentUser RemoteSigned
# Overrides (set them first, e.g. $env:PIPELINE_TEST_PORT = '4300'):
#     PIPELINE_TEST_PORT      another port for the local server (default 4200; also the port that
#                             `prefect server start` listens on in this profile)
#     PIPELINE_TEST_API_URL   another server altogether (e.g. your team's), instead of the local one
#     PIPELINE_TEST_PROFILE   another profile name (default pipeline-test)

$PtProfile = if ($env:PIPELINE_TEST_PROFILE) { $env:PIPELINE_TEST_PROFILE } else { 'pipeline-test' }
$PtPort = if ($env:PIPELINE_TEST_PORT) { $env:PIPELINE_TEST_PORT } else { '4200' }
$PtApiUrl = if ($env:PIPELINE_TEST_API_URL) { $env:PIPELINE_TEST_API_URL } else { "http://127.0.0.1:${PtPort}/api" }

if (-not (Get-Command prefect -ErrorAction SilentlyContinue)) {
    Write-Host 'setenv.ps1: prefect not found: activate the virtual environment first (.\.venv\Scripts\Activate.ps1)'
    return
}
# creates the profile when it is missing (and says so, quietly, when it exists)
prefect profile create $PtProfile *> $null
# PowerShell passes "PREFECT_API_URL=$PtApiUrl" to prefect as PREFECT_API_URL=http://... (no quotes)
if ($env:PIPELINE_TEST_API_URL) {
    prefect -p $PtProfile config set "PREFECT_API_URL=$PtApiUrl" PREFECT_CLIENT_MAX_RETRIES=7 PREFECT_CLIENT_RETRY_JITTER_FACTOR=0.5 | Out-Null
} else {
    # the local server: its port, no telemetry (offline it logs failures to send), the locks' leases on disk,
    # a writer waits 60 s for the SQLite database; either way the client retries a busy API (flows/run/prefect_client.py)
    prefect -p $PtProfile config set "PREFECT_API_URL=$PtApiUrl" "PREFECT_SERVER_API_PORT=$PtPort" `
        "PREFECT_SERVER_ANALYTICS_ENABLED=false" "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem" PREFECT_SERVER_DATABASE_TIMEOUT=60 PREFECT_CLIENT_MAX_RETRIES=7 PREFECT_CLIENT_RETRY_JITTER_FACTOR=0.5 | Out-Null
}
if ($LASTEXITCODE -ne 0) {
    Write-Host "setenv.ps1: could not configure the profile $PtProfile"
    return
}
# `profile use` also checks the server, which need not be running yet: its verdict is not shown
prefect profile use $PtProfile *> $null
$env:PIPELINE_TEST_HOME = $PSScriptRoot
# Python writes UTF-8 also when its output is redirected (cp1252 has no characters such as the checks' marks)
$env:PYTHONUTF8 = '1'
prefect config view
Write-Host "PIPELINE_TEST_HOME=$env:PIPELINE_TEST_HOME"
